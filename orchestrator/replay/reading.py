"""Reading replay inputs: paths from files/folders/globs, and JSONL (plain or .gz) one line at a time.

Every line becomes a `Line`: a parsed value, a BadRecord (with its reason), or a blank. The
torn-line policy is distill.core.jsonl's, narrowed (its `cut_only`): a last line with no newline that does
not parse, and is the start of a line that would (`jsonl.cut_short`), is `partial_last_line` (the writer stopped
mid-append), reported and skipped even with on_error = "fail"; one that could not be completed
(`{"a": 1}}`: a typo in a hand-written file) is a bad record like any other line.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.core import jsonl
from distill.core.jsonl import MAX_LINE_BYTES
from distill.core.redact import path_holds_api_key
from orchestrator.replay.records import BadRecord, ReplayError


@dataclass
class Line:
    line: int
    nbytes: int
    obj: Any = None
    bad: BadRecord | None = None
    empty: bool = False  # a blank line (or the bytes-only marker of a dataset): not a record


def _excerpt(raw: bytes, n: int = 200) -> str:
    return raw[:n].decode("utf-8", "replace").rstrip("\n")


_LIMIT_KEY = "orchestrator.replay.max_line_bytes"


def _read(path: str, max_bytes: int) -> Iterator[tuple[jsonl.Line, int]]:
    """(line, bytes of the file on disk it took) for plain and gzip-compressed (.gz) files
    (distill.core.jsonl.iter_lines). A gzip stream that ends early raises EOFError after its
    last complete data. A gzip file is told by its name (a .gz that is not gzip is an error) or its
    first bytes (a compressed file named .jsonl)."""
    if not (path.lower().endswith(".gz") or jsonl.is_gzip(path)):
        with open(path, "rb") as f:
            for ln in jsonl.iter_lines(f, max_bytes, limit_key=_LIMIT_KEY, cut_only=True):
                yield ln, ln.size
        return
    with open(path, "rb") as disk, gzip.GzipFile(fileobj=disk) as f:
        pos = 0
        for ln in jsonl.iter_lines(f, max_bytes, limit_key=_LIMIT_KEY, cut_only=True):
            now = disk.tell()
            yield ln, now - pos
            pos = now


CORRUPT_GZIP = "corrupt_gzip"


def _corrupt_gzip(path: str, lineno: int, e: Exception) -> BadRecord:
    """The bad record of a .gz file that is not gzip, or whose stream is damaged (bad data, CRC):
    the lines after `lineno` cannot be read."""
    if lineno == 0 and str(e).startswith("Not a gzipped file"):
        problem = f"is not a gzip file although its name ends in .gz ({e}); nothing of it was read"
        fix = "rename it to .jsonl if it is plain JSON Lines, or compress it with gzip"
    else:
        after = f"after line {lineno}" if lineno else "before its first line"
        problem = f"corrupt gzip stream {after} ({type(e).__name__}: {e}); the rest of the file was not read"
        fix = "recompress the file from its source (`gzip -t FILE` tests it), or remove it from the inputs"
    return BadRecord(path, lineno + 1, None, f"{problem}. Fix: {fix}", reason=CORRUPT_GZIP)


def iter_jsonl(path: str, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """One record per line, streamed. A last line with no newline that is not valid JSON (or a
    gzip stream that ends early) is marked partial: the writer stopped mid-append. A .gz file
    that is not gzip, or whose stream is damaged (CRC, bad data), ends in one bad record
    (`corrupt_gzip`): the rest of it cannot be read. A line longer than max_bytes is a bad
    record (`line_too_long`), read past without holding it in memory."""
    lineno = 0
    lines = _read(path, max_bytes)
    while True:
        try:
            ln, nbytes = next(lines)
        except StopIteration:
            return
        except EOFError as e:  # the writer died mid-stream: a torn last line
            yield Line(
                lineno + 1,
                0,
                bad=BadRecord(
                    path,
                    lineno + 1,
                    None,
                    f"the gzip stream ends early ({e}); the writer stopped mid-write",
                    True,
                    reason=jsonl.TORN,
                ),
            )
            return
        except (gzip.BadGzipFile, zlib.error) as e:  # a bad file, not a cut: its rest cannot be read
            yield Line(lineno + 1, 0, bad=_corrupt_gzip(path, lineno, e))
            return
        lineno = ln.number
        if jsonl.starts_json_array(ln) or jsonl.one_line_json_array(ln, path):  # the file is wrong, not its record
            how = "" if ln.reason is not None else " on one line"  # (skipping it would skip it all)
            raise ReplayError(
                path,
                None,
                None,
                f"is one JSON array{how}, not JSON Lines (one record per line)",
                jsonl.json_array_hint(path),
            )
        if ln.blank:
            yield Line(lineno, nbytes, empty=True)
        elif ln.reason is not None:
            table = _TABLE if path.lower().endswith(".csv") else ""  # (format "dataset" reads .csv, not .tsv)
            hint = jsonl.shape_hint(ln, path, table=table)  # a CSV or pretty-printed JSON file: once, at line 1
            problem = f"{ln.problem}. Fix: {hint}" if hint else ln.problem
            bad = BadRecord(path, lineno, None, problem, ln.torn, _excerpt(ln.raw), ln.reason, hint)
            yield Line(lineno, nbytes, bad=bad)
        else:
            yield Line(lineno, nbytes, obj=ln.value)


#: How replay reads a table instead (docs/replay.md, "dataset").
_TABLE = (
    '; or read it as a table: orchestrator.source.format = "dataset" (distill replay ... '
    "--orchestrator.source.format dataset), whose rows are read like JSON Lines records"
)


def resolve_inputs(patterns: list[str]) -> list[str]:
    """Input paths from files, directories (their .jsonl/.parquet files) and globs, in a stable order."""
    out: list[str] = []
    for pat in patterns:
        p = os.path.expanduser(str(pat))
        if glob.has_magic(p):
            matches = sorted(m for m in glob.glob(p, recursive=True) if os.path.isfile(m))
            if not matches:
                raise ReplayError(pat, None, None, "no file matches this pattern", "check the path and the glob")
            out.extend(matches)
        elif os.path.isdir(p):
            matches = sorted(
                str(q)
                for q in Path(p).iterdir()
                if q.is_file() and q.name.lower().endswith((".jsonl", ".jsonl.gz", ".parquet"))
            )
            if not matches:
                raise ReplayError(pat, None, None, "this folder holds no .jsonl, .jsonl.gz or .parquet file")
            out.extend(matches)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ReplayError(
                pat,
                None,
                None,
                "does not exist",
                "check the path (relative paths are read from the current folder; a config's "
                "orchestrator.source.path or the inputs after `distill replay CONFIG`)",
            )
    if any(path_holds_api_key(p) for p in [*map(str, patterns), *out]):  # printed, and kept in every sample
        raise ReplayError(
            "one of the inputs",
            None,
            None,
            "a part of its path looks like an API key (the value is not shown); input paths are printed and kept "
            "in every sample's provenance",
            "rename that folder or file",
        )
    seen: set[str] = set()  # one file named twice (a.jsonl and ./a.jsonl, or by a glob too) is read once
    return [p for p in out if not (os.path.realpath(p) in seen or seen.add(os.path.realpath(p)))]
