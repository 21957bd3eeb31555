"""Format "sharegpt": {"conversations": [{"from": ..., "value": ...}], "system"?, "tools"?} per line."""

from __future__ import annotations

import json
from typing import Any

from distill.core.conversation import Conversation
from orchestrator.lines import SHAREGPT_ROLES, json_type
from orchestrator.replay.records import RecordError, dataset_conversation, message_weight, system_field


def detect(obj: dict) -> bool:
    return "conversations" in obj


SHAREGPT_TOOL_CALL = ("function_call", "tool_call")


def _sharegpt_tool_call(value: Any, field: str, k: int) -> dict[str, Any]:
    call = value
    if isinstance(value, str):
        try:
            call = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(
                field,
                f'a function call that is not valid JSON ({e.msg}); expected {{"name": ..., "arguments": {{...}}}}',
            ) from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise RecordError(field, 'expected a function call {"name": ..., "arguments": {...}}')
    args = call.get("arguments", call.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{k}", "type": "function", "function": {"name": call["name"], "arguments": args}}


def _add_tool_call(messages: list[dict[str, Any]], call: dict[str, Any], weight: int, field: str) -> None:
    """A function call belongs to the assistant turn just before it (a turn's weight is the whole message's:
    the two must agree), else becomes an assistant turn of its own."""
    prev = messages[-1] if messages else None
    if prev is not None and prev["role"] == "assistant":
        if prev.get("weight", 1) != weight:
            raise RecordError(
                f"{field}.weight",
                f"weight {weight} differs from that of the assistant turn before it ({prev.get('weight', 1)}), "
                "which this function call joins",
                "give the call and its assistant turn the same weight",
            )
        prev.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call], **_weighted(weight)})


def _weighted(weight: int) -> dict[str, int]:
    return {"weight": 0} if weight == 0 else {}  # as the chat format keeps it (records.normalize_message)


def _turn_value(turn: dict, field: str) -> Any:
    """A turn's `value`, or its `content` (role/content turns); both, differing, is a bad record."""
    if "value" in turn and "content" in turn and turn["value"] != turn["content"]:
        raise RecordError(
            f"{field}.content",
            "the turn holds both 'value' and 'content', and they differ: which one is its text is unclear",
            "keep one of the two keys (or give both the same text)",
        )
    return turn.get("value", turn.get("content"))


def _turn_message(src: str, value: Any, field: str) -> dict[str, Any]:
    """The chat message of a (non function call) turn: its speaker's role and its text."""
    role = SHAREGPT_ROLES.get(src.lower())
    if role is None:
        raise RecordError(
            f"{field}.from",
            f"unknown speaker {src!r}; known: {sorted(SHAREGPT_ROLES) + list(SHAREGPT_TOOL_CALL)}",
            'convert the record to chat format ({"messages": [...]}) or drop it',
        )
    if not isinstance(value, str):
        raise RecordError(
            f"{field}.value",
            f"expected a string, got {json_type(value)}",
            reason="missing_content" if value is None else "bad_field",
        )
    return {"role": role, "content": value}


def parse(obj: dict, file: str, line: int, ctx: Any = None) -> list[Conversation]:
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("conversations", 'expected a non-empty list of {"from": ..., "value": ...} turns')
    messages: list[dict[str, Any]] = []
    system = system_field(obj)
    if system is not None:
        messages.append({"role": "system", "content": system})
    pending_calls: list[str] = []  # ids of tool calls not yet answered, in order
    n_calls = 0
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(field, f'expected a {{"from", "value"}} object, got {type(turn).__name__}')
        src = turn.get("from", turn.get("role"))
        value = _turn_value(turn, field)
        if not isinstance(src, str):
            raise RecordError(f"{field}.from", f"expected a speaker string, got {src!r}")
        weight = message_weight(turn, field)
        if src.lower() in SHAREGPT_TOOL_CALL:
            call = _sharegpt_tool_call(value, f"{field}.value", n_calls)
            n_calls += 1
            _add_tool_call(messages, call, weight, field)
            pending_calls.append(call["id"])
            continue
        msg = {**_turn_message(src, value, field), **_weighted(weight)}
        if msg["role"] == "tool" and pending_calls:
            msg["tool_call_id"] = pending_calls.pop(0)
        messages.append(msg)
    return [dataset_conversation("sharegpt", obj, file, line, messages)]
