"""Format "prompt_completion": {"prompt": ..., "completion": ...} per line (TRL's prompt-completion datasets).

Conversational rows hold two lists of messages, and the conversation is prompt + completion.
Text rows hold two strings: they become one user message and one assistant message, which
the student's chat template renders (distill trains chat students: the completion is
learnt as the answer to the prompt). An optional `system` string comes first.

TRL trains only the completion, and so does this format: every prompt message gets
`"weight": 0` (context, never trained, whatever reconstruction.train_roles says), so a
multi-turn prompt's assistant turns are not trained. The completion must hold an
assistant turn.
"""

from __future__ import annotations

from typing import Any

from distill.core.conversation import Conversation
from orchestrator.lines import json_type
from orchestrator.replay.records import (
    RecordError,
    _answered,
    _messages,
    dataset_conversation,
    normalize_message,
    system_field,
)


def detect(obj: dict) -> bool:
    return "prompt" in obj and "completion" in obj


def _side(v: Any, field: str, role: str) -> list[dict[str, Any]]:
    """One side's messages: a list of messages, or a string as one message of `role`."""
    if isinstance(v, str):
        return [normalize_message({"role": role, "content": v}, field)]
    if not isinstance(v, list):
        raise RecordError(field, f"expected a string or a list of messages, got {json_type(v)}")
    return _messages(v, field)


def parse(obj: dict, file: str, line: int, ctx: Any = None) -> list[Conversation]:
    prompt = _side(obj.get("prompt"), "prompt", "user")
    completion = _side(obj.get("completion"), "completion", "assistant")
    for m in prompt:
        m["weight"] = 0  # the prompt is context (records.normalize_message gave fresh dicts)
    if not any(m["role"] == "assistant" for m in completion):
        raise RecordError("completion", "holds no assistant message: nothing to train on")
    system = system_field(obj)
    if system is not None:
        if prompt[0]["role"] == "system":
            raise RecordError("system", "a system field and a system message in the prompt: which one is meant?")
        prompt.insert(0, {"role": "system", "content": system, "weight": 0})
    messages = prompt + completion
    _answered(messages, f"completion[{len(completion) - 1}]")
    return [dataset_conversation("prompt_completion", obj, file, line, messages)]
