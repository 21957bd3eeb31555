"""The one JSONL reader: bounded lines, every parse failure a reason, one torn-line policy.

Every JSONL file distill reads goes through here: replay inputs and prompt files (handed to
us by a user: nothing in them may crash the reader), and the append-only logs a run writes
(recording.jsonl, rejects.jsonl, metrics, `<recording>.superseded`), and sample shards.

The torn-line policy
    An append-only writer ends every record with "\\n" and a crash can stop it mid-append, so
    the one damage a healthy file may show is a *torn last line*: the file's last line, with no
    trailing newline, that does not parse. Such a line is `reason == TORN` ("partial_last_line"):
    it is recoverable (the record was never completely written; a log reader skips it, and
    the recording is cut back to the last newline and the record requested again). Any other
    bad line is a real error, each with its own reason code:
    `invalid_utf8`, `invalid_json`, `too_deep` (nested past the recursion limit), `line_too_long`.
    What to do with them (raise naming file:line, skip and count, list) is the caller's choice.

Options of `iter_lines`
    `max_bytes`    longest line held in memory; a longer line is read past in 1 MiB chunks and
                   reported as `line_too_long` (a 300 MB line costs no 300 MB of memory).
    `limit_key`    the config key (or constant) that sets max_bytes, named in that message.
    `strict_tail`  for files whose writer always ends a record with a newline: a last line
                   with no newline is TORN even when it parses (it may be cut short at a point
                   that happens to be valid JSON). Off for user files, which often lack the
                   final newline.
    `torn`         False for files that are not append-only logs (a prompt file, a shard written
                   atomically): no line is TORN, a broken last line keeps its parse reason.
    `cut_only`     a last line is TORN only when it is the start of a line that would parse
                   (`cut_short`: a writer stopped mid-record); one that no more text could mend
                   (`{"a": 1}}`, a typo) keeps its parse reason. For files that may be cut off but
                   are also written by hand (replay inputs). Not for the run's own logs: a crash
                   can leave NUL bytes after the last newline, which no JSON starts with.

Lower level, also used directly: `read_lines(f, max_bytes)` (raw bounded lines), `parse_line(raw)`
(json.loads whose failures are (reason, message) pairs), `json_type(x)` (JSON's name of a value's
type), `depth_exceeds`, `too_long_message`. Leaf module: standard library only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

#: Default longest line (bytes, newline included) of a replay input or prompt file. Longer lines
#: are bad records (`line_too_long`), read past without loading them
#: (replay: orchestrator.replay.max_line_bytes).
MAX_LINE_BYTES = 64 << 20
_SKIP_CHUNK = 1 << 20

#: Reason codes of lines that cannot be read (replay lists them in replay_rejects.jsonl).
INVALID_UTF8, INVALID_JSON, TOO_DEEP, LINE_TOO_LONG = "invalid_utf8", "invalid_json", "too_deep", "line_too_long"
#: A torn last line (see the policy above).
TORN = "partial_last_line"
#: The UTF-8 byte order mark, passed over at the start of a file.
BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    """A binary file (plain, gzip, ...): all the reader needs is readline with a size limit."""

    def readline(self, size: int = -1, /) -> bytes: ...


def read_lines(f: Readable, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, int, bool]]:
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
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(x), type(x).__name__)


def parse_line(raw: bytes) -> tuple[Any, str | None, str]:
    """(value, None, "") for a line that parses, else (None, reason, message)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, INVALID_UTF8, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    try:
        return json.loads(text), None, ""
    except json.JSONDecodeError as e:
        column = min(e.pos, len(text.rstrip("\r\n"))) + 1  # not past the line's end onto a "line 2"
        at = "" if e.msg.endswith(" at") else " at"  # ("Invalid control character at": no "at at")
        return None, INVALID_JSON, f"not valid JSON ({e.msg}{at} column {column})"
    except RecursionError:
        return (
            None,
            TOO_DEEP,
            ("JSON nested too deeply to read (arrays/objects inside each other past the recursion limit)"),
        )


_CUT_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_CUT_ESCAPE = re.compile(r"u[0-9a-fA-F]{0,4}(\\(u[0-9a-fA-F]{0,4})?)?")  # \\uD83D\\uDE0 cut mid-escape
_CUT_NUMBER = re.compile(r"-?\d+(\.\d+)?")  # a number the decoder stopped after: 12 of "12." or 1.5 of "1.5e-"


def cut_short(raw: bytes) -> bool:
    """Whether a line that does not parse is the start of one that would: text cut off mid-record (a
    writer stopped), not a typo. `{"a": "b` and `{"a": tru` are cut short; `{"a": 1}}` and `{"a" 1}` are not."""
    text = raw.rstrip(b"\r\n \t")
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end: check the text before it
        return e.reason == "unexpected end of data" and e.end == len(text) and cut_short(text[: e.start])
    try:
        json.loads(s)
        return False
    except json.JSONDecodeError as e:
        return _cut_at(e.msg, s, e.pos)
    except RecursionError:
        return False


def _cut_at(msg: str, s: str, pos: int) -> bool:
    """Whether json's error `msg` at `pos` is one the decoder gives only when the text ends too soon."""
    rest = s[pos:]
    if not rest or msg.startswith("Unterminated string"):
        return True
    if msg == "Expecting value":  # a literal cut: tru, nul, -
        return any(w.startswith(rest) for w in _CUT_LITERALS)
    if msg.startswith("Invalid \\uXXXX"):
        return _CUT_ESCAPE.fullmatch(rest) is not None
    if msg == "Expecting ',' delimiter" and rest in (".", "e", "E", "e-", "e+", "E-", "E+"):
        number = re.search(r"[-+\d.eE]+$", s[:pos])  # the digits before: "." may follow 12, "e" may follow 1.5
        return (
            number is not None
            and _CUT_NUMBER.fullmatch(number.group()) is not None
            and (rest != "." or "." not in number.group())
        )
    return False


def json_array_hint(path: str | os.PathLike) -> str:
    """What to do with a file that is one JSON array (json.dump's output) where JSON Lines are read."""
    p, out = _converted_name(path)
    jq = f"gunzip -c {p} | jq -c '.[]' > {out}" if p.endswith(".gz") or is_gzip(p) else f"jq -c '.[]' {p} > {out}"
    return f"convert it to one object per line, e.g. {jq}, and read {out}"


def _converted_name(path: str | os.PathLike) -> tuple[str, str]:
    """The path as text, and a JSON Lines file to convert it into: its name with .jsonl for its
    extension (past a .gz), never the input itself (a.jsonl -> a.lines.jsonl)."""
    p = os.fspath(path)
    plain = p.removesuffix(".gz")
    stem = plain.rsplit(".", 1)[0] if "." in os.path.basename(plain) else plain
    return p, stem + (".lines.jsonl" if stem + ".jsonl" == p else ".jsonl")


def shape_hint(ln: "Line", path: str | os.PathLike, record: str = "", table: str = "") -> str:
    """For a file's first line that does not parse, when its second does not either: what the file is
    instead of JSON Lines, and how to convert it ("" for a JSON Lines file with a bad first line).
    `record`: the object a row should become; `table`: another way the reader has to read a table."""
    if ln.number != 1 or ln.reason != INVALID_JSON:  # before any copy: every bad line of a replay asks
        return ""
    raw = ln.raw.strip()
    if not raw or second_line_parses(path):
        return ""
    p, out = _converted_name(path)  # never the input itself
    if raw.startswith(b"["):
        return f"the file looks like one JSON array, not JSON Lines: {json_array_hint(path)}"
    if raw == b"{":  # json.dump(..., indent=...) and jq open an object alone on its line
        jq = f"gunzip -c {p} | jq -c ." if p.endswith(".gz") or is_gzip(p) else f"jq -c . {p}"  # jq reads no gzip
        return (
            "the file looks like pretty-printed JSON (one object over several lines), not JSON Lines "
            f"(one object per line): convert it, e.g. {jq} > {out}, and read {out}"
        )
    if not raw.startswith((b"{", b'"')) and (b"," in raw or b"\t" in raw):
        return (
            "the file looks like a CSV/TSV table, not JSON Lines: write each row as one JSON object per line, "
            + (record or '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}')
            + table
        )
    return ""


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with gzip's magic bytes (told by its content, not its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def second_line_parses(path: str | os.PathLike) -> bool:
    """Whether the file's second line is JSON (then a bad first line is only that: a bad line)."""
    import gzip

    try:
        with (gzip.open if is_gzip(path) else open)(path, "rb") as f:
            f.readline(MAX_LINE_BYTES)
            second = f.readline(1 << 20)
        return second.strip() != b"" and parse_line(second)[1] is None
    except Exception:  # noqa: BLE001 - unreadable past line 1 (bad gzip, ...): no lookahead, no change
        return False


def starts_json_array(ln: "Line") -> bool:
    """Whether a file's first line opens a JSON array it does not close (a pretty-printed array file)."""
    return ln.number == 1 and ln.reason is not None and ln.raw.lstrip().startswith(b"[")


def one_line_json_array(ln: "Line", path: str | os.PathLike) -> bool:
    """Whether a file's first line is a whole JSON array and no record follows it (json.dump of a list,
    on one line): the file is wrong, not its first line. An array followed by records is one bad line."""
    return ln.number == 1 and isinstance(ln.value, list) and not second_line_parses(path)


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
    return (
        f"line of {n} bytes is longer than the {max_bytes}-byte limit ({key}); it was skipped "
        "without being read into memory"
    )


@dataclass
class Line:
    """One line of a JSONL file: its value, or why it has none."""

    number: int  # 1-based
    start: int  # byte offset of its first byte in the stream read
    size: int  # bytes it takes, newline included (the whole line, even when too long)
    raw: bytes  # the line (its first max_bytes bytes when too long)
    value: Any = None
    reason: str | None = None  # None: parsed (or blank); else a reason code above
    problem: str = ""  # what is wrong, for a message naming file:line

    @property
    def blank(self) -> bool:
        return self.reason is None and not self.raw.strip()

    @property
    def ok(self) -> bool:
        """Parsed, not blank."""
        return self.reason is None and not self.blank

    @property
    def torn(self) -> bool:
        return self.reason == TORN


def no_newline(raw: bytes) -> str:
    """How a line without its newline ends, in words: a CRLF line cut between its two bytes says so."""
    return "ends in \\r with no \\n after it" if raw.endswith(b"\r") else "no newline"


def iter_lines(
    f: Readable,
    max_bytes: int = MAX_LINE_BYTES,
    *,
    limit_key: str = "max_line_bytes",
    strict_tail: bool = False,
    torn: bool = True,
    cut_only: bool = False,
) -> Iterator[Line]:
    """Every line of a binary file as a Line (blank ones too), parsed, with the torn-line policy applied."""
    start = 0
    for number, (raw, n, too_long) in enumerate(read_lines(f, max_bytes), 1):
        ln = Line(number, start, n, raw)
        start += n
        if number == 1 and raw.startswith(BOM):  # a UTF-8 byte order mark (editors on Windows write one)
            raw = ln.raw = raw[len(BOM) :]
        if too_long:
            ln.reason, ln.problem = LINE_TOO_LONG, too_long_message(n, max_bytes, limit_key)
        elif raw.strip():
            ln.value, ln.reason, ln.problem = parse_line(raw)
            if (
                torn
                and not raw.endswith(b"\n")
                and (ln.reason is not None or strict_tail)
                and not (cut_only and ln.reason is not None and not cut_short(raw))
            ):
                ln.value, ln.reason = None, TORN
                ln.problem = (
                    f"half-written last line ({len(raw)} bytes, {no_newline(raw)}: the writer stopped mid-append)"
                )
        yield ln


def read_jsonl(path: str | os.PathLike, max_bytes: int = MAX_LINE_BYTES, **kw: Any) -> Iterator[Line]:
    """iter_lines over the file at `path` (closed when the iteration ends)."""
    with open(path, "rb") as f:
        yield from iter_lines(f, max_bytes, **kw)


def log_values(path: str | os.PathLike, skipped: list[Line] | None = None) -> Iterator[Any]:
    """The values of an append-only JSONL log, in order; blank lines are passed over and bad ones
    (a torn last line after a crash, or damage) are skipped, or appended to `skipped` when given.
    A missing file has no values."""
    if not os.path.exists(path):
        return
    for ln in read_jsonl(path):
        if ln.ok:
            yield ln.value
        elif not ln.blank and skipped is not None:
            skipped.append(ln)
