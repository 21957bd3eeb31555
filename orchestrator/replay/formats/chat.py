"""Format "chat": {"messages": [...], "tools"?, "id"?, ...} per line (OpenAI chat fine-tuning JSONL)."""

from __future__ import annotations

from typing import Any

from distill.core.conversation import Conversation
from orchestrator.replay.records import _answered, _messages, dataset_conversation


def detect(obj: dict) -> bool:
    # a table's row holds every column: None messages beside a conversation are a ShareGPT row
    return "messages" in obj and (obj["messages"] is not None or obj.get("conversations") is None)


def parse(obj: dict, file: str, line: int, ctx: Any = None) -> list[Conversation]:
    messages = _messages(obj.get("messages"), "messages")
    _answered(messages, f"messages[{len(messages) - 1}]")
    return [dataset_conversation("chat", obj, file, line, messages)]
