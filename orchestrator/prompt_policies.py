"""The message policies of [orchestrator.reconstruction] for a prompt the student samples from (on-policy mode:
distill/on_policy_parts.py, Renderer). Its prompt ids must be those reconstruction gives the same conversation's
trained turn, so what changes the messages the template sees applies to it alike: system_prompt =
"merge_into_first_user" (system_merge.py), content_whitespace = "strip", the normalisation of roles and text
parts, and tools_in_system_prompt (reconstruction/tool_definitions.py). Before, the prompt was rendered as
given: a Gemma student failed on a system message that its SFT samples had merged, a DeepSeek one sampled
without the tool definitions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.reconstruction.messages import plain_tools, strip_contents
from orchestrator.reconstruction.reasons import Reject
from orchestrator.reconstruction.tool_definitions import definitions_text, messages_with_definitions
from orchestrator.content_parts import plain_text
from orchestrator.system_merge import merge_system_into_first_user

if TYPE_CHECKING:
    from distill.core.config import Reconstruction


def prompt_messages(messages: list[dict], tools: Any, policy: Reconstruction) -> list[dict]:
    """`messages` as reconstruction hands them to the template under `policy` (its message-level policies;
    the checks that reject a conversation are reconstruction's alone)."""
    merged = policy.system_prompt == "merge_into_first_user"
    if merged:
        messages = merge_system_into_first_user(messages)
    if policy.content_whitespace == "strip":
        messages = strip_contents(messages)
    messages = [_as_normalized(m) for m in messages]
    if tools and policy.tools_in_system_prompt is not None:
        try:
            shown = plain_tools(tools) or []
        except Reject:  # not JSON data: the prompt loader lets none through; rendered as given
            return messages
        text = definitions_text(shown, policy.tools_in_system_prompt, policy.tool_definition_form)
        messages = messages_with_definitions(messages, text, merged)
    return messages


def _as_normalized(m: dict) -> dict:
    """A message with what reconstruction's normalisation changes in it (messages.normalize_messages):
    OpenAI's `developer` role is `system`, and text parts are their text joined. Before, a developer message
    reached the template as it was (Qwen2.5's drops an unknown role: the student sampled without it, and with
    the default system prompt), and a list of text parts raised inside the template."""
    role, content = m.get("role"), m.get("content")
    if isinstance(content, list):
        content = plain_text(content)
        content = m["content"] if content is None else content  # not text: for the template to refuse
    if role == "developer":
        role = "system"
    return m if role == m.get("role") and content is m.get("content") else dict(m, role=role, content=content)
