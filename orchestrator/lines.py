"""Chat-message checks shared by replay and prompt files, and (re-exported) the JSONL reader.

The bounded line reader and its reason codes live in distill/core/jsonl.py (the one JSONL
reader, with its torn-line policy); they are re-exported here for the orchestrator's modules.
`content_problem(message)`: whether a chat message lacks the content its role needs (shared by
replay and prompt files, so both draw the line in the same place).
"""

from __future__ import annotations

from typing import Any

from distill.core.jsonl import (  # noqa: F401 - re-exported
    INVALID_JSON,
    INVALID_UTF8,
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    TOO_DEEP,
    TORN,
    depth_exceeds,
    json_type,
    parse_line,
    read_lines,
    too_long_message,
)


# ShareGPT `from` values -> chat roles (function_call is handled on its own: it becomes tool_calls).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "ipython": "tool",
}


#: A message with "from" and "value" instead of "role" and "content": a ShareGPT turn under "messages".
SHAREGPT_TURN = ' (it has "from" and "value": a ShareGPT turn)'
SHAREGPT_FIX = (
    'put the turns under "conversations" instead of "messages" (read as ShareGPT), or write them as {"role", "content"}'
)


def json_text_hint(v: Any) -> str:
    """For a string where a list belongs: whether it is that list's JSON text (some dataset exports store
    it so), and the fix; else ""."""
    if isinstance(v, str) and v.lstrip().startswith("["):
        return " holding JSON text (store the list itself, not a string of its JSON)"
    return ""


def role_hint(role: str) -> str:
    """What an unknown chat role most likely means (ShareGPT's speaker names: human, gpt, model...), or ""."""
    known = SHAREGPT_ROLES.get(role.lower())
    if known is None or known == role:
        return ""
    if known == role.lower():
        return f" (roles are lower case: write {known!r})"
    return f" ({role!r} is ShareGPT's name for {known}: write role {known!r})"


def weight_ok(w: Any) -> bool:
    """Whether a message's "weight" (OpenAI's chat fine-tuning format) is one distill reads: none, 0
    (the turn is context, not trained) or 1 (trained, the default); true/false and 0.0 are not."""
    return w is None or (type(w) is int and w in (0, 1))


def content_problem(m: dict[str, Any], final: bool) -> str | None:
    """Why a chat message (role already checked to be a string) has no usable content, or None.

    user / system / tool messages need content: null or missing is a problem (an empty string is
    content; templates render it). An assistant message may have null content when it makes tool
    calls; the final assistant turn with no content, no tool calls and no reasoning has nothing to
    train on."""
    role, content = m.get("role"), m.get("content")
    if content is not None:
        return None
    if role in ("user", "system", "tool"):
        return f"a {role} message with no content (null or missing)"
    if (
        role == "assistant"
        and final
        and not m.get("tool_calls")
        and not (m.get("reasoning_content") or m.get("reasoning"))
    ):
        return "the final assistant message has no content, tool calls or reasoning: nothing to train on"
    return None
