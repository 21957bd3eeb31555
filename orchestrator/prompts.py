"""Prompt sources: reasoning-gym datasets and JSONL files (dataset tables: orchestrator/prompt_tables.py).

Every prompt is a dict:
    {"prompt_id": str, "messages": [...], "tools": list | None,
     "answer": str | None, "metadata": {...}}
`prompt_id` is stable across runs (resume relies on it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from distill.core.jsonl import (
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    TORN,
    Line,
    is_gzip,
    iter_lines,
    json_array_hint,
    no_newline,
    one_line_json_array,
    shape_hint,
    starts_json_array,
)
from orchestrator.legacy_functions import LegacyError, chat_tool, modern_tools
from orchestrator.lines import content_problem, depth_exceeds, json_type, weight_ok

#: Deepest nesting a prompt line may have (tool schemas need a few levels; nothing needs 100).
MAX_PROMPT_DEPTH = 100


class PromptSourceError(ValueError):
    """A prompt source that cannot be read. `where` and `fix` are set on the bad lines whose fix is the
    same whatever the line says (_JSON_FIX), so that a list of them says it once (_shared_fixes)."""

    def __init__(self, message: str, where: str = "", fix: str = ""):
        super().__init__(message)
        self.where, self.fix = where, fix


#: The fix of a line that is not JSON: the same for every such line of a file.
_JSON_FIX = "one JSON object per line, in UTF-8"


def load_prompts(source_cfg) -> Iterator[dict[str, Any]]:
    """Prompts from `orchestrator.source` (type "reasoning_gym", "jsonl", "table" or "hf_dataset")."""
    if source_cfg.type in ("table", "hf_dataset"):
        from orchestrator.prompt_tables import table_prompts  # (it builds on this module)

        return table_prompts(source_cfg)
    if source_cfg.type == "reasoning_gym":
        return _reasoning_gym(source_cfg)
    if source_cfg.type == "jsonl":
        if not source_cfg.path:
            raise PromptSourceError(
                'orchestrator.source.path: source type "jsonl" reads a file. '
                'Fix: set orchestrator.source.path = "FILE.jsonl"'
            )
        return _jsonl(Path(source_cfg.path), source_cfg.system_prompt)
    raise PromptSourceError(
        f"orchestrator.source.type: {source_cfg.type!r} is not a prompt source for teacher requests "
        "(a replay source is read by `distill replay`, not sent to the teacher). "
        'Fix: use type = "reasoning_gym", "jsonl", "table" or "hf_dataset"'
    )


#: The last good count of a prompt file: (the source's settings, the file's identity) -> count. A run
#: counts its prompts twice at start-up (distill/run.py before the run dir is written, then the
#: scheduler); an unchanged file is read once. As git's racy-file rule: a file changed less than
#: _SETTLED_NS before it was counted is not remembered (a rewrite of the same size within the clock's
#: granularity would keep its stat).
_COUNTED: dict[tuple, int] = {}
_SETTLED_NS = 2_000_000_000


def _file_identity(source_cfg) -> tuple | None:
    """The source's settings and its file's device, inode, size and mtime; None for a source that is not one
    local file (a dataset folder or name may change without its stat changing)."""
    path, dump = getattr(source_cfg, "path", None), getattr(source_cfg, "model_dump_json", None)
    if source_cfg.type not in ("jsonl", "table") or not path or dump is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return (dump(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def count_prompts(source_cfg) -> int | None:
    """How many prompts the source holds, when cheap to know.

    A JSONL file (a dataset source: its selected rows) is read and validated in full here (every line
    parsed and checked, ids unique), so bad lines are one PromptSourceError before the first teacher
    request, not after hours of them: it counts every bad line and lists the first LISTED_BAD_LINES.
    A file counted before and unchanged since is not read again (_COUNTED)."""
    if source_cfg.type == "reasoning_gym":
        return source_cfg.size
    key = _file_identity(source_cfg)
    if key is not None and key in _COUNTED:
        return _COUNTED[key]
    started = time.time_ns()
    n = _count(source_cfg)
    if key is not None and n is not None and key[-1] < started - _SETTLED_NS:
        _COUNTED.clear()
        _COUNTED[key] = n
    return n


def _count(source_cfg) -> int | None:
    errors: list[str] = []
    if source_cfg.type in ("table", "hf_dataset"):
        from orchestrator.prompt_tables import table_prompts

        n = sum(1 for _ in table_prompts(source_cfg, errors))
        _raise_bad(errors, f"orchestrator.source: {len(errors)} bad row(s) ({n} good)")
        if not n:
            raise PromptSourceError(
                "orchestrator.source: the dataset holds no prompt (no row, or none selected); no request was "
                "sent. Fix: check the dataset's path, split and row selection"
            )
        return n
    if source_cfg.type == "jsonl" and source_cfg.path:
        n = sum(1 for _ in _jsonl(Path(source_cfg.path), source_cfg.system_prompt, errors))
        _raise_bad(errors, f"orchestrator.source.path: {len(errors)} bad line(s) in {source_cfg.path} ({n} good)")
        if not n:
            raise PromptSourceError(f"orchestrator.source.path: {no_prompt(source_cfg.path)}")
        return n
    return None


def no_prompt(path: str) -> str:
    """What is wrong with a prompt file that holds no prompt (the preflight checks a small one first)."""
    return (
        f"{path} holds no prompt (the file is empty or has only blank lines); no request was sent. "
        'Fix: one {"messages": [...]} or {"prompt": "..."} object per line'
    )


def _raise_bad(errors: list, head: str) -> None:
    """PromptSourceError listing the first LISTED_BAD_LINES of `errors` (all counted), when there are any."""
    if errors:
        shown, fixes = _shared_fixes(errors[:LISTED_BAD_LINES])
        listed = "\n  ".join(shown)
        more = f"\n  ... and {len(errors) - LISTED_BAD_LINES} more" if len(errors) > LISTED_BAD_LINES else ""
        raise PromptSourceError(f"{head}; no request was sent. Fix them first:\n  {listed}{more}{fixes}")


def _shared_fixes(errors: list) -> tuple[list[str], str]:
    """The listed errors (strings, or PromptSourceErrors) as lines: a fix that two or more of them share
    (a PromptSourceError's `fix`: the same whatever the line holds) is taken off them and said once
    after them ("Fix for FILE:2, FILE:3: ..."), so that a file of one repeated mistake does not repeat it."""
    where: dict[str, list[str]] = {}
    for e in errors:
        if getattr(e, "fix", ""):
            where.setdefault(e.fix, []).append(e.where)
    shared = {fix for fix, places in where.items() if len(places) > 1}
    shown = [str(e).removesuffix(f". Fix: {e.fix}") if getattr(e, "fix", "") in shared else str(e) for e in errors]
    return shown, "".join(f"\n  Fix for {', '.join(where[fix])}: {fix}" for fix in where if fix in shared)


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        return [{"role": "system", "content": system_prompt}] + messages
    return messages


def _json_safe(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _reasoning_gym(cfg) -> Iterator[dict[str, Any]]:
    try:
        import reasoning_gym
    except ImportError:  # pragma: no cover - installed with distill
        raise PromptSourceError(
            "orchestrator.source: the reasoning_gym source needs the reasoning-gym "
            "package. Fix: pip install reasoning-gym"
        ) from None
    try:
        ds = reasoning_gym.create_dataset(cfg.dataset, size=cfg.size, seed=cfg.seed)
    except Exception as e:  # noqa: BLE001 - unknown names raise various errors
        raise PromptSourceError(
            f"orchestrator.source.dataset: reasoning-gym could not create {cfg.dataset!r} "
            f"({e}). Fix: use a registered dataset name such as 'gsm_symbolic'"
        ) from None
    for i in range(cfg.size):
        entry = ds[i]
        yield {
            "prompt_id": f"{cfg.dataset}-{cfg.seed}-{i}",
            "messages": _with_system([{"role": "user", "content": entry["question"]}], cfg.system_prompt),
            "tools": None,
            "answer": entry.get("answer"),
            "metadata": {"source": "reasoning_gym", "dataset": cfg.dataset, "index": i, "entry": _json_safe(entry)},
        }


#: How many bad lines of a prompt file the error lists (all are counted).
LISTED_BAD_LINES = 5


def _check_path(path: Path) -> None:
    fix = 'Fix: point it at a JSONL file with one {"messages": [...]} or {"prompt": "..."} object per line'
    if path.is_dir():
        raise PromptSourceError(f"orchestrator.source.path: {path} is a directory, not a file. {fix}")
    if not path.is_file():
        raise PromptSourceError(f"orchestrator.source.path: {path} does not exist. {fix}")


def _lines(path: Path) -> Iterator[Line]:
    """The lines of a prompt file, plain or gzip-compressed (told by its first bytes; replay reads .gz too).
    A prompt file is no log: a last line cut short (no newline, the start of a line that would
    parse) is named as such (partial_last_line) but is an error like any other bad line."""
    import gzip
    import zlib

    gz = is_gzip(path)
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            yield from iter_lines(f, MAX_LINE_BYTES, limit_key="orchestrator.prompts.MAX_LINE_BYTES", cut_only=True)
    except (OSError, EOFError, zlib.error) as e:
        if not gz:
            raise
        raise PromptSourceError(
            f"orchestrator.source.path: {path} is gzip-compressed but cannot be read to its end ({e}). "
            f"Fix: compress it again, or point at the plain file (gunzip -k {path})"
        ) from None


def _jsonl(path: Path, system_prompt: str | None, errors: list | None = None) -> Iterator[dict[str, Any]]:
    """The prompts of a JSONL file. A bad line raises PromptSourceError naming file:line, or, when
    `errors` is given, is appended to it and skipped (count_prompts reports them all at once)."""
    _check_path(path)
    seen: dict[str, int] = {}
    for ln in _lines(path):
        where = f"{path}:{ln.number}"
        if starts_json_array(ln) or one_line_json_array(ln, path):  # the whole file is wrong, not its first line
            raise PromptSourceError(
                f"orchestrator.source.path: {path} is one JSON array, not JSON Lines (one object per line). "
                f"Fix: {json_array_hint(path)}"
            )
        try:
            if ln.reason == LINE_TOO_LONG:
                raise PromptSourceError(f"{where}: {ln.problem}. Fix: split or shorten the prompt")
            if ln.blank:
                continue
            prompt = _prompt(ln, where, path, seen)
        except PromptSourceError as e:
            if errors is None:
                raise
            errors.append(e)
            continue
        yield dict(prompt, messages=_with_system(prompt["messages"], system_prompt))


def _prompt(ln: Line, where: str, path: Path, seen: dict[str, int]) -> dict[str, Any]:
    """One prompt line -> its prompt dict (system prompt not yet added), or PromptSourceError."""
    d, reason, problem, lineno = ln.value, ln.reason, ln.problem, ln.number
    if reason is not None:
        fix = "flatten the record" if reason == "too_deep" else _JSON_FIX
        if reason == TORN:
            problem = f"the last line is cut short ({TORN}: {len(ln.raw)} bytes, {no_newline(ln.raw)}, unfinished JSON)"
            fix = "complete that line or delete it (a copy or a download cut short?)"
        table = '; or read it as a table: orchestrator.source.type = "table" (docs/orchestrator.md, "Dataset sources")'
        fix = shape_hint(ln, path, '{"prompt": ...} (or {"messages": [...]})', table) or fix  # a CSV, pretty JSON
        raise PromptSourceError(f"{where}: {problem}. Fix: {fix}", where, fix if fix == _JSON_FIX else "")
    if not isinstance(d, dict):
        hint = f" (if the file is one JSON array of prompts: {json_array_hint(path)})" if isinstance(d, list) else ""
        raise PromptSourceError(f"{where}: expected a JSON object, got {json_type(d)}{hint}")
    try:
        json.dumps(d, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise PromptSourceError(
            f"{where}: the text holds a lone surrogate ({e.object[e.start]!r}: half of a "
            "UTF-16 pair, e.g. a cut emoji escape), which is not valid Unicode and cannot "
            "be sent to the teacher. Fix: repair or drop that text"
        ) from None
    except (RecursionError, ValueError):
        raise PromptSourceError(f"{where}: nested too deeply to send. Fix: flatten the record") from None
    if depth_exceeds(d, MAX_PROMPT_DEPTH):
        raise PromptSourceError(f"{where}: nested more than {MAX_PROMPT_DEPTH} levels deep. Fix: flatten the record")
    messages = _prompt_messages(d, where)
    try:
        tools = modern_tools(d.get("functions"), d.get("tools"))  # OpenAI's legacy functions list: tools
    except LegacyError as e:
        raise PromptSourceError(f"{where}: {e}") from None
    tools = prompt_tools(tools, f"{where}: field 'tools'")
    pid = str(d["id"]) if d.get("id") is not None else f"{Path(path.name.removesuffix('.gz')).stem}-{lineno}"
    if "/" in pid:
        raise PromptSourceError(
            f"{where}: id {pid!r} contains '/', which separates sample-id parts. Fix: use another character"
        )
    if pid in seen:
        raise PromptSourceError(f"{where}: id {pid!r} was already used on line {seen[pid]}. Fix: ids must be unique")
    seen[pid] = lineno
    meta = {k: v for k, v in d.items() if k not in ("messages", "prompt", "tools", "functions", "id", "answer")}
    return {
        "prompt_id": pid,
        "messages": messages,
        "tools": tools,
        "answer": d.get("answer"),
        "metadata": {"source": "jsonl", "file": str(path), "line": lineno, **meta},
    }


def prompt_tools(v: Any, what: str) -> list[dict] | None:
    """The tools offered with a prompt: a list of tool definitions or its JSON text (function-calling
    datasets store them so); none for null, "" or []; bare function definitions (OpenAI's legacy
    `functions`) wrapped as tools. `what` names the field for the PromptSourceError."""
    if isinstance(v, str):
        if not v.strip():
            return None
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise PromptSourceError(
                f"{what} is text that is not JSON ({e.msg}); a list of tool definitions was expected"
            ) from None
    if v is None or v == []:
        return None
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise PromptSourceError(
            f'{what} is not a list of tool definitions (objects, {{"type": "function", "function": ...}}). '
            "Fix: correct it, or drop it"
        )
    return [chat_tool(t) for t in v]


def _prompt_messages(d: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "prompt" in d and "messages" not in d:
        if not isinstance(d["prompt"], str) or not d["prompt"]:
            raise PromptSourceError(f"{where}: field 'prompt' must be a non-empty string")
        return [{"role": "user", "content": d["prompt"]}]
    if "messages" not in d:
        raise PromptSourceError(f"{where}: needs a 'messages' list or a 'prompt' string (found keys {sorted(d)[:10]})")
    messages = d["messages"]
    if not isinstance(messages, list) or not messages:
        raise PromptSourceError(
            f'{where}: field \'messages\' must be a non-empty list of {{"role", "content"}} objects'
        )
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise PromptSourceError(f"{where}: messages[{k}] must be an object with a 'role'")
        if not isinstance(m["role"], str) or not m["role"]:
            raise PromptSourceError(f"{where}: messages[{k}].role must be a role string, got {json_type(m['role'])}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise PromptSourceError(
                f"{where}: messages[{k}].content must be a string or a list of content parts, got {json_type(content)}"
            )
        problem = content_problem(m, final=False)
        if problem:
            raise PromptSourceError(f"{where}: messages[{k}]: {problem}. Fix: give the message its text")
        w = m.get("weight")
        if not weight_ok(w):  # as reconstruction reads it, checked before paying
            raise PromptSourceError(
                f"{where}: messages[{k}].weight is {w!r}; it may be 0 (the turn is context, not trained) "
                "or 1 (trained, the default). Fix: use 0 or 1, or drop the key"
            )
    if messages[-1].get("role") == "assistant":
        raise PromptSourceError(
            f"{where}: the last message is an assistant turn; a prompt must end where the teacher "
            "answers. Fix: drop the final assistant message (or use a replay source to train on it)"
        )
    return messages
