"""Format "chat": {"messages": [...], "tools"?, "id"?, ...} per line (OpenAI chat fine-tuning JSONL)."""

from __future__ import annotations

from typing import Any

from distill.core.conversation import Conversation
from orchestrator.replay.records import (
    _answered,
    _id,
    _index,
    _messages,
    _opt_reward,
    _opt_str,
    _tools,
    content_id,
    conversation,
)


def detect(obj: dict) -> bool:
    return "messages" in obj


def parse(obj: dict, file: str, line: int, ctx: Any = None) -> list[Conversation]:
    messages = _messages(obj.get("messages"), "messages")
    _answered(messages, f"messages[{len(messages) - 1}]")
    tools = _tools(obj.get("tools"))
    prompt_id = _id(obj, "id") or content_id(messages, tools)
    return [
        conversation(
            "chat",
            file,
            line,
            messages,
            tools,
            prompt_id,
            _index(obj),
            _opt_str(obj, "finish_reason"),
            _opt_reward(obj),
            _opt_str(obj, "model"),
        )
    ]
