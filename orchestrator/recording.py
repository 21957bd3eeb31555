"""The teacher recording: one durable JSON line per teacher choice.

    {"v": 1, "prompt_id": ..., "sample_index": ..., "messages": [...], "tools": ...,
     "response": {"role": "assistant", "content": ..., "reasoning_content": ..., "tool_calls": ...},
     "finish_reason": ..., "model": ..., "endpoint": ..., "sampling": {...}, "usage": {...},
     "usage_shared_by": k, "t_start": ..., "t_end": ..., "reward": ..., "request_id": ...,
     "request_hash": ...}

`request_hash` (orchestrator.request_hash) identifies the request the answer was given to;
a later record for the same (prompt_id, sample_index) with a different hash supersedes the
earlier one (it was re-requested after the prompt changed); records of earlier versions
have none.

A record answered from the request cache (orchestrator/cache.py) has `"provenance": "cache"`,
`cache_key`, `cached_usage` and zero `usage`; it is not counted as a request or tokens on resume.

`usage` is the usage of the whole request that produced the choice; a request
with n=k choices writes the same usage on each of its k records with
`usage_shared_by: k` (so summing usage / usage_shared_by over records gives the
request totals). Where the teacher reported no usable usage, `usage` is distill's estimate
(what the budget counted) and `usage_estimated` says why.

Appends are durable before they are acknowledged: `RecordingWriter.append`
returns only after the lines are written, flushed and fsynced (concurrent
appends share one fsync). Nothing secret is written: the API key and headers
never enter a record, and secret-looking keys in `sampling` (nested `extra_body` dicts
and lists included) are redacted by distill.core.redact.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.jsonl import iter_lines, log_values
from distill.core.redact import redact, redact_url

RECORDING_VERSION = 1

__all__ = [
    "redact",
    "make_record",
    "load_recording",
    "LoadedRecording",
    "RecordingError",
    "RecordingWriter",
    "mark_superseded",
    "superseded_lines",
]


def make_record(
    *,
    prompt_id: str,
    sample_index: int,
    messages: list[dict],
    tools: list[dict] | None,
    response: dict[str, Any],
    finish_reason: str | None,
    model: str | None,
    endpoint: str,
    sampling: dict[str, Any],
    usage: dict[str, int],
    usage_shared_by: int,
    t_start: float,
    t_end: float,
    reward: float | None,
    request_id: str | None,
    request_hash: str | None = None,
    usage_estimated: str | None = None,
) -> dict[str, Any]:
    rec = {
        "v": RECORDING_VERSION,
        "prompt_id": prompt_id,
        "sample_index": sample_index,
        "messages": messages,
        "tools": tools,
        "response": response,
        "finish_reason": finish_reason,
        "model": model,
        "endpoint": redact_url(endpoint),  # credentials in a URL masked
        "sampling": redact(sampling),
        "usage": usage,
        "usage_shared_by": usage_shared_by,
        "t_start": t_start,
        "t_end": t_end,
        "reward": reward,
        "request_id": request_id,
        "request_hash": request_hash,
    }
    if usage_estimated:  # `usage` is distill's estimate, not the teacher's count: say so, and why
        rec["usage_estimated"] = usage_estimated
    return rec


@dataclass
class LoadedRecording:
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    superseded: int = 0  # records replaced by a later one for the same key with another request_hash
    lines: dict[tuple[str, int], int] = field(default_factory=dict)  # line number of each record in use
    torn_tail: bytes = b""  # the half-written last line that was dropped, if any
    requests: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0


_NO_LIMIT = 1 << 62  # recording lines are ours: no length limit


class RecordingError(ValueError):
    pass


def load_recording(path: str | os.PathLike, repair: bool = True) -> LoadedRecording:
    """Read a recording. A half-written last line (crash mid-write) is reported and ignored;
    with `repair`, it is saved next to the file (…/recording.jsonl.torn-<offset>) and cut off,
    so later appends start on a fresh line. A bad line elsewhere is an error naming file:line."""
    p = Path(path)
    out = LoadedRecording()
    if not p.exists():
        return out
    with open(p, "rb") as f:  # one reader, one torn-line policy (distill/core/jsonl.py)
        lines = list(iter_lines(f, _NO_LIMIT, strict_tail=True))  # the writer ends every record with "\n"
    good_end = lines[-1].start + lines[-1].size if lines else 0
    masked: dict[str, str] = {}  # endpoint -> with its credentials masked (one per endpoint)
    tail = b""
    if lines and lines[-1].torn:
        tail = lines.pop().raw
        good_end -= len(tail)
    for i, ln in enumerate(lines):
        if ln.blank:
            continue
        try:
            if ln.reason is not None:
                raise ValueError(ln.problem)
            rec = ln.value
            key = (str(rec["prompt_id"]), int(rec["sample_index"]))
        except (KeyError, TypeError, ValueError) as e:
            if i == len(lines) - 1 and not tail:
                # the last complete-looking line is itself torn (e.g. a newline inside a broken write)
                tail = ln.raw
                good_end -= len(tail)
                break
            raise RecordingError(
                f"{p}:{ln.number}: not a valid recording line ({e}); only the last line may be half-written. "
                "Fix: move the damaged line out of the file (or restore the file) and run again"
            ) from None
        if rec.get("v", 1) > RECORDING_VERSION:
            raise RecordingError(
                f"{p}:{ln.number}: recording version {rec['v']} is newer than this distill "
                f"reads ({RECORDING_VERSION}); upgrade distill"
            )
        url = rec.get("endpoint")
        if isinstance(url, str):  # a recording written before URLs were masked: masked as it is read
            if url not in masked:
                masked[url] = redact_url(url)
            rec["endpoint"] = masked[url]
        _add(out, key, rec, ln.number)
    if tail.strip():
        out.torn_tail = tail
        _drop_torn_tail(p, tail, good_end, repair)
    return out


def _add(out: LoadedRecording, key: tuple[str, int], rec: dict[str, Any], number: int) -> None:
    """Uses rec for key unless the record already there stands; counts its share of its request's usage."""
    if key in out.records:
        if not _supersedes(rec, out.records[key]):
            out.duplicates += 1
            return
        out.superseded += 1  # re-requested after its prompt changed: the newer answer is used
    out.records[key] = rec
    out.lines[key] = number
    if rec.get("provenance") == "cache":  # answered from the request cache: nothing paid in this run
        return
    shared = max(1, int(rec.get("usage_shared_by") or 1))
    usage = rec.get("usage") or {}
    out.requests += 1 / shared
    out.prompt_tokens += (usage.get("prompt_tokens") or 0) / shared
    out.completion_tokens += (usage.get("completion_tokens") or 0) / shared


def _drop_torn_tail(p: Path, tail: bytes, good_end: int, repair: bool) -> None:
    """Warns that the half-written last line is ignored; with `repair`, saves it next to the file and cuts it off."""
    print(
        f"warning: {p}: the last line ({len(tail)} bytes at offset {good_end}) is half-written "
        "(the previous run stopped mid-write); ignoring it — that response will be requested again",
        file=sys.stderr,
    )
    if repair:
        side = p.with_name(f"{p.name}.torn-{good_end}")
        side.write_bytes(tail)
        with open(p, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())


def _supersedes(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """A later record for the same (prompt id, index) replaces an earlier one when both carry a
    request_hash and they differ (orchestrator.on_prompt_change = "rerequest" wrote it);
    otherwise the later one is a duplicate and the first is kept."""
    h_new, h_old = new.get("request_hash"), old.get("request_hash")
    return h_new is not None and h_old is not None and h_new != h_old


SUPERSEDED_SUFFIX = ".superseded"


def mark_superseded(path: str | os.PathLike, records: list[tuple[int, dict[str, Any]]]) -> None:
    """Lists (line number, record) of answers that are no longer used (their prompt changed and they
    are requested again) in `<recording>.superseded`, fsynced, so `distill replay` of the recording
    skips them too (it reads the recording in one pass, first record per sample id)."""
    side = Path(f"{path}{SUPERSEDED_SUFFIX}")
    with open(side, "a", encoding="utf-8") as f:
        for line, rec in records:
            f.write(
                json.dumps(
                    {
                        "line": line,
                        "prompt_id": rec["prompt_id"],
                        "sample_index": rec["sample_index"],
                        "request_hash": rec.get("request_hash"),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        f.flush()
        os.fsync(f.fileno())


_SUPERSEDED_CACHE: dict[str, tuple[float, set[int]]] = {}


def superseded_lines(path: str | os.PathLike) -> set[int]:
    """Line numbers of `path` (a recording) listed by mark_superseded; empty when there is no list."""
    side = Path(f"{path}{SUPERSEDED_SUFFIX}")
    try:
        mtime = side.stat().st_mtime
    except OSError:
        return set()
    hit = _SUPERSEDED_CACHE.get(str(side))
    if hit is not None and hit[0] == mtime:
        return hit[1]
    found = set()
    for d in log_values(side):  # a torn last line is skipped: that record was not re-requested yet either
        try:
            found.add(int(d["line"]))
        except (KeyError, TypeError, ValueError):
            continue
    _SUPERSEDED_CACHE[str(side)] = (mtime, found)
    return found


class RecordingWriter:
    """Append-only, group-committed writer: `await append(records)` returns once they are fsynced."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a raw descriptor: nothing is buffered in Python, so a write the disk refused is not tried again
        # (and refused again) when the file is closed
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.written = 0
        self.fsyncs = 0
        self._busy = False

    def _write_sync(self, blob: bytes) -> None:
        view = memoryview(blob)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as e:  # a full or read-only disk: name the file (the CLI shows it as one line)
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def append_sync(self, records: list[dict[str, Any]]) -> None:
        self._write_sync(_encode(records))
        self.written += len(records)
        self.fsyncs += 1

    async def append(self, records: list[dict[str, Any]]) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._committer())
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((_encode(records), fut))
        self._wake.set()
        await fut
        self.written += len(records)

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._busy = True
            try:
                await asyncio.to_thread(self._write_sync, b"".join(b for b, _ in batch))
                self.fsyncs += 1
            except BaseException as e:  # noqa: BLE001 - handed to every waiter
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            finally:
                self._busy = False
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def aclose(self) -> None:
        if self._task is not None:
            while self._pending or self._busy:
                await asyncio.sleep(0.005)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.close_file()

    def close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _encode(records: list[dict[str, Any]]) -> bytes:
    # A teacher can send a lone surrogate (a JSON escape of half an emoji); UTF-8 cannot hold
    # it, so it is written back as its JSON escape: json.dumps output has such characters
    # only inside strings, where \uXXXX reads back as the same character. Nothing paid for is lost.
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode(
        "utf-8", "backslashreplace"
    )
