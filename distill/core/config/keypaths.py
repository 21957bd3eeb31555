"""Config key paths for error messages: every valid path, the nearest one to a misspelt
key, and where a value came from (TOML file, environment variable, command line).

Stdlib + pydantic only (imported by distill.core.config, which must not import torch).
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

ENV_PREFIX = "DISTILL_"
ENV_DELIMITER = "__"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models of a field's annotation: Model, Optional[Model], or each member of a tagged union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):  # Optional[Model], Model | None, Annotated[Model, Tag(...)], unions
        out.extend(m for m in _models_in(arg) if m not in out)
    return out


@lru_cache(maxsize=8)
def key_paths(model: type[BaseModel], prefix: str = "") -> tuple[str, ...]:
    """Every leaf key path of a config model, e.g. "trainer.optim.lr" (tables are not listed; a union's
    members' keys are all listed under its path)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        subs = _models_in(field.annotation)
        if not subs:
            out.append(path)
        for sub in subs:
            out.extend(p for p in key_paths(sub, path + ".") if p not in out)
    return tuple(out)


def _tagged_members(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """(tag, model) for each member of a tagged union annotation: Annotated[Model, Tag(tag)], or a model
    whose `type` is a Literal (a union with Field(discriminator="type"))."""
    out: list[tuple[str, type[BaseModel]]] = []
    for arg in typing.get_args(annotation):
        type_field = getattr(arg, "model_fields", {}).get("type") if isinstance(arg, type) else None
        if type_field is not None and typing.get_origin(type_field.annotation) is typing.Literal:
            out.append((typing.get_args(type_field.annotation)[0], arg))
            continue
        if typing.get_origin(arg) is typing.Annotated:
            model, *meta = typing.get_args(arg)
            tags = [m.tag for m in meta if type(m).__name__ == "Tag"]
            if tags and isinstance(model, type) and issubclass(model, BaseModel):
                out.append((tags[0], model))
                continue
        out.extend(_tagged_members(arg))
    return out


def union_tags_with_key(model: type[BaseModel], union: typing.Sequence[str], rest: str) -> list[str]:
    """The tags of the union at key path `union` (e.g. orchestrator.source) whose model has key `rest`
    (e.g. "size"): where a key misplaced under the wrong `type` belongs."""
    annotation: Any = model
    for part in union:
        subs = _models_in(annotation)
        field = next((m.model_fields[part] for m in subs if part in m.model_fields), None)
        if field is None:
            return []
        annotation = field.annotation
    return [tag for tag, m in _tagged_members(annotation) if is_key_or_table(rest, key_paths(m))]


def is_key_or_table(key: str, paths: typing.Iterable[str]) -> bool:
    """Whether `key` is one of these key paths or a table above some of them (orchestrator.source.columns)."""
    return any(p == key or p.startswith(key + ".") for p in paths)


# What other trainers (transformers' TrainingArguments, TRL, torchtune) call a key, by its last part:
# a closer spelling would be wrong (batch_size is not trainer.loss.chunk_size).
SYNONYMS = {
    "learning_rate": "trainer.optim.lr",
    "batch_size": "trainer.samples_per_step",
    "train_batch_size": "trainer.samples_per_step",
    "per_device_train_batch_size": "trainer.samples_per_step",
    "global_batch_size": "trainer.samples_per_step",
    "epochs": "trainer.max_steps",
    "num_epochs": "trainer.max_steps",
    "num_train_epochs": "trainer.max_steps",
    "max_seq_length": "trainer.seq_len",
    "max_length": "trainer.seq_len",
    "seq_length": "trainer.seq_len",
    "max_seq_len": "trainer.seq_len",
    "model_name_or_path": "student.path",
    "gradient_clipping": "trainer.optim.max_grad_norm",
    "lr_scheduler_type": "trainer.optim.schedule",
    "warmup": "trainer.optim.warmup_steps",
}


def nearest_key(key: str, paths: typing.Iterable[str]) -> str | None:
    """The valid key path a misspelt one most likely meant: another trainer's name for it (SYNONYMS), one
    with the same last part (trainer.lr -> trainer.optim.lr), else the closest spelling of the whole path."""
    paths = list(paths)
    last = key.rsplit(".", 1)[-1]
    if SYNONYMS.get(last) in paths:
        return SYNONYMS[last]

    def ratio(p: str) -> float:
        return difflib.SequenceMatcher(None, key, p).ratio()

    same_last = [p for p in paths if p.rsplit(".", 1)[-1] == last]
    if same_last:
        return max(same_last, key=ratio)
    close = difflib.get_close_matches(key, paths, n=1, cutoff=0.6)
    if close:
        return close[0]
    # a misspelt last part under the right table: trainer.optim.learning_rat -> trainer.optim.lr is too far,
    # but trainer.max_step -> trainer.max_steps is found above; try the last part alone among siblings' last parts
    lasts = {p.rsplit(".", 1)[-1]: p for p in paths}
    close = difflib.get_close_matches(last, list(lasts), n=1, cutoff=0.75)
    return lasts[close[0]] if close else None


def env_var_for(parts: typing.Sequence[str], environ: typing.Mapping[str, str] | None = None) -> str | None:
    """The DISTILL_... environment variable that set this key path (or one of its tables), if any."""
    environ = os.environ if environ is None else environ
    names = {k.upper(): k for k in environ if k.upper().startswith(ENV_PREFIX)}
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + ENV_DELIMITER.join(str(p) for p in parts[:n]).upper()
        if name in names:
            return names[name]
    return None


def has_path(data: Any, parts: typing.Sequence[str]) -> bool:
    """Whether nested dict `data` holds a value at this key path (or at one of its tables)."""
    node = data
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def unparsable_env_vars(message: str, environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """The DISTILL_... variables behind a pydantic-settings "error parsing value for field "x""
    error: those under that field whose value looks like JSON but does not parse (else all of them)."""
    import json
    import re

    environ = os.environ if environ is None else environ
    m = re.search(r'for field "([^"]+)"', message)
    prefix = ENV_PREFIX + (m.group(1).upper() if m else "")
    under = sorted(k for k in environ if k.upper().startswith(prefix))
    bad = []
    for k in under:
        v = environ[k].strip()
        if v[:1] in "[{":
            try:
                json.loads(v)
            except ValueError:
                bad.append(k)
    return bad or under


def stray_env_vars(sections: typing.Iterable[str], environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """DISTILL_<SECTION>__... variables whose section is not one of `sections` (pydantic-settings would
    ignore them: a misspelt section, DISTILL_TRAINR__MAX_STEPS, must not be silently without effect),
    each with the section it most likely meant."""
    environ = os.environ if environ is None else environ
    known = [s.upper() for s in sections]
    out = []
    for k in sorted(environ):
        rest = k.upper()[len(ENV_PREFIX) :] if k.upper().startswith(ENV_PREFIX) else None
        if rest is not None and ENV_DELIMITER not in rest and rest not in known:
            # a misspelt top-level key (DISTILL_OUTPUTDIR); other DISTILL_ variables (DISTILL_VERBOSE) pass
            near = difflib.get_close_matches(rest, known, n=1, cutoff=0.8)
            if near:
                out.append(f"{k} (did you mean DISTILL_{near[0]}?)")
            continue
        if rest is None or rest.split(ENV_DELIMITER, 1)[0] in known:
            continue
        near = difflib.get_close_matches(rest.split(ENV_DELIMITER, 1)[0], known, n=1)
        out.append(k + (f" (did you mean DISTILL_{near[0]}__...?)" if near else ""))
    return out


def drop_other_kinds_keys(
    model: type[BaseModel], data: dict, over: dict, environ: typing.Mapping[str, str] | None = None
) -> None:
    """Where the command line (`over`) or a DISTILL_ variable sets the type of a table keyed on type
    ([orchestrator.source], [scorer], [trainer.loss]) to another kind than the file's, the file's keys of
    that table which the new kind does not take are dropped from `data` (they were written for the file's
    kind: `--orchestrator.source.type table` over a reasoning_gym table must not fail on its size)."""
    _drop_in(model, data, over, [], os.environ if environ is None else environ)


def _drop_in(annotation: Any, data: Any, over: dict, parts: list[str], environ: typing.Mapping[str, str]) -> None:
    if not isinstance(data, dict):
        return
    members = dict(_tagged_members(annotation))
    if members and isinstance(data.get("type"), str):
        new = _set_elsewhere(over, parts + ["type"], environ)
        if isinstance(new, str) and new != data["type"] and new in members:
            for key in [k for k in data if k not in members[new].model_fields]:
                del data[key]
        return
    for m in _models_in(annotation):
        for name, field in m.model_fields.items():
            if name in data:
                _drop_in(field.annotation, data[name], over, parts + [name], environ)


def _set_elsewhere(over: dict, parts: list[str], environ: typing.Mapping[str, str]) -> Any:
    """The value the command line, else an environment variable, gives key path `parts` (None: neither)."""
    node: Any = over
    for p in parts:
        node = node.get(p) if isinstance(node, dict) else None
    if node is not None:
        return node
    value = _env_value(parts, environ)
    if isinstance(value, str):
        return value.strip().strip('"')
    for i in range(len(parts) - 1, 0, -1):  # a table above it set whole, as JSON, in one variable
        table = _env_value(parts[:i], environ)
        try:
            node = json.loads(table) if isinstance(table, str) else None
        except ValueError:  # not JSON: the settings loader says so
            continue
        for p in parts[i:]:
            node = node.get(p) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _env_value(parts: list[str], environ: typing.Mapping[str, str]) -> str | None:
    name = (ENV_PREFIX + ENV_DELIMITER.join(parts)).upper()
    return next((v for k, v in environ.items() if k.upper() == name), None)
