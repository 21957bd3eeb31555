"""Opt-in policy `system_prompt = "merge_into_first_user"`.

Some chat templates cannot express a system message: Gemma 2 raises "System role not
supported". With this policy a leading system message is folded into the first user
message (system text, a blank line, the user text) before the template sees the
conversation - what Gemma's own documentation recommends. The student is then trained
on prompts without a system turn; that is a choice about the data, so it is opt-in.

Also the fixes named in template_error and template_mismatch details (this switch among them).
"""

from __future__ import annotations

import os.path
from typing import Any, Callable

from orchestrator.content_parts import plain_text

SEPARATOR = "\n\n"


def merge_system_into_first_user(messages: Any) -> Any:
    """A copy of `messages` with messages[0] (role system or developer, string content) merged into
    the first user message; anything else is returned unchanged (the message checks
    then report malformed input as usual)."""
    if not isinstance(messages, list) or len(messages) < 2:
        return messages
    first = messages[0]
    # OpenAI's newer name for the system role is one too (reconstruction reads it as system)
    if not (
        isinstance(first, dict)
        and first.get("role") in ("system", "developer")
        and isinstance(first.get("content"), str)
    ):
        return messages
    for i, m in enumerate(messages[1:], 1):
        if isinstance(m, dict) and m.get("role") == "user":
            text = plain_text(m.get("content"))  # before, a user message of parts was passed over
            if text is None:  # not text: left for the message checks, which name it
                return messages
            merged = dict(m, content=first["content"] + SEPARATOR + text)
            return messages[1:i] + [merged] + messages[i + 1 :]
    return messages


def hint_for_template_error(
    error: str, messages: Any, policy: str, empty: Callable[[], object] | None = None, toolless: bool = False
) -> str:
    """What to append to a template_error detail: the fix, where one is known. The template
    refused a system message; or the turn to train is messages[0] (`empty`: a callable that
    renders no messages with the generation prompt, that turn's prompt) and that render is what
    failed (Qwen2.5's and Llama 3.1's templates read messages[0]); or a conversation
    without tools met a template that probing showed renders only with tools (`toolless`)."""
    has_system = isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "system" for m in messages)
    hint = ""
    if policy == "keep" and has_system and "system" in error.lower():
        hint = (
            " (the template does not accept this system message. Fix: set system_prompt = "
            '"merge_into_first_user" in [orchestrator.reconstruction] to fold it into the first user turn)'
        )
    elif empty is not None and _error_of(empty) == error:  # that render is what failed
        hint = (
            " (messages[0] is a turn to train with nothing before it: its prompt is the template's render "
            "of no messages, which this template cannot make; followed by a later turn to train, it would be "
            "kept as context. Fix: start the conversation with the message the answer replies to)"
        )
    if toolless:
        hint += (
            " (the template renders nothing without a tools list, as Hermes' 'tool_use' template "
            "does: it is for conversations with tools. Fix: give the conversation its tools, or use "
            "the model's default chat template for conversations without tools)"
        )
    return hint


def _error_of(render: Callable[[], object]) -> str | None:
    try:
        render()
    except Exception as e:  # noqa: BLE001 - whatever the template raises
        return str(e)
    return None


def hint_for_mismatch(base: str, full: str, data: list[dict], policy: str) -> str:
    """A reason and fix for a generation prompt that is not a prefix of the turn's render
    because the system message moved: in the prompt, absent from the turn's render
    (Mistral-Nemo's template puts it only into the last user message); or because the turn's render
    writes an assistant message's `name` in its header where the prompt has none (Kimi K2-Thinking, K3)."""
    n = len(os.path.commonprefix([base, full]))
    names = [m.get("name") for m in data if m.get("role") == "assistant" and isinstance(m.get("name"), str)]
    name = next((x for x in names if x and x in full[n : n + len(x) + 40] and x not in base[n:]), None)
    if name is not None:
        return (
            f" (the template writes the assistant message's name ({name!r}) in the turn's header, and the generation "
            "prompt the student answers never has one. Fix: remove `name` from the assistant messages to train)"
        )
    system = next((m.get("content") for m in data if m.get("role") == "system"), None)
    if policy == "keep" and isinstance(system, str) and system and system in base and system not in full:
        return (
            " (the template renders the system message only with the last user message, as Mistral-Nemo's does: "
            "it is in the generation prompt but not in the turn's render. Fix: set system_prompt = "
            '"merge_into_first_user" in [orchestrator.reconstruction])'
        )
    return ""
