"""Reasoning that arrives as content parts of its own, beside the text parts.

Mistral's API answers its reasoning models (Magistral; Mistral Small with `reasoning_effort`) with
content as a list: `{"type": "thinking", "thinking": [{"type": "text", "text": R}]}` then
`{"type": "text", "text": A}`. Anthropic's Messages format writes a thinking block as
`{"type": "thinking", "thinking": R, "signature": ...}`. Such a part is the message's reasoning, not
its text: the teacher client records it as `reasoning_content` (orchestrator/kinds/chat.py), and
reconstruction reads it so from replayed data (reconstruction/messages.py). Before, the client kept
the text parts only, so the reasoning a user paid for was never recorded, and reconstruction
rejected such messages (`non_text_content`).
"""

from __future__ import annotations

from typing import Any


#: content part types that are text: chat completions' "text", and the Responses API's input and output text
TEXT_PARTS = frozenset(("text", "input_text", "output_text"))


def plain_text(content: Any) -> str | None:
    """A content's text where it is text only: a string, or a list of text parts (TEXT_PARTS) joined, as
    reconstruction reads it (reconstruction/messages.py); None for anything else (null, other parts). Unlike
    text_of, which reads the text out of any content."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type", "text") in TEXT_PARTS and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def thinking_text(part: Any) -> str | None:
    """The reasoning of a thinking part (its `thinking`: a string, or a list of text parts joined), or
    None when `part` is not a thinking part, or is one whose text cannot be read (not a string, or a
    list with a part that is not text)."""
    if not isinstance(part, dict) or part.get("type") != "thinking":
        return None
    inner = part.get("thinking")
    if isinstance(inner, str):
        return inner
    if isinstance(inner, list) and all(
        isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str) for p in inner
    ):
        return "".join(p["text"] for p in inner)
    return None


def joined_thinking(parts: list) -> str:
    """The reasoning of every thinking part of a content list, in order ("" when there is none)."""
    return "".join(t for t in map(thinking_text, parts) if t is not None)


def text_of(content: Any) -> str:
    """The text of a message content (a string, null, or OpenAI text parts); other parts are ignored."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
