"""Format "openai_batch": OpenAI Batch API output lines, paired by custom_id with the batch INPUT file
(orchestrator.replay.batch_input), which holds the request messages."""

from __future__ import annotations

import json
from typing import Any

from distill.core.conversation import Conversation
from orchestrator.lines import (
    MAX_LINE_BYTES,
    json_type,
    parse_line,
    read_lines,
    too_long_message,
)
from orchestrator.replay.reading import resolve_inputs
from orchestrator.replay.records import (
    RecordError,
    ReplayError,
    _id,
    _messages,
    record_tools,
    conversation,
    normalize_message,
)


def detect(obj: dict) -> bool:
    """An output line (custom_id + response or error); an INPUT line (custom_id + body) is a bad record."""
    if "custom_id" not in obj:
        return False
    if "response" in obj or "error" in obj:
        return True
    if "body" in obj:
        raise RecordError(
            "custom_id",
            "this is an OpenAI Batch API INPUT line (a request, no answer)",
            "replay the batch OUTPUT file and name this input file in orchestrator.replay.batch_input",
        )
    return False


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
                        raise ReplayError(
                            path,
                            lineno,
                            "custom_id",
                            f"not a Batch API input line ({problem})",
                            "orchestrator.replay.batch_input must name the .jsonl file uploaded to create the batch",
                        ) from None
                    if cid in self.offsets:
                        other = self.offsets[cid]
                        raise ReplayError(
                            path,
                            lineno,
                            "custom_id",
                            f"{cid!r} repeats {self.paths[other[0]]}:{other[2]}; answers could not be paired",
                            "give each request of the batch a unique custom_id",
                        )
                    self.offsets[cid] = (fi, start, lineno)

    def request(self, custom_id: str) -> tuple[dict[str, Any], str]:
        if custom_id not in self.offsets:
            raise RecordError(
                "custom_id",
                f"{custom_id!r} is not in the batch input file(s) {[str(p) for p in self.paths]}",
                "name the input file of this very batch in orchestrator.replay.batch_input",
            )
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


def parse(obj: dict, file: str, line: int, ctx: Any = None) -> list[Conversation]:
    cid, batch = _answer_of(obj, file, line, ctx)

    def failed(reason: str) -> list[Conversation]:
        return [conversation("openai_batch", file, line, [], None, cid, 0, None, None, None, failed=reason)]

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
        raise RecordError(
            "response.body.choices",
            "empty: the request succeeded (HTTP 200) but returned no answer",
            "nothing to replay from this line; skip it (--on-error skip)",
            "no_choices",
        )
    request, req_where = batch.request(cid)
    try:
        prompt = _messages(request.get("messages"), "messages")
        tools = record_tools(request)
    except RecordError as e:
        raise RecordError("custom_id", f"its request at {req_where}: field {e.field!r}: {e.problem}") from None
    model = body.get("model") if isinstance(body.get("model"), str) else request.get("model")
    return [
        _choice_conversation(choice, i, prompt, tools, model, cid, file, line)
        for i, choice in enumerate(body["choices"])
    ]


def _answer_of(obj: dict, file: str, line: int, ctx: Any) -> tuple[str, BatchInputIndex]:
    """(custom_id, the batch input index) of an output line; an error if either is missing."""
    batch: BatchInputIndex | None = getattr(ctx, "batch", None)
    cid = _id(obj, "custom_id")
    if cid is None:
        raise RecordError("custom_id", "missing; every Batch API output line names its request")
    if "response" not in obj and "error" not in obj:
        raise RecordError(
            "response",
            "missing: this looks like a Batch API INPUT line (a request, no answer)",
            "replay the batch OUTPUT file and name this input file in orchestrator.replay.batch_input",
        )
    if batch is None:
        raise ReplayError(
            file,
            line,
            None,
            "an OpenAI Batch API output file holds only the answers; the request "
            "messages are in the batch INPUT file, which is not configured",
            'set orchestrator.replay.batch_input = "PATH/batch_input.jsonl" (the file uploaded to '
            "create the batch; globs allowed)",
        )
    return cid, batch


def _choice_conversation(
    choice: Any,
    i: int,
    prompt: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    model: Any,
    cid: str,
    file: str,
    line: int,
) -> Conversation:
    """The conversation of choice i of the answer: the request's messages plus that assistant message."""
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
    return conversation(
        "openai_batch",
        file,
        line,
        prompt + [reply],
        tools,
        cid,
        idx,
        fr if isinstance(fr, str) else None,
        None,
        model,
    )
