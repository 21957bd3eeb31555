"""Reading user-supplied JSONL safely: one bounded line at a time, each parse failure a reason.

Replay inputs (orchestrator/replay.py) and prompt files (orchestrator/prompts.py) are files
a user hands us; nothing in them may crash the reader. This module is what both use:

- `read_lines(f, max_bytes)` streams a binary file line by line and never holds more than
  `max_bytes` of one line: a longer line is skipped to its newline in small chunks and
  reported as too long (`line_too_long`), so a 300 MB line costs no 300 MB of memory.
- `parse_line(raw)` is `json.loads` whose every failure is a (reason, message) pair instead
  of an exception: `invalid_utf8`, `invalid_json`, `too_deep` (nesting past the
  interpreter's recursion limit, a RecursionError in `json.loads`).
- `json_type(x)` names a parsed value as JSON does (`null`, `number`, `string`, ...), for
  "expected a JSON object, got null".
- `content_problem(message)`: whether a chat message lacks the content its role needs
  (shared by replay and prompt files, so both draw the line in the same place).
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator

#: Default longest line (bytes, newline included) of a replay input or prompt file. Longer lines
#: are bad records (`line_too_long`), read past without loading them
#: (replay: orchestrator.replay.max_line_bytes).
MAX_LINE_BYTES = 64 << 20
_SKIP_CHUNK = 1 << 20

#: Reason codes of records that cannot be read (replay lists them in replay_rejects.jsonl).
INVALID_UTF8, INVALID_JSON, TOO_DEEP, LINE_TOO_LONG = "invalid_utf8", "invalid_json", "too_deep", "line_too_long"


def read_lines(f: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, int, bool]]:
    """(line, its length in bytes, too_long) for each line of a binary file.

    A line longer than max_bytes comes back as its first max_bytes bytes with too_long
    set; the rest of it was read past in 1 MiB chunks (memory stays bounded)."""
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        if len(raw) <= max_bytes:
            yield raw, len(raw), False
            continue
        n, last = len(raw), raw
        while not last.endswith(b"\n"):
            last = f.readline(_SKIP_CHUNK)
            if not last:
                break
            n += len(last)
        yield raw[:max_bytes], n, True


def json_type(x: Any) -> str:
    """The JSON name of a parsed value's type."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(x), type(x).__name__)


def parse_line(raw: bytes) -> tuple[Any, str | None, str]:
    """(value, None, "") for a line that parses, else (None, reason, message)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, INVALID_UTF8, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    try:
        return json.loads(text), None, ""
    except json.JSONDecodeError as e:
        return None, INVALID_JSON, f"not valid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return None, TOO_DEEP, "JSON nested too deeply to read (arrays/objects inside each other past the " \
                               "recursion limit)"


def depth_exceeds(x: Any, limit: int) -> bool:
    """Whether lists/dicts nest more than `limit` levels deep (walked without recursion)."""
    stack = [(x, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > limit:
                return True
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def too_long_message(n: int, max_bytes: int, key: str) -> str:
    return (f"line of {n} bytes is longer than the {max_bytes}-byte limit ({key}); it was skipped "
            "without being read into memory")


def content_problem(m: dict[str, Any], final: bool) -> str | None:
    """Why a chat message (role already checked to be a string) has no usable content, or None.

    user / system / tool messages need content: null or missing is a problem (an empty string is
    content; templates render it). An assistant message may have null content when it makes tool
    calls; the final assistant turn with no content, no tool calls and no reasoning has nothing to
    train on."""
    role, content = m.get("role"), m.get("content")
    if content is not None:
        return None
    if role in ("user", "system", "tool"):
        return f"a {role} message with no content (null or missing)"
    if role == "assistant" and final and not m.get("tool_calls") \
            and not (m.get("reasoning_content") or m.get("reasoning")):
        return "the final assistant message has no content, tool calls or reasoning: nothing to train on"
    return None
