"""Offline replay: recorded conversations -> student training samples, with no teacher.

Reads conversations that were already paid for (our own teacher recordings, chat
JSONL, ShareGPT, OpenAI Batch API output paired with its input file, or local
Parquet/JSONL datasets through `datasets`), applies the `[orchestrator.replay]`
filters, rebuilds each conversation in the student's own tokens with the
`Reconstructor`, and publishes the samples through `ShardWriter` exactly as a live
rollout does. Nothing here opens a network connection.

Properties kept here (and tested in tests/test_replay*.py):
- Streaming: inputs are read one line (or dataset row) at a time; memory does not
  grow with the file size (OpenAI Batch pairing keeps one small index entry per
  request of the batch *input* file).
- Deterministic: the same inputs and tokenizer give byte-identical sample shards.
- Messages, not teacher tokens: one recording replays for any student tokenizer.
- Bad records stop the replay with file, line and field (`on_error = "fail"`) or
  are skipped and listed in run_dir/replay_rejects.jsonl (`on_error = "skip"`).
  A half-written last line (a crash mid-append) is always skipped and reported.

Entry points: `replay(cfg, run_dir, reconstructor, ...)` (what `distill replay` and
`[orchestrator.source] type = "replay"` call) and `iter_conversations(...)`, the
reading + parsing half on its own.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from distill.core.contract import ShardWriter, atomic_write_text, read_consumed
from orchestrator.lines import LINE_TOO_LONG, MAX_LINE_BYTES, content_problem, json_type, parse_line, read_lines, \
    too_long_message
from orchestrator.recording import RECORDING_VERSION, superseded_lines

if TYPE_CHECKING:  # the config module is light, but replay only needs its type
    from distill.core.config import Replay, RunConfig

#: Conversations reconstructed per Reconstructor.build_many call, at most; a batch is
#: also cut once this many input bytes were read since the last one (memory stays flat
#: on recordings of very long conversations).
REPLAY_BATCH = 64
REPLAY_BATCH_BYTES = 2 << 20
ON_ERROR = ("skip", "fail")
# Our names for input fields; orchestrator.replay.columns maps them to other column names.
COLUMN_NAMES = ("messages", "conversations", "tools", "id", "finish_reason", "reward", "system", "model",
                "sample_index")
# Message keys passed on to reconstruction; anything else (refusal, annotations, audio, ...) is dropped.
MESSAGE_KEYS = ("role", "content", "reasoning_content", "reasoning", "tool_calls", "tool_call_id", "name")
DATASET_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}

# ShareGPT `from` values -> chat roles (function_call is handled on its own: it becomes tool_calls).
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
    "tool": "tool", "observation": "tool", "function_response": "tool", "ipython": "tool",
}
SHAREGPT_TOOL_CALL = ("function_call", "tool_call")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ReplayError(ValueError):
    """A problem with a replay input, naming the file, line and field, and the fix."""

    def __init__(self, file: str, line: int | None, field: str | None, problem: str, fix: str = ""):
        self.file, self.line, self.field, self.problem, self.fix = str(file), line, field, problem, fix
        self.reason: str | None = None  # set for a bad record (BadRecord.as_error)
        where = f"{file}:{line}" if line else str(file)
        msg = f"{where}: " + (f"field {field!r}: " if field else "") + problem
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class RecordError(Exception):
    """A bad record, before its location is known (the reader adds file and line).
    `reason` is its code in the summary's bad_record_reasons (see docs/replay.md)."""

    def __init__(self, field: str | None, problem: str, fix: str = "", reason: str = "bad_field"):
        super().__init__(problem)
        self.field, self.problem, self.fix, self.reason = field, problem, fix, reason


# ---------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------


@dataclass
class Conversation:
    """One conversation ready for reconstruction, with where it came from."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    prompt_id: str
    sample_index: int
    finish_reason: str | None
    reward: float | None
    teacher_model: str | None
    format: str
    file: str
    line: int
    # Set when the record itself says it produced nothing to train on (e.g. a failed batch request).
    failed: str | None = None

    @property
    def sample_id(self) -> str:
        return f"{self.prompt_id}/{self.sample_index}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def meta(self) -> dict[str, Any]:
        return {"source": "replay", "format": self.format, "file": self.file, "line": self.line}


@dataclass
class BadRecord:
    """A line that could not be read; listed in replay_rejects.jsonl."""

    file: str
    line: int
    field: str | None
    error: str
    partial: bool = False  # a half-written last line (no trailing newline, not valid JSON)
    excerpt: str = ""
    reason: str = "bad_field"  # the code counted in the summary's bad_record_reasons

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "line": self.line, "field": self.field, "reason": self.reason,
                           "error": self.error, "partial": self.partial, "excerpt": self.excerpt},
                          ensure_ascii=False)

    def as_error(self) -> ReplayError:
        """The error `on_error = "fail"` raises: the problem, plus how to go on without this record."""
        skip = 'or skip bad records with orchestrator.replay.on_error = "skip" (distill replay --on-error skip)'
        if ". Fix: " in self.error:
            problem, fix = self.error.split(". Fix: ", 1)
            err = ReplayError(self.file, self.line, self.field, problem, f"{fix}; {skip}")
        else:
            err = ReplayError(self.file, self.line, self.field, self.error, f"correct the record, {skip}")
        err.reason = self.reason  # the bad-record reason code (docs/replay.md, "Bad records")
        return err


def content_id(messages: list[dict[str, Any]], tools: Any) -> str:
    """A stable id for a conversation without one: a hash of its content."""
    blob = json.dumps([messages, tools], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "h" + hashlib.sha256(blob.encode("utf-8", "backslashreplace")).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Field checks shared by the format parsers
# ---------------------------------------------------------------------------


def text_of(content: Any) -> str:
    """The text of a message content (a string, null, or OpenAI text parts); other parts are ignored."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def normalize_message(m: Any, field: str) -> dict[str, Any]:
    """A chat message, its structure checked, reduced to the keys reconstruction reads.

    Only the shape is checked here (a bad shape is a bad record, reported with its field);
    what the student's template can take (roles, text-only parts, tool-call arguments) is
    judged by the Reconstructor and counted as a rejection reason.
    """
    if not isinstance(m, dict):
        raise RecordError(field, f"expected a message object, got {type(m).__name__}")
    role = m.get("role")
    if not isinstance(role, str) or not role:
        raise RecordError(f"{field}.role", f"expected a role string, got {role!r}")
    content = m.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise RecordError(f"{field}.content", f"expected a string, null or a list of content parts, "
                          f"got {type(content).__name__}")
    missing = content_problem(m, final=False)
    if missing:
        raise RecordError(f"{field}.content", missing, "give the message its text, or drop the record",
                          "missing_content")
    # OpenAI's newer "developer" role is the system prompt under another name.
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    for key in MESSAGE_KEYS[2:]:
        v = m.get(key)
        if v is None or (key == "tool_calls" and v == []):
            continue
        if key == "tool_calls" and not isinstance(v, list):
            raise RecordError(f"{field}.tool_calls", f"expected a list of tool calls, got {type(v).__name__}")
        if key != "tool_calls" and not isinstance(v, str):
            raise RecordError(f"{field}.{key}", f"expected a string, got {type(v).__name__}")
        out[key] = v
    return out


def _messages(v: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise RecordError(field, "expected a non-empty list of messages"
                          + (", got nothing" if v is None else f", got {json_type(v)}"))
    return [normalize_message(m, f"{field}[{i}]") for i, m in enumerate(v)]


def _answered(messages: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """A dataset conversation (chat), checked to end in something to train on (lines.content_problem).

    Not applied to teacher answers as received (recording, Batch API output): an empty answer there is
    what the teacher sent, not a malformed record; reconstruction rejects it (empty_assistant_turn),
    counted and listed, and an on_error = "fail" replay of a paid-for recording does not stop on it."""
    problem = content_problem(messages[-1], final=True)
    if problem:
        raise RecordError(f"{field}.content", problem,
                          "give the final assistant message its answer, or drop the record", "empty_answer")
    return messages


def _tools(v: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):  # ShareGPT datasets often store tools as a JSON string
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise RecordError(field, f"a string that is not valid JSON ({e.msg})") from None
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise RecordError(field, "expected a list of tool definitions (objects)")
    return v


def _opt_str(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None or isinstance(v, str):
        return v
    raise RecordError(key, f"expected a string or null, got {type(v).__name__}")


def _opt_reward(obj: dict, key: str = "reward") -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(key, f"expected a number or null, got {v!r}")
    return float(v)


def _index(obj: dict, key: str = "sample_index") -> int:
    v = obj.get(key, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordError(key, f"expected a non-negative integer, got {v!r}")
    return v


def _id(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RecordError(key, f"expected a string or integer id, got {type(v).__name__}")
    return str(v)


# ---------------------------------------------------------------------------
# Format parsers: record dict -> Conversation(s)
# ---------------------------------------------------------------------------


def parse_recording(obj: dict, file: str, line: int) -> list[Conversation]:
    v = obj.get("v", 1)
    if not isinstance(v, int) or v > RECORDING_VERSION:
        raise RecordError("v", f"recording version {v!r} is newer than this distill reads ({RECORDING_VERSION})",
                          "upgrade distill")
    prompt_id = _id(obj, "prompt_id")
    if prompt_id is None:
        raise RecordError("prompt_id", "missing; every recording line names its prompt")
    messages = _messages(obj.get("messages"), "messages")
    resp = obj.get("response")
    if not isinstance(resp, dict):
        raise RecordError("response", "expected the teacher's message object"
                          + (", got nothing" if resp is None else f", got {type(resp).__name__}"))
    resp = dict(resp)
    resp.setdefault("role", "assistant")
    if resp["role"] != "assistant":
        raise RecordError("response.role", f"expected 'assistant', got {resp['role']!r}")
    response = normalize_message(resp, "response")
    return [Conversation(messages + [response], _tools(obj.get("tools")), prompt_id, _index(obj),
                         _opt_str(obj, "finish_reason"), _opt_reward(obj), _opt_str(obj, "model"),
                         "recording", file, line)]


def parse_chat(obj: dict, file: str, line: int) -> list[Conversation]:
    messages = _messages(obj.get("messages"), "messages")
    _answered(messages, f"messages[{len(messages) - 1}]")
    tools = _tools(obj.get("tools"))
    prompt_id = _id(obj, "id") or content_id(messages, tools)
    return [Conversation(messages, tools, prompt_id, _index(obj), _opt_str(obj, "finish_reason"),
                         _opt_reward(obj), _opt_str(obj, "model"), "chat", file, line)]


def _sharegpt_tool_call(value: Any, field: str, k: int) -> dict[str, Any]:
    call = value
    if isinstance(value, str):
        try:
            call = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(field, f"a function call that is not valid JSON ({e.msg}); expected "
                              '{"name": ..., "arguments": {...}}') from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise RecordError(field, 'expected a function call {"name": ..., "arguments": {...}}')
    args = call.get("arguments", call.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{k}", "type": "function", "function": {"name": call["name"], "arguments": args}}


def parse_sharegpt(obj: dict, file: str, line: int) -> list[Conversation]:
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("conversations", "expected a non-empty list of {\"from\": ..., \"value\": ...} turns")
    messages: list[dict[str, Any]] = []
    system = obj.get("system")
    if system not in (None, ""):
        if not isinstance(system, str):
            raise RecordError("system", f"expected a string, got {type(system).__name__}")
        messages.append({"role": "system", "content": system})
    pending_calls: list[str] = []  # ids of tool calls not yet answered, in order
    n_calls = 0
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(field, f"expected a {{\"from\", \"value\"}} object, got {type(turn).__name__}")
        src = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if not isinstance(src, str):
            raise RecordError(f"{field}.from", f"expected a speaker string, got {src!r}")
        if src.lower() in SHAREGPT_TOOL_CALL:
            call = _sharegpt_tool_call(value, f"{field}.value", n_calls)
            n_calls += 1
            prev = messages[-1] if messages else None
            if prev is not None and prev["role"] == "assistant":  # the call belongs to that assistant turn
                prev.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            pending_calls.append(call["id"])
            continue
        role = SHAREGPT_ROLES.get(src.lower())
        if role is None:
            raise RecordError(f"{field}.from", f"unknown speaker {src!r}; known: "
                              f"{sorted(SHAREGPT_ROLES) + list(SHAREGPT_TOOL_CALL)}",
                              "convert the record to chat format ({\"messages\": [...]}) or drop it")
        if not isinstance(value, str):
            raise RecordError(f"{field}.value", f"expected a string, got {json_type(value)}",
                              reason="missing_content" if value is None else "bad_field")
        msg: dict[str, Any] = {"role": role, "content": value}
        if role == "tool" and pending_calls:
            msg["tool_call_id"] = pending_calls.pop(0)
        messages.append(msg)
    tools = _tools(obj.get("tools"))
    prompt_id = _id(obj, "id") or content_id(messages, tools)
    return [Conversation(messages, tools, prompt_id, _index(obj), _opt_str(obj, "finish_reason"),
                         _opt_reward(obj), _opt_str(obj, "model"), "sharegpt", file, line)]


def _batch_custom_id(raw: bytes, n: int, too_long: bool, max_line_bytes: int) -> tuple[str, str]:
    """(custom_id, "") of a Batch API input line, or ("", what is wrong with the line)."""
    if too_long:
        return "", too_long_message(n, max_line_bytes, "orchestrator.replay.max_line_bytes")
    req, reason, problem = parse_line(raw)
    if reason is not None:
        return "", problem
    if not isinstance(req, dict):
        return "", f"a JSON {json_type(req)}, not an object"
    cid = req.get("custom_id")
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        return "", f"custom_id is {json_type(cid)}, not a string"
    return str(cid), ""


class BatchInputIndex:
    """custom_id -> request, from OpenAI Batch API input file(s), read back by byte offset on demand."""

    def __init__(self, patterns: list[str], max_line_bytes: int = MAX_LINE_BYTES):
        self.paths = resolve_inputs(patterns)
        self.offsets: dict[str, tuple[int, int, int]] = {}  # custom_id -> (file index, offset, line)
        self._files: list[Any] = []
        for fi, path in enumerate(self.paths):
            with open(path, "rb") as f:
                offset, lineno = 0, 0
                for raw, n, too_long in read_lines(f, max_line_bytes):
                    lineno += 1
                    start, offset = offset, offset + n
                    if not raw.strip():
                        continue
                    cid, problem = _batch_custom_id(raw, n, too_long, max_line_bytes)
                    if problem:
                        if not too_long and not raw.endswith(b"\n"):
                            continue  # half-written last line: its answers are reported as missing
                        raise ReplayError(path, lineno, "custom_id", f"not a Batch API input line ({problem})",
                                          "orchestrator.replay.batch_input must name the .jsonl file "
                                          "uploaded to create the batch") from None
                    if cid in self.offsets:
                        other = self.offsets[cid]
                        raise ReplayError(path, lineno, "custom_id", f"{cid!r} repeats "
                                          f"{self.paths[other[0]]}:{other[2]}; answers could not be paired",
                                          "give each request of the batch a unique custom_id")
                    self.offsets[cid] = (fi, start, lineno)

    def request(self, custom_id: str) -> tuple[dict[str, Any], str]:
        if custom_id not in self.offsets:
            raise RecordError("custom_id", f"{custom_id!r} is not in the batch input file(s) "
                              f"{[str(p) for p in self.paths]}",
                              "name the input file of this very batch in orchestrator.replay.batch_input")
        fi, offset, lineno = self.offsets[custom_id]
        if not self._files:
            self._files = [open(p, "rb") for p in self.paths]
        f = self._files[fi]
        f.seek(offset)
        req = json.loads(f.readline())
        body = req.get("body")
        where = f"{self.paths[fi]}:{lineno}"
        if not isinstance(body, dict):
            raise RecordError("custom_id", f"its request at {where} has no 'body' object")
        return body, where

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def parse_openai_batch(obj: dict, file: str, line: int, batch: BatchInputIndex | None) -> list[Conversation]:
    cid = _id(obj, "custom_id")
    if cid is None:
        raise RecordError("custom_id", "missing; every Batch API output line names its request")
    if "response" not in obj and "error" not in obj:
        raise RecordError("response", "missing: this looks like a Batch API INPUT line (a request, no answer)",
                          "replay the batch OUTPUT file and name this input file in "
                          "orchestrator.replay.batch_input")
    if batch is None:
        raise ReplayError(file, line, None, "an OpenAI Batch API output file holds only the answers; the request "
                          "messages are in the batch INPUT file, which is not configured",
                          'set orchestrator.replay.batch_input = "PATH/batch_input.jsonl" (the file uploaded to '
                          "create the batch; globs allowed)")

    def failed(reason: str) -> list[Conversation]:
        return [Conversation([], None, cid, 0, None, None, None, "openai_batch", file, line, failed=reason)]

    if obj.get("error"):
        return failed(f"batch error: {json.dumps(obj['error'], ensure_ascii=False)[:300]}")
    resp = obj.get("response")
    if not isinstance(resp, dict):
        raise RecordError("response", f"expected an object, got {type(resp).__name__}")
    status = resp.get("status_code", 200)
    body = resp.get("body")
    if status != 200:
        return failed(f"batch request failed with HTTP {status}: {json.dumps(body, ensure_ascii=False)[:300]}")
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise RecordError("response.body.choices", "expected a chat completion body with a 'choices' list")
    if not body["choices"]:
        raise RecordError("response.body.choices", "empty: the request succeeded (HTTP 200) but returned no "
                          "answer", "nothing to replay from this line; skip it (--on-error skip)", "no_choices")
    request, req_where = batch.request(cid)
    try:
        prompt = _messages(request.get("messages"), "messages")
        tools = _tools(request.get("tools"))
    except RecordError as e:
        raise RecordError("custom_id", f"its request at {req_where}: field {e.field!r}: {e.problem}") from None
    model = body.get("model") if isinstance(body.get("model"), str) else request.get("model")
    out = []
    for i, choice in enumerate(body["choices"]):
        field = f"response.body.choices[{i}]"
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise RecordError(f"{field}.message", "expected the assistant message object")
        msg = dict(choice["message"])
        msg.setdefault("role", "assistant")
        reply = normalize_message(msg, f"{field}.message")
        idx = choice.get("index", i)
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise RecordError(f"{field}.index", f"expected a non-negative integer, got {idx!r}")
        fr = choice.get("finish_reason")
        out.append(Conversation(prompt + [reply], tools, cid, idx, fr if isinstance(fr, str) else None,
                                None, model, "openai_batch", file, line))
    return out


def detect_format(obj: Any) -> str:
    """Which format one record is in (for format = "auto")."""
    if not isinstance(obj, dict):
        raise RecordError(None, f"expected a JSON object per line, got {json_type(obj)}",
                          reason="not_an_object")
    if "custom_id" in obj:
        if "response" in obj or "error" in obj:
            return "openai_batch"
        if "body" in obj:
            raise RecordError("custom_id", "this is an OpenAI Batch API INPUT line (a request, no answer)",
                              "replay the batch OUTPUT file and name this input file in "
                              "orchestrator.replay.batch_input")
    if "messages" in obj and "response" in obj:
        return "recording"
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    keys = sorted(str(k) for k in obj)[:10]
    raise RecordError(None, f"cannot tell the format from the keys {keys}", reason="unknown_format",
                      fix="expected 'messages' (chat), 'conversations' (ShareGPT), 'messages'+'response' "
                      "(distill recording) or 'custom_id'+'response' (OpenAI batch output); map other column "
                      "names with orchestrator.replay.columns, or set orchestrator.source.format")


# ---------------------------------------------------------------------------
# Readers: file -> (line number, record | bad line)
# ---------------------------------------------------------------------------


@dataclass
class _Line:
    line: int
    nbytes: int
    obj: Any = None
    bad: BadRecord | None = None
    empty: bool = False  # a blank line (or the bytes-only marker of a dataset): not a record


def _excerpt(raw: bytes, n: int = 200) -> str:
    return raw[:n].decode("utf-8", "replace").rstrip("\n")


def _raw_lines(path: str, max_bytes: int) -> Iterator[tuple[bytes, int, int, bool]]:
    """(line, bytes of the file on disk it took, its length, too_long), for plain and
    gzip-compressed (.gz) files; lines over max_bytes are cut (lines.read_lines).
    A gzip stream that ends early raises EOFError after its last complete data."""
    if not path.lower().endswith(".gz"):
        with open(path, "rb") as f:
            for raw, n, too_long in read_lines(f, max_bytes):
                yield raw, n, n, too_long
        return
    with open(path, "rb") as disk, gzip.GzipFile(fileobj=disk) as f:
        pos = 0
        for raw, n, too_long in read_lines(f, max_bytes):
            now = disk.tell()
            yield raw, now - pos, n, too_long
            pos = now


def iter_jsonl(path: str, max_bytes: int = MAX_LINE_BYTES) -> Iterator[_Line]:
    """One record per line, streamed. A last line with no newline that is not valid JSON (or a
    gzip stream that ends early) is marked partial: the writer stopped mid-append. A line longer
    than max_bytes is a bad record (`line_too_long`), read past without holding it in memory."""
    lineno = 0
    lines = _raw_lines(path, max_bytes)
    while True:
        try:
            raw, nbytes, length, too_long = next(lines)
        except StopIteration:
            return
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            lineno += 1
            yield _Line(lineno, 0, bad=BadRecord(path, lineno, None, f"the gzip stream ends early or is damaged "
                                                 f"({e}); the writer stopped mid-write", True,
                                                 reason="partial_last_line"))
            return
        lineno += 1
        if too_long:
            yield _Line(lineno, nbytes, bad=BadRecord(
                path, lineno, None, too_long_message(length, max_bytes, "orchestrator.replay.max_line_bytes"),
                excerpt=_excerpt(raw), reason=LINE_TOO_LONG))
            continue
        if not raw.strip():
            yield _Line(lineno, nbytes, empty=True)
            continue
        obj, reason, msg = parse_line(raw)
        if reason is not None:
            partial = not raw.endswith(b"\n")
            if partial:
                reason, msg = "partial_last_line", (f"half-written last line ({len(raw)} bytes, no newline: the "
                                                    "writer stopped mid-append)")
            yield _Line(lineno, nbytes, bad=BadRecord(path, lineno, None, msg, partial, _excerpt(raw), reason))
            continue
        yield _Line(lineno, nbytes, obj=obj)


def iter_dataset(path: str) -> Iterator[_Line]:
    """Rows of a local Parquet/JSONL/CSV file through the `datasets` library (streamed)."""
    suffix = Path(path).suffix.lower()
    builder = DATASET_SUFFIXES.get(suffix)
    if builder is None:
        raise ReplayError(path, None, None, f"the `datasets` reader handles {sorted(DATASET_SUFFIXES)} files, "
                          f"not {suffix or 'files without a suffix'}", "convert the file, or pick another format")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never ask the Hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ReplayError(path, None, None, "reading Parquet files (format \"dataset\") needs the `datasets` "
                          "library, which is not installed", "pip install datasets") from None
    datasets.disable_progress_bars()
    ds = datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    size = os.path.getsize(path)
    for i, row in enumerate(ds, 1):
        yield _Line(i, 0, obj=row)
    yield _Line(0, size, empty=True)  # account the file's bytes for progress once it is read


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
            matches = sorted(str(q) for q in Path(p).iterdir()
                             if q.is_file() and q.name.lower().endswith((".jsonl", ".jsonl.gz", ".parquet")))
            if not matches:
                raise ReplayError(pat, None, None, "this folder holds no .jsonl, .jsonl.gz or .parquet file")
            out.extend(matches)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ReplayError(pat, None, None, "does not exist",
                              "set orchestrator.source.path (or pass input files to `distill replay`)")
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


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
    parsers: dict[str, Callable[..., list[Conversation]]] = {
        "recording": parse_recording, "chat": parse_chat, "sharegpt": parse_sharegpt,
        "openai_batch": lambda o, f, n: parse_openai_batch(o, f, n, batch),
    }
    for path in paths:
        use_datasets = fmt == "dataset" or (fmt == "auto" and Path(path).suffix.lower() == ".parquet")
        lines = iter_dataset(path) if use_datasets else iter_jsonl(path, max_line_bytes)
        where = "row" if use_datasets else "line"
        for ln in lines:
            if on_bytes and ln.nbytes:
                on_bytes(ln.nbytes)
            if ln.bad is not None:
                yield ln.bad
            elif not ln.empty:
                yield from _parse_record(ln, path, where, fmt, columns, parsers)


def _parse_record(ln: _Line, path: str, where: str, fmt: str, columns: dict[str, str],
                  parsers: dict[str, Callable[..., list[Conversation]]]) -> list[Conversation | BadRecord]:
    """One parsed line (row) -> its Conversation(s), or one BadRecord naming the field and reason."""
    obj = _apply_columns(ln.obj, columns)
    try:
        kind = detect_format(obj) if fmt in ("auto", "dataset") else fmt
        if not isinstance(obj, dict):
            raise RecordError(None, f"expected a JSON object per {where}, got {json_type(obj)}",
                              reason="not_an_object")
        return list(parsers[kind](obj, path, ln.line))
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


# ---------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------


def assistant_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(text_of(m.get("content")) for m in messages if m["role"] == "assistant")


def make_filter(rc: Replay) -> Callable[[Conversation], tuple[str, str] | None]:
    """The replay filters of an `[orchestrator.replay]` config, as one function:
    conversation -> None (keep) or (filter name, detail)."""
    drop_re = re.compile(rc.drop_pattern) if rc.drop_pattern else None
    need_re = re.compile(rc.require_pattern) if rc.require_pattern else None
    allowed = set(rc.allowed_roles) if rc.allowed_roles is not None else None

    def check(c: Conversation) -> tuple[str, str] | None:
        if c.failed:
            return "batch_error", c.failed
        if c.format == "recording" and c.line in superseded_lines(c.file):
            return "superseded", "its prompt was edited and it was requested again (a later line of the recording)"
        n_assistant = sum(1 for m in c.messages if m["role"] == "assistant")
        if n_assistant == 0:
            return "no_assistant_turn", "the conversation has no assistant message to train on"
        if rc.drop_truncated and c.finish_reason == "length":
            return "truncated", "finish_reason is 'length' (drop_truncated = true)"
        if rc.min_reward is not None:
            if c.reward is None:
                if rc.missing_reward == "drop":
                    return "missing_reward", f"no recorded reward (min_reward = {rc.min_reward}, missing_reward = drop)"
            elif c.reward < rc.min_reward:
                return "min_reward", f"reward {c.reward} < min_reward {rc.min_reward}"
        if rc.max_turns is not None and n_assistant > rc.max_turns:
            return "max_turns", f"{n_assistant} assistant turns > max_turns {rc.max_turns}"
        if allowed is not None:
            bad = sorted({m["role"] for m in c.messages} - allowed)
            if bad:
                return "role", f"role(s) {bad} not in allowed_roles {sorted(allowed)}"
        if drop_re is not None or need_re is not None:
            text = assistant_text(c.messages)
            if drop_re is not None and drop_re.search(text):
                return "drop_pattern", f"assistant text matches drop_pattern {rc.drop_pattern!r}"
            if need_re is not None and not need_re.search(text):
                return "require_pattern", f"assistant text does not match require_pattern {rc.require_pattern!r}"
        return None

    return check


# ---------------------------------------------------------------------------
# The replay run
# ---------------------------------------------------------------------------


class _Outputs:
    """rejects.jsonl (filtered / not reconstructible) and replay_rejects.jsonl (unreadable records)."""

    def __init__(self, run_dir: Path):
        self.rejects_path = run_dir / "rejects.jsonl"
        self.bad_path = run_dir / "replay_rejects.jsonl"
        # JSONL: a lone surrogate in a detail or excerpt is written as its JSON escape (lossless)
        self.rejects = open(self.rejects_path, "w", encoding="utf-8", errors="backslashreplace")
        self.bad = open(self.bad_path, "w", encoding="utf-8", errors="backslashreplace")

    def reject(self, item_id: str, reason: str, detail: str) -> None:
        # the bytes of Rejection(item_id, reason, detail).to_json(), without its dataclass round trip
        self.rejects.write(json.dumps({"item_id": item_id, "reason": reason, "detail": detail},
                                      separators=(",", ":"), ensure_ascii=False) + "\n")

    def bad_record(self, b: BadRecord) -> None:
        self.bad.write(b.to_json() + "\n")

    def close(self) -> None:
        for f in (self.rejects, self.bad):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="replay", file=sys.stderr,
                mininterval=0.5, dynamic_ncols=True)


def replay(cfg: RunConfig, run_dir: Path, reconstructor, *, inputs: list[str] | None = None,
           on_error: str | None = None, progress: bool = True, max_ahead: int | None = None,
           stop_event=None) -> dict:
    """Read inputs (default cfg.orchestrator.source.path; globs ok) -> filters -> reconstructor.build_many
    (batches of REPLAY_BATCH conversations or REPLAY_BATCH_BYTES) -> ShardWriter(run_dir/'samples') closed with DONE; rejects to run_dir/'rejects.jsonl', unreadable
    records to run_dir/'replay_rejects.jsonl'; returns a summary dict (also written to
    run_dir/'replay_summary.json') with counts per filter / rejection reason, skipped lines, throughput.

    `inputs` (files, folders or globs) replaces the configured path; `on_error` ("skip" | "fail")
    replaces orchestrator.replay.on_error. `max_ahead`, when given, makes the replay wait while it
    is more than that many samples ahead of the trainer's CONSUMED count (for `distill run`).
    Samples already in run_dir/samples (a resumed replay) are not written again.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    src, rc = cfg.orchestrator.source, cfg.orchestrator.replay
    on_error = on_error or rc.on_error
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    unknown = sorted(set(rc.columns) - set(COLUMN_NAMES))
    if unknown:
        raise ValueError(f"orchestrator.replay.columns: unknown field name(s) {unknown}; the keys are our names "
                         f"{list(COLUMN_NAMES)} and the values your column names, e.g. {{messages = \"conv\"}}")
    patterns = list(inputs) if inputs else ([src.path] if src.path else [])
    if not patterns:
        raise ReplayError("orchestrator.source.path", None, None, "is not set and no input file was given: "
                          "replay has nothing to read", 'set orchestrator.source.path = "FILE.jsonl" (files, '
                          "folders or globs), or pass input files: distill replay CONFIG INPUT...")
    paths = resolve_inputs(patterns)
    batch = BatchInputIndex([rc.batch_input], rc.max_line_bytes) if rc.batch_input else None

    writer = ShardWriter(run_dir / "samples", samples_per_shard=cfg.orchestrator.samples_per_shard)
    already = writer.existing_ids() if writer.published else set()
    keep = make_filter(rc)
    out = _Outputs(run_dir)
    counts: Counter = Counter()
    filtered: Counter = Counter()
    rejected: Counter = Counter()
    formats: Counter = Counter()
    reasons: Counter = Counter()  # bad records per reason
    outcomes: Counter = Counter()  # what became of each conversation / unreadable record
    bad_examples: list[str] = []
    tokens = Counter()
    total_bytes = sum(os.path.getsize(p) for p in paths)
    bar = _progress_bar(total_bytes, progress)
    pending_bytes = [0]

    def on_bytes(n: int) -> None:
        pending_bytes[0] += n
        counts["bytes"] += n
        if bar is not None and pending_bytes[0] >= (1 << 20):
            bar.update(pending_bytes[0])
            pending_bytes[0] = 0
            bar.set_postfix(samples=counts["samples"], refresh=False)

    def stopped() -> bool:  # the concurrent trainer has finished: nothing more is wanted
        return stop_event is not None and stop_event.is_set()

    def wait_for_trainer() -> None:
        while (max_ahead is not None and not stopped()
               and writer.published - read_consumed(writer.dir) > max_ahead):
            time.sleep(0.2)

    def bad(item: BadRecord) -> None:
        counts["bad_records"] += 1
        reasons[item.reason] += 1
        counts["partial_last_lines" if item.partial else "bad_lines"] += 1
        out.bad_record(item)
        if len(bad_examples) < 5:
            bad_examples.append(str(item.as_error()))
        if item.partial:
            print(f"warning: {item.file}:{item.line}: {item.error}; skipped", file=sys.stderr)

    def reconstruct(convs: list[Conversation]) -> list:
        """build_many's results for `convs`; where the template or tokenizer raised, the
        conversations are redone one by one and the one that raised gets its exception."""
        args = [dict(messages=c.messages, tools=c.tools, sample_id=c.sample_id, prompt_id=c.prompt_id,
                     sample_index=c.sample_index, finish_reason=c.finish_reason, reward=c.reward,
                     teacher_model=c.teacher_model, meta=c.meta()) for c in convs]
        try:
            return reconstructor.build_many(args)
        except Exception:  # noqa: BLE001 - find which conversation it was
            results: list = []
            for a in args:
                try:
                    results.append(reconstructor.build_many([a])[0])
                except Exception as e:  # noqa: BLE001
                    results.append(e)
            return results

    todo: list[Conversation] = []  # passed the filters, waiting for one build_many call
    todo_from = [0]  # counts["bytes"] when todo was last empty

    def flush() -> None:
        for c, result in zip(todo, reconstruct(todo)):
            if isinstance(result, Exception):
                b = BadRecord(c.file, c.line, "messages", f"reconstruction failed: {type(result).__name__}: {result}",
                              reason="reconstruction_error")
                bad(b)
                if on_error == "fail":
                    raise b.as_error() from result
                continue
            samples, rejections = result
            outcomes["trained" if samples else "rejected"] += 1
            for r in rejections:
                rejected[r.reason] += 1
                out.reject(r.item_id, r.reason, f"{r.detail} ({c.where})".lstrip())
            for s in samples:
                if s.sample_id in already:
                    counts["already_published"] += 1
                    continue
                writer.add(s)
                counts["samples"] += 1
                tokens["prompt"] += len(s.prompt_ids)
                tokens["completion"] += len(s.completion_ids)
                tokens["trained"] += s.num_trained
                wait_for_trainer()
        todo.clear()

    last_key: tuple[str, int] | None = None
    seen: dict[str, str] = {}  # sample id -> where it was first read (conversations past the filters)
    try:
        for item in iter_conversations(paths, src.format, rc.columns, batch, on_bytes, rc.max_line_bytes):
            if stopped():
                counts["stopped_early"] = 1
                break
            key = (item.file, item.line)
            if key != last_key:  # one record may hold several conversations (batch choices)
                if rc.limit is not None and counts["records"] >= rc.limit:
                    break
                counts["records"] += 1
                last_key = key
            elif isinstance(item, Conversation):
                counts["extra_conversations"] += 1  # a Batch API line with several choices
            if isinstance(item, BadRecord):
                bad(item)
                if on_error == "fail" and not item.partial:
                    flush()  # what came before it is written, as without batching
                    raise item.as_error()
                continue
            c = item
            counts["conversations"] += 1
            formats[c.format] += 1
            why = keep(c)
            if why is not None:
                outcomes["filtered"] += 1
                filtered[why[0]] += 1
                out.reject(c.sample_id, why[0], f"replay filter: {why[1]} ({c.where})")
                continue
            # Ids are unique per replay: of the records that pass the filters, the first with
            # an id wins (remembered only for those, so memory grows with samples, not records).
            first = seen.get(c.sample_id)
            if first is not None:
                outcomes["filtered"] += 1
                filtered["duplicate_id"] += 1
                out.reject(c.sample_id, "duplicate_id", f"replay filter: id already used at {first} ({c.where})")
                continue
            seen[c.sample_id] = c.where
            todo.append(c)
            if len(todo) >= REPLAY_BATCH or counts["bytes"] - todo_from[0] >= REPLAY_BATCH_BYTES:
                flush()
        if not stopped():
            flush()
        outcomes["not_reconstructed"] += len(todo)  # the trainer finished first (distill run)
        writer.close()
    finally:
        out.close()
        if batch is not None:
            batch.close()
        if bar is not None:
            bar.update(pending_bytes[0])
            bar.close()

    elapsed = max(time.perf_counter() - t0, 1e-9)
    summary = {
        "inputs": paths,
        "formats": dict(sorted(formats.items())),
        "records": counts["records"],
        "conversations": counts["conversations"],
        "filtered": dict(sorted(filtered.items())),
        "rejected": dict(sorted(rejected.items())),
        "bad_records": counts["bad_records"],
        "bad_lines": counts["bad_lines"],
        "partial_last_lines": counts["partial_last_lines"],
        "bad_record_reasons": dict(sorted(reasons.items())),
        "bad_record_examples": bad_examples,
        # Each record (plus each extra choice of a Batch API line) ends in exactly one outcome:
        # records + extra_conversations == trained + filtered + rejected + bad_records + not_reconstructed.
        "extra_conversations": counts["extra_conversations"],
        "outcomes": {"trained": outcomes["trained"], "filtered": outcomes["filtered"],
                     "rejected": outcomes["rejected"], "bad_records": counts["bad_records"],
                     "not_reconstructed": outcomes["not_reconstructed"]},
        "samples": counts["samples"],
        "already_published": counts["already_published"],
        "samples_total": writer.published,
        "prompt_tokens": tokens["prompt"],
        "completion_tokens": tokens["completion"],
        "trained_tokens": tokens["trained"],
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(counts["records"] / elapsed, 1),
        "samples_per_s": round(counts["samples"] / elapsed, 1),
        "mb_per_s": round(counts["bytes"] / elapsed / 1e6, 2),
        "samples_dir": str(writer.dir),
        "rejects": str(out.rejects_path),
        "replay_rejects": str(out.bad_path),
        "on_error": on_error,
    }
    atomic_write_text(run_dir / "replay_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
