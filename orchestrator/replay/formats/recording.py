"""Format "recording": distill's own teacher recordings (run_dir/recording.jsonl), one choice a line."""

from __future__ import annotations

from typing import Any

from distill.core.conversation import Conversation
from orchestrator.recording import RECORDING_VERSION
from orchestrator.replay.records import (
    RecordError,
    _id,
    _index,
    _messages,
    _opt_reward,
    _opt_str,
    _tools,
    conversation,
    normalize_message,
)


def detect(obj: dict) -> bool:
    return "messages" in obj and "response" in obj


def parse(obj: dict, file: str, line: int, ctx: Any = None) -> list[Conversation]:
    v = obj.get("v", 1)
    if not isinstance(v, int) or v > RECORDING_VERSION:
        raise RecordError(
            "v", f"recording version {v!r} is newer than this distill reads ({RECORDING_VERSION})", "upgrade distill"
        )
    prompt_id = _id(obj, "prompt_id")
    if prompt_id is None:
        raise RecordError("prompt_id", "missing; every recording line names its prompt")
    messages = _messages(obj.get("messages"), "messages")
    resp = obj.get("response")
    if not isinstance(resp, dict):
        raise RecordError(
            "response",
            "expected the teacher's message object"
            + (", got nothing" if resp is None else f", got {type(resp).__name__}"),
        )
    resp = dict(resp)
    resp.setdefault("role", "assistant")
    if resp["role"] != "assistant":
        raise RecordError("response.role", f"expected 'assistant', got {resp['role']!r}")
    response = normalize_message(resp, "response")
    return [
        conversation(
            "recording",
            file,
            line,
            messages + [response],
            _tools(obj.get("tools")),
            prompt_id,
            _index(obj),
            _opt_str(obj, "finish_reason"),
            _opt_reward(obj),
            _opt_str(obj, "model"),
        )
    ]
