"""Input records -> Conversations: each file read (JSONL lines, or a file format's rows), column
names mapped, the format detected (or as configured) and the record parsed; a BadRecord where not."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from distill.core.config.schema import REPLAY_COLUMN_NAMES
from distill.core.conversation import Conversation
from orchestrator.lines import MAX_LINE_BYTES, json_type
from orchestrator.replay.formats import (
    FORMATS,
    ParseContext,
    detect_format,
    file_reader,
    parse,
)
from orchestrator.replay.formats.openai_batch import BatchInputIndex
from orchestrator.replay.reading import Line, _excerpt, iter_jsonl
from orchestrator.replay.records import BadRecord, RecordError

# Our names for input fields; orchestrator.replay.columns maps them to other column names.
COLUMN_NAMES = REPLAY_COLUMN_NAMES


def _apply_columns(obj: Any, columns: dict[str, str]) -> Any:
    if not columns or not isinstance(obj, dict):
        return obj
    obj = dict(obj)
    for ours, theirs in columns.items():
        if theirs != ours and theirs in obj:
            obj[ours] = obj.pop(theirs)
    return obj


def iter_conversations(
    paths: list[str],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    batch: BatchInputIndex | None = None,
    on_bytes: Callable[[int], None] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Conversation | BadRecord]:
    """Stream every input record as Conversation(s), or a BadRecord where one cannot be parsed.
    Every non-blank line (dataset row) gives at least one of them: nothing is dropped unseen."""
    columns = columns or {}
    ctx = ParseContext(batch)
    for path in paths:
        read = file_reader(path, fmt)
        lines = read(path) if read is not None else iter_jsonl(path, max_line_bytes)
        where = "row" if read is not None else "line"
        for ln in lines:
            if on_bytes and ln.nbytes:
                on_bytes(ln.nbytes)
            if ln.bad is not None:
                yield ln.bad
            elif not ln.empty:
                yield from _parse_record(ln, path, where, fmt, columns, ctx)


def _parse_record(
    ln: Line, path: str, where: str, fmt: str, columns: dict[str, str], ctx: ParseContext
) -> list[Conversation | BadRecord]:
    """One parsed line (row) -> its Conversation(s), or one BadRecord naming the field and reason."""
    obj = _apply_columns(ln.obj, columns)
    try:
        kind = detect_format(obj) if fmt == "auto" or FORMATS[fmt].parse is None else fmt
        if not isinstance(obj, dict):
            raise RecordError(None, f"expected a JSON object per {where}, got {json_type(obj)}", reason="not_an_object")
        return list(parse(kind, obj, path, ln.line, ctx))
    except RecursionError:  # walking a record nested almost as deep as json.loads allows
        e = RecordError(None, "nested too deeply to process", reason="too_deep")
    except RecordError as err:
        e = err
    field = e.field
    if field and field.split(".")[0].split("[")[0] in columns:
        field += f" (column {columns[field.split('.')[0].split('[')[0]]!r})"
    problem = e.problem + (f". Fix: {e.fix}" if e.fix else "")
    try:
        excerpt = _excerpt(json.dumps(ln.obj, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace"))
    except (RecursionError, ValueError):
        excerpt = ""
    return [BadRecord(path, ln.line, field, problem, False, excerpt, e.reason)]
