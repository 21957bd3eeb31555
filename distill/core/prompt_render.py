"""A prompt's student token ids, rendered exactly as reconstruction renders the prompt of a trained turn.

On-policy mode (docs/on_policy.md) samples from the student given a prompt; its prompt ids must be the
ones the student would see at inference and the ones reconstruction gives the same conversation in SFT
mode. Reconstruction (orchestrator/reconstruction/) renders the history before a trained turn with the
student's chat template, compiled in transformers' sandboxed jinja environment, with
`add_generation_prompt=True`, `tools`, `documents=None` and the tokenizer's special-token map plus
`orchestrator.reconstruction.chat_template_kwargs` as keyword arguments; then it tokenises that text
on its own with the fast tokenizer, `add_special_tokens=False`. This module does the same for the trainer
side, which may not import the orchestrator (tests/trainer/test_sampler.py checks that both agree). The text is never decoded and re-tokenised afterwards: the sampler appends token ids.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source)


def render_prompt_text(
    tokenizer: Any,
    messages: list[dict],
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict] | None = None,
) -> str:
    """The student's chat template applied to `messages` with the generation prompt."""
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        raise ValueError(
            "the student tokenizer has no chat template; prompts are rendered with it. "
            "Fix: add chat_template.jinja to the tokenizer folder"
        )
    # JSON round trips, as reconstruction does: plain data only, the same values it passes.
    kwargs = json.loads(json.dumps({**tokenizer.special_tokens_map, **(chat_template_kwargs or {})}))
    msgs = json.loads(json.dumps(messages, ensure_ascii=False))
    return _compiled(source).render(messages=msgs, tools=tools, documents=None, add_generation_prompt=True, **kwargs)


def render_prompt(
    tokenizer: Any,
    messages: list[dict],
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict] | None = None,
) -> list[int]:
    """Token ids of `messages` rendered with the generation prompt (render_prompt_text), tokenised on
    their own with the fast tokenizer and no added special tokens, as reconstruction's prompt ids are."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            "rendering prompts needs a fast (Rust) tokenizer with a tokenizer.json; "
            f"got {type(tokenizer).__name__}. Fix: save the student tokenizer with tokenizers installed"
        )
    text = render_prompt_text(tokenizer, messages, chat_template_kwargs, tools)
    return list(backend.encode(text, add_special_tokens=False).ids)
