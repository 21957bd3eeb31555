"""The typed build input: one conversation ready for reconstruction, whoever produced it.

Every source builds a `Conversation` (a live rollout from a recorded teacher answer,
replay from each input format, `distill tokenize` from each line) and reconstruction
(`Reconstructor.build_many`) takes it. Leaf module: imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: finish_reason values of an answer that did not finish: the length limit, a content filter
#: (OpenAI, Azure, OpenRouter) and an error or an abort mid-answer (OpenRouter, vLLM, SGLang). Its
#: text stops where it was cut, so its last turn never produced an end token (the `truncated` policy).
CUT_SHORT = frozenset({"length", "content_filter", "error", "abort"})


def cut_short(finish_reason: str | None) -> bool:
    """Whether an answer with this finish_reason was cut off before it finished (CUT_SHORT)."""
    return finish_reason in CUT_SHORT


@dataclass
class Conversation:
    """One conversation (its last assistant turns are what the student learns) and its provenance.

    `sample_id` defaults to "<prompt_id>/<sample_index>". `format`, `file` and `line` say where
    it was read (replay inputs; empty for a live rollout); `meta` is copied into each sample's
    meta. `failed` is set when the record itself says it produced nothing to train on (e.g. a
    failed OpenAI Batch request): such a conversation is rejected, never built.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    prompt_id: str = ""
    sample_index: int = 0
    finish_reason: str | None = None
    reward: float | None = None
    teacher_model: str | None = None
    meta: dict[str, Any] | None = None
    sample_id: str = ""
    format: str = ""
    file: str = ""
    line: int = 0
    failed: str | None = None

    def __post_init__(self) -> None:
        if not self.sample_id:
            self.sample_id = f"{self.prompt_id}/{self.sample_index}"

    @property
    def where(self) -> str:
        """ "file:line" of the record it was read from."""
        return f"{self.file}:{self.line}"

    def build_args(self) -> dict[str, Any]:
        """The keyword arguments of Reconstructor.build (messages, tools, ids, outcome, meta)."""
        return {
            "messages": self.messages,
            "tools": self.tools,
            "sample_id": self.sample_id,
            "prompt_id": self.prompt_id,
            "sample_index": self.sample_index,
            "finish_reason": self.finish_reason,
            "reward": self.reward,
            "teacher_model": self.teacher_model,
            "meta": self.meta,
        }


def build_args(conv: Conversation | dict[str, Any]) -> dict[str, Any]:
    """Reconstructor.build's keyword arguments of a Conversation, or of the build-argument dict
    that reconstruction also accepts (deprecated: the form of tests and callers written before
    Conversation)."""
    return conv.build_args() if isinstance(conv, Conversation) else conv
