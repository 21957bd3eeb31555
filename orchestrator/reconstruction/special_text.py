"""The special-token-text check (special_tokens_in_content = "reject"): special-token text inside a
message's content, reasoning, tool calls or the tools rejects the conversation, naming the message.

Text the student writes as its own syntax is not the teacher's and is not looked at: the tags of a
leading thinking block in assistant content, and tool calls written as text beside the content
(tool_calls_as_text, whose JSON is checked on its own). docs/reconstruction.md, "Special-token text
inside content".
"""

from __future__ import annotations

import json
import re

from orchestrator.open_reasoning import without_thinking_tags
from orchestrator.reconstruction.messages import KEPT_KEYS, Msg
from orchestrator.reconstruction.reasons import Reject


def check_special(msgs: list[Msg], tools, special_re: re.Pattern) -> None:
    """Reject special-token text (e.g. '<|im_end|>') inside content, reasoning, tool calls
    or tools (with special_tokens_in_content=reject)."""
    # One search over all texts joined: a token text inside any of them is inside the
    # join, so no hit there means none anywhere (a hit may straddle two texts: the
    # per-message search then looks at each text on its own, as the error must name the
    # message). Empty reasoning and absent tool calls add nothing to search.
    texts = []
    for m in msgs:
        texts.append(without_thinking_tags(_teachers(m)) if m.role == "assistant" else m.content)
        if m.calls_data:
            texts.append(m.calls_data)
        if m.reasoning:
            texts.append(m.reasoning)
        if len(m.data) > 2:  # more than role and content: tool calls (with their ids), name, tool_call_id
            texts += _field_texts(m)
    if special_re.search("\n".join(texts)) is not None:
        _name_special(msgs, special_re)
    if tools:
        hit = special_re.search(json.dumps(tools, ensure_ascii=False))
        if hit:
            raise Reject("special_token_in_content", f"tools contain the special token text {hit.group()!r}")


def _teachers(m: Msg) -> str:
    """A message's content without the tool-call text put beside it (tool_calls_as_text: its special tokens
    are the student's own call syntax, not the teacher's text)."""
    if not m.placed_calls:
        return m.content
    return m.content[len(m.placed_calls) :] if m.calls_first else m.content[: len(m.content) - len(m.placed_calls)]


def _field_texts(m: Msg) -> list[str]:
    """The texts of a message's fields besides content and reasoning that a template may render: each
    tool call whole (its id and type too, not only the function), a tool message's name and tool_call_id."""
    texts = [json.dumps(tc, ensure_ascii=False) for tc in m.data.get("tool_calls") or ()]
    return texts + [m.data[k] for k in KEPT_KEYS if k in m.data]


def _name_special(msgs: list[Msg], special_re: re.Pattern) -> None:
    """The first message holding special-token text, as a rejection (none: a hit straddled two texts)."""
    for i, m in enumerate(msgs):
        texts = [without_thinking_tags(_teachers(m)) if m.role == "assistant" else m.content, m.reasoning]
        for t in texts + [m.calls_data] + _field_texts(m):
            hit = t and special_re.search(t)
            if hit:
                raise Reject(
                    "special_token_in_content",
                    f"messages[{i}] ({m.role}) contains the special token text {hit.group()!r}. "
                    'Fix: clean the data, or set special_tokens_in_content = "allow"',
                )
