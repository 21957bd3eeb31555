"""Loading a run configuration: TOML file < environment (DISTILL_...) < command-line overrides;
validation errors as `ConfigError` (every problem with its key path and fix); `resolve()`, the one
place where derived values are filled in; the API key from its environment variable."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from ..redact import looks_like_secret, redact_text, remember_config, remember_secret
from .checks import ConfigProblems, Problem
from .keypaths import drop_other_kinds_keys
from .schema_run import _TOML_DATA, LOSS_CONFIGS, PLANNED_TAG, RunConfig
from .schema_prompts import SOURCE_TYPES, TABLE_TYPES
from .strict import BooleanNumber
from .table_messages import table_shape_message, unknown_key_message

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(Exception):
    """Every problem with a config, each naming its key path and what to do."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"invalid configuration ({source}), {len(problems)} problem(s):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--a.b.c VALUE` / `--a.b.c=VALUE` pairs to a nested dict.

    VALUE is read as a TOML value when it parses as one (1e-5, true, [1, 2],
    "quoted"), otherwise taken as a plain string.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise ConfigError(
                "command line",
                [
                    Problem(
                        arg,
                        "expected --key.path VALUE (the input files of `distill replay` go right after the "
                        "config path, before any --key.path VALUE)",
                    )
                ],
            )
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError("command line", [Problem(key, "has no value. Fix: --key.path VALUE")])
            raw = args[i + 1]
            i += 2
        key = key.replace("-", "_")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError("command line", [Problem(key, "conflicts with another override")])
        node[parts[-1]] = _parse_value(raw)
    return out


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".json", ".parquet", ".csv", ".gz", ".arrow"):
        raise ConfigError(
            str(path),
            [
                Problem(
                    "(file)",
                    f"{path} looks like a data file, not a TOML config: the config comes first. Fix: "
                    f"distill COMMAND CONFIG.toml ... (e.g. distill replay examples/replay.toml {path})",
                )
            ],
        )
    if p.is_dir() or not p.exists():  # a pipe (`<(envsubst < cfg.toml)`) or device is read as a file
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ConfigError(
            str(path),
            [Problem("(file)", f"{path} {what}. Fix: pass a TOML config path, e.g. examples/quickstart.toml")],
        )
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [Problem("(syntax)", _syntax_message(p, e))]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            str(path),
            [
                Problem(
                    "(file)",
                    f"is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}). Fix: save it as UTF-8",
                )
            ],
        ) from None


def _syntax_message(p: Path, e: Exception) -> str:
    """The TOML error with the text of its line; a bare word as a value gets the quoting fix."""
    import re

    at = re.search(r"at line (\d+), column \d+", str(e))
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    lineno = int(at.group(1)) if at else 0
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    text = redact_text(text)  # the line may hold a key (an unquoted api key, a broken headers table)
    msg = str(e) + (f": {text}" if text else "")
    key, eq, value = text.partition("=")
    if eq and value.strip() in ("True", "False", "TRUE", "FALSE"):
        return msg + f". Fix: TOML booleans are lowercase: {key.strip()} = {value.strip().lower()}"
    if eq and re.fullmatch(r"[A-Za-z_][\w.\-/:@]*", value.strip()):
        return msg + f'. Fix: a string value is quoted: {key.strip()} = "{value.strip()}"'
    return msg + ". Fix the TOML syntax at that line"


def _format_validation_error(err: ValidationError, cli: dict | None = None) -> tuple[list[Problem], set[str]]:
    """Problems (key path + message; never the input of a secret-looking field) and where each
    bad value came from: "file", "environment variable DISTILL_..." or "command line" (cli: the parsed
    overrides). A cross-check's problem counts as the file's."""
    from distill.core.redact import is_secret_key, looks_like_secret, redact  # stdlib only

    from .keypaths import is_key_or_table, key_paths, union_tags_with_key

    problems: list[Problem] = []
    origins: set[str] = set()
    for details in err.errors():
        e: dict[str, Any] = dict(details)
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ValueError) and ctx_err.args and isinstance(ctx_err.args[0], ConfigProblems):
            ctx_err = ctx_err.args[0]
        if isinstance(ctx_err, ConfigProblems):  # a cross-check's: blamed on where its key was set
            for p in ctx_err:
                origin, note = _where(p.key.split("."), cli)
                origins.add(origin)
                problems.append(Problem(p.key, p.message + note))
            continue
        raw = [str(x) for x in e["loc"]]
        if isinstance(ctx_err, BooleanNumber):  # raised by the section: the key is the field's
            raw.append(ctx_err.field)
            e = {k: v for k, v in e.items() if k != "input"}  # the message says what it got
        parts = _without_union_tags(raw)
        key = ".".join(parts) or "(root)"
        origin, note = _where(parts, cli)
        n = _union_at(raw)
        if e["type"] == "extra_forbidden" and n and is_key_or_table(key, key_paths(RunConfig)):
            tags = [t for t in union_tags_with_key(RunConfig, raw[:n], ".".join(raw[n + 1 :])) if t != raw[n]]
            union, name = ".".join(raw[:n]), raw[n - 1]
            msg = (  # a key of another member of a union keyed on `type` (size on a table source)
                f"{key} is not a key of {name} type {raw[n]!r}; it is one of type "
                + ", ".join(repr(t) for t in tags)
                + f". Fix: remove it, or set {union}.type to one of those if that is the {name} you meant"
                if tags
                else f"{key} is not a key of {name} type {raw[n]!r}. Fix: remove it"
            )
        elif e["type"] == "extra_forbidden":
            msg = unknown_key_message(key, e.get("input"), key_paths(RunConfig))
        elif shape := table_shape_message(e, key, origin, key_paths(RunConfig), _kinds(parts)):  # [[student]]
            msg = shape
        else:
            hide = any(is_secret_key(p) or p in ("api_key_var", "headers") for p in parts) or looks_like_secret(
                str(e.get("input"))
            )
            msg = e["msg"].removeprefix("Value error, ")
            shown = redact(e.get("input"))  # a URL's password and query values masked
            if not hide and "input" in e and repr(shown) not in msg:
                msg += f" (got {shown!r})"
        origins.add(origin)
        problems.append(Problem(key, msg + note))
    return problems, origins


def _kinds(parts: list[str]) -> tuple[str, ...]:
    """The `type` values of the table at `parts` when it is a union keyed on type, else ()."""
    from .keypaths import union_tags_with_key

    try:
        return tuple(union_tags_with_key(RunConfig, parts, "type"))
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return ()


def _where(parts: list[str], cli: dict | None) -> tuple[str, str]:
    """Where the value at key path `parts` came from, and the note its problem gets."""
    from .keypaths import env_var_for, has_path

    if cli is not None and has_path(cli, parts):  # precedence: command line > environment > file
        return "command line", " [set on the command line]"
    if var := env_var_for(parts):
        return f"environment variable {var}", f" [set by environment variable {var}]"
    return "file", ""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Read TOML, apply env and command-line overrides, validate, resolve."""
    from pydantic_settings import SettingsError

    source = str(path) if path else "defaults"
    data = read_toml(path) if path else {}
    over = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    _refuse_stray_env_vars()
    drop_other_kinds_keys(RunConfig, data, over)  # a type set on the command line or in a variable: its keys
    # masked in every message from here on (mask_known), those of a config that does not validate too
    remember_config([data, over, {k: v for k, v in os.environ.items() if k.startswith("DISTILL_")}])
    token = _TOML_DATA.set(data)
    try:
        cfg = RunConfig(**over)
    except ValidationError as e:
        problems, origins = _format_validation_error(e, over)
        if "file" not in origins:  # name where the bad values came from, not a file that is fine
            source = " and ".join(sorted(origins))
        raise ConfigError(source, problems) from None
    except SettingsError as e:  # an env value pydantic-settings could not parse (e.g. bad JSON for a table)
        from .keypaths import unparsable_env_vars

        names = unparsable_env_vars(str(e)) or ["DISTILL_..."]
        raise ConfigError(f"environment variable {', '.join(names)}", [_env_json_problem(n) for n in names]) from None
    finally:
        _TOML_DATA.reset(token)
    _anchor_chat_template(cfg, path, data)
    cfg._config_dir = str(_config_folder(path)) if path else None
    cfg = resolve(cfg)
    remember_config(cfg.model_dump(mode="json"))  # masked wherever a server echoes them (redact.mask_known)
    return cfg


def _env_json_problem(var: str) -> Problem:
    """The problem of a DISTILL_ variable pydantic-settings could not parse: a table's variable given a
    plain value (DISTILL_STUDENT=builtin:x) is told to set the table's keys one at a time."""
    from .keypaths import ENV_DELIMITER, ENV_PREFIX, key_paths
    from .table_messages import table_shape_message

    value = os.environ.get(var, "").strip()
    parts = var[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
    key = ".".join(parts)
    if value[:1] not in "[{" and any(p.startswith(key + ".") for p in key_paths(RunConfig)):
        e = {"type": "model_type", "input": value}
        if msg := table_shape_message(e, key, f"environment variable {var}", key_paths(RunConfig), _kinds(parts)):
            return Problem(var, msg)
    return Problem(
        var, "is not valid JSON (lists and tables set from the environment are JSON). Fix: correct or unset it"
    )


def _refuse_stray_env_vars() -> None:
    from .keypaths import stray_env_vars

    stray = stray_env_vars(RunConfig.model_fields)
    if stray:
        raise ConfigError(
            "environment variable " + stray[0].split(" ")[0],
            [
                Problem(
                    v, "names no config section or key, so it would have no effect. Fix: correct the name, or unset it"
                )
                for v in stray
            ],
        )


def _config_folder(path: str | os.PathLike | None, resolved: bool = True) -> Path:
    """The folder relative paths in the config file are read from: the file's (`resolved`: its target's, for
    a link), or the working folder for a config read from a pipe (`distill run <(envsubst < cfg.toml)`:
    /dev/fd/N has no folder of its own)."""
    p = Path(path).expanduser() if path is not None else None
    if p is None or not p.is_file():
        return Path.cwd()
    return p.resolve().parent if resolved else p.parent


def _anchor_chat_template(cfg: RunConfig, path: str | os.PathLike | None, data: dict[str, Any]) -> None:
    """student.chat_template: a relative path is relative to the config file when the file set it (else to
    the working directory), made absolute so that the run dir's config.toml still finds the file."""
    ct = cfg.student.chat_template
    if not ct or Path(ct).expanduser().is_absolute():
        return
    from_file = path is not None and (data.get("student") or {}).get("chat_template") == ct
    base = _config_folder(path, resolved=False) if from_file else Path.cwd()  # a linked config: the link's
    cfg.student.chat_template = str((base / ct).resolve())


def resolve(cfg: RunConfig) -> RunConfig:
    """The one place where values derived from other values are filled in."""
    r = cfg.orchestrator.reconstruction
    if r.max_seq_len is None:
        r.max_seq_len = cfg.trainer.seq_len
    lt = cfg.orchestrator.local_teacher
    if lt.enabled:
        rm = cfg.orchestrator.rollout_model
        urls = [f"http://{lt.host}:{lt.port + i}/v1" for i in range(1, lt.replicas)]
        rm.extra_base_urls = rm.extra_base_urls + [u for u in urls if u not in rm.extra_base_urls]
    return cfg


def unset_key_fix(var: str) -> str:
    """What to say of a config key (`*.api_key_var`) naming the environment variable `var`, which is unset.
    A name that looks like a key (`sk_live_...` is a valid variable name) is not repeated: it may be one."""
    if looks_like_secret(var):
        return (
            "names an environment variable that is not set; the name is not shown, as it looks like an API key "
            "itself. Fix: export the key in a variable, e.g. export TEACHER_API_KEY=<the key>, and set this to "
            'that variable\'s name ("TEACHER_API_KEY"); the key is read from there and never stored'
        )
    return f"names the environment variable {var}, which is not set. Fix: export {var}=... (the key is read from there and never stored)"


def key_from_env(var: str, on_unset: Callable[[str], Exception]) -> str:
    """The API key in the environment variable `var`; raises on_unset(unset_key_fix(var)) when it is not set."""
    key = os.environ.get(var)
    if not key:
        raise on_unset(unset_key_fix(var))
    remember_secret(key)  # masked wherever a server echoes it (distill.core.redact.mask_known)
    bad = key_problem(key)
    if bad:
        shown = "an environment variable" if looks_like_secret(var) else f"the environment variable {var}"
        raise on_unset(f"names {shown} whose value {bad}. Fix: export it again with the key alone")
    return key


def key_var_problems(var: str | None, section: str) -> list[Problem]:
    """What key_from_env would refuse of the variable `var` that `{section}.api_key_var` names, as
    Problems (preflight: reported before anything is written)."""
    if not var:
        return []
    try:
        key_from_env(var, ValueError)
    except ValueError as e:
        return [Problem(f"{section}.api_key_var", str(e))]
    return []


def key_problem(key: str) -> str | None:
    """Why `key` cannot be sent in an HTTP header (a character outside printable ASCII: a smart quote or
    a line break pasted with it), without showing the key; None when it can."""
    for i, c in enumerate(key):
        if not (" " <= c <= "~"):
            what = "a line break or control character" if c.isascii() else f"U+{ord(c):04X}"
            return f"holds {what} at position {i + 1} of {len(key)}, which an HTTP header cannot carry"
    return None


def api_key(cfg: RunConfig) -> str:
    """The API key from the environment variable named in the config ("EMPTY" if none)."""
    var = cfg.orchestrator.rollout_model.api_key_var
    if not var:
        return "EMPTY"
    path = "orchestrator.rollout_model.api_key_var"
    return key_from_env(var, lambda fix: ConfigError("environment", [Problem(path, fix + ".")]))


def _union_tags() -> dict[tuple[str, ...], tuple[str, ...]]:
    """Each union keyed on `type` (its key path) and its tags: pydantic names the tag in an error's location."""
    from .schema_score import SCORER_CONFIGS

    return {
        ("trainer", "loss"): (*LOSS_CONFIGS, PLANNED_TAG),
        ("orchestrator", "source"): (*SOURCE_TYPES, *TABLE_TYPES),
        ("scorer",): tuple(SCORER_CONFIGS),
    }


def _union_at(parts: list[str]) -> int:
    """The length of the union's key path that `parts` has a tag after (0: none)."""
    for union, tags in _union_tags().items():
        n = len(union)
        if tuple(parts[:n]) == union and len(parts) > n and parts[n] in tags:
            return n
    return 0


def _without_union_tags(parts: list[str]) -> list[str]:
    """The key path of an error location without the tag pydantic puts after a union (scorer.echo.base_url)."""
    n = _union_at(parts)
    return parts[:n] + parts[n + 1 :] if n else parts
