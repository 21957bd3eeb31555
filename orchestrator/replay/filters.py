"""The `[orchestrator.replay]` filters as one function: conversation -> None (keep) or (name, detail)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distill.core.conversation import Conversation, cut_short
from orchestrator.recording import superseded_lines
from orchestrator.content_parts import text_of

if TYPE_CHECKING:
    from distill.core.config import Replay


def assistant_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(text_of(m.get("content")) for m in messages if m["role"] == "assistant")


def make_filter(rc: Replay) -> Callable[[Conversation], tuple[str, str] | None]:
    """The replay filters of an `[orchestrator.replay]` config, as one function:
    conversation -> None (keep) or (filter name, detail)."""
    drop_re = re.compile(rc.drop_pattern) if rc.drop_pattern else None
    need_re = re.compile(rc.require_pattern) if rc.require_pattern else None
    allowed = set(rc.allowed_roles) if rc.allowed_roles is not None else None

    def check(c: Conversation) -> tuple[str, str] | None:
        if c.failed:
            return "batch_error", c.failed
        if c.format == "recording" and c.line in superseded_lines(c.file):
            return "superseded", "its prompt was edited and it was requested again (a later line of the recording)"
        n_assistant = sum(1 for m in c.messages if m["role"] == "assistant")
        if n_assistant == 0:
            roles = sorted({str(m["role"]) for m in c.messages} - {"system", "user", "tool"})
            hint = f" (its other roles: {', '.join(roles)})" if roles else ""
            if {"gpt", "human"} & set(roles):
                hint = hint[:-1] + '; ShareGPT turns are read as a "conversations" list of {"from", "value"})'
            return "no_assistant_turn", "the conversation has no assistant message to train on" + hint
        if rc.drop_truncated and cut_short(c.finish_reason):
            return "truncated", f"finish_reason is {c.finish_reason!r}: cut off (drop_truncated = true)"
        if rc.min_reward is not None:
            if c.reward is None:
                if rc.missing_reward == "drop":
                    return "missing_reward", f"no recorded reward (min_reward = {rc.min_reward}, missing_reward = drop)"
            elif c.reward < rc.min_reward:
                return "min_reward", f"reward {c.reward} < min_reward {rc.min_reward}"
        if rc.max_turns is not None and n_assistant > rc.max_turns:
            return "max_turns", f"{n_assistant} assistant turns > max_turns {rc.max_turns}"
        if allowed is not None:
            bad = sorted({m["role"] for m in c.messages} - allowed)
            if bad:
                return "role", f"role(s) {bad} not in allowed_roles {sorted(allowed)}"
        if drop_re is not None or need_re is not None:
            text = assistant_text(c.messages)
            if drop_re is not None and drop_re.search(text):
                return "drop_pattern", f"assistant text matches drop_pattern {rc.drop_pattern!r}"
            if need_re is not None and not need_re.search(text):
                return "require_pattern", f"assistant text does not match require_pattern {rc.require_pattern!r}"
        return None

    return check
