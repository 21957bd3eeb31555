"""Opt-in policy `tools_in_system_prompt`: a conversation's tool definitions written into the system prompt.

Some students' chat templates render tool calls but never the definitions passed as `tools`: DeepSeek V3,
V3.1 and R1-Distill expect them in the system prompt, written by whoever builds the request (their model
cards and inference servers do it: `## Tools`, then a section per tool). Trained on such a conversation as
the template renders it, the student learns to call tools it was never shown (reasons: tools_not_rendered).
With this policy the definitions become text in the student's own layout, given by two forms:

- `tools_in_system_prompt`: the whole text, `{tools}` where the definitions go;
- `tool_definition_form`: one definition, `{tool}` (its JSON, as the request listed it), `{name}`,
  `{description}`, `{parameters}` (JSON); the definitions one after another, a newline between.

The text goes after the system message's text (a blank line between), or is a new system message at the
start where the conversation has none; with system_prompt = "merge_into_first_user" (no system message left
by then) it goes before the first user message's text, a blank line between. Only the message handed to
the template changes (Msg.data): the teacher's text (Msg.content) is what the special-token check reads, as
the form's own special tokens (DeepSeek's call syntax, quoted in its instructions) are the student's.
"""

from __future__ import annotations

import dataclasses
import json
import re

from orchestrator.reconstruction.messages import Msg
from orchestrator.reconstruction.reasons import Reject
from orchestrator.system_merge import SEPARATOR  # a blank line, as between a merged system prompt and its user text

TOOLS = "{tools}"
#: the placeholders of tool_definition_form
ONE_TOOL = re.compile(r"\{(tool|name|description|parameters)\}")
_INDEX = re.compile(r"messages\[(\d+)\]")


def definitions_text(tools: list[dict], form: str, each: str) -> str:
    """`form` with `{tools}` replaced by every tool written in `each`, a newline between (one pass over each
    form: a description holding "{name}" stays as written)."""
    return form.replace(TOOLS, "\n".join(_one(t, each) for t in tools), 1)


def _one(tool: dict, each: str) -> str:
    fn = tool.get("function")
    fn = fn if isinstance(fn, dict) else {}
    values = {
        "tool": json.dumps(tool, ensure_ascii=False),
        "name": _text(fn.get("name")),
        "description": _text(fn.get("description")),
        "parameters": json.dumps(fn.get("parameters", {}), ensure_ascii=False),
    }
    return ONE_TOOL.sub(lambda m: values[m.group(1)], each)


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)


def with_definitions(msgs: list[Msg], text: str, merged: bool) -> tuple[list[Msg], int]:
    """`msgs` with `text` in the system prompt (module docstring), and how many messages now stand before the
    conversation's own (1 where a system message was made, else 0: rejections renumber by it)."""
    shown = messages_with_definitions([m.data for m in msgs], text, merged)
    shift = len(shown) - len(msgs)
    made = [Msg(shown[0], "system", "", "", "", 0)] if shift else []
    return made + [m if d is m.data else dataclasses.replace(m, data=d) for m, d in zip(msgs, shown[shift:])], shift


def messages_with_definitions(messages: list[dict], text: str, merged: bool) -> list[dict]:
    """The messages handed to the template (normalised: a developer message is system by now) with `text` in
    the system prompt (module docstring); the others are the same objects."""
    first = messages[0] if messages else None
    if first is not None and first.get("role") == "system" and isinstance(first.get("content"), str):
        own = first["content"]
        return [dict(first, content=own + SEPARATOR + text if own else text)] + messages[1:]
    if merged:
        for i, m in enumerate(messages):
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                own = m["content"]
                return messages[:i] + [dict(m, content=text + SEPARATOR + own if own else text)] + messages[i + 1 :]
    return [{"role": "system", "content": text}] + messages


def renumbered(r: Reject, shift: int) -> Reject:
    """`r` naming the conversation's messages as the user gave them, where `shift` messages were put before
    them (with_definitions)."""
    if not shift:
        return r
    return Reject(r.reason, _INDEX.sub(lambda m: f"messages[{int(m.group(1)) - shift}]", r.detail))
