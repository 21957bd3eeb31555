"""Which names a chat template reads, for `orchestrator.reconstruction.chat_template_kwargs`.

A key the student's template never reads changes nothing: a misspelling (`enable_thinkng`), or another
family's switch (DeepSeek-V3.1 reads `thinking`, Qwen3 and SmolLM3 `enable_thinking`, Granite 3.3
`thinking`), and the run would build samples in a mode the user did not ask for. The names are the
template's undeclared variables (jinja2.meta): every name it reads before setting it, which includes each
keyword argument it can use; a key outside them cannot reach the text.
"""

from __future__ import annotations

#: what every render passes (orchestrator/template.py, the tokenizer's special tokens): not a user's switch
PASSED = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


def names_read(source: str) -> frozenset[str] | None:
    """The names `source` reads that a caller could pass; None when that cannot be worked out here."""
    try:
        from jinja2 import meta
        from transformers.utils.chat_template_utils import _compile_jinja_template

        env = _compile_jinja_template(source).environment
        return frozenset(meta.find_undeclared_variables(env.parse(source)))
    except Exception:  # noqa: BLE001 - no verdict: nothing is refused
        return None


def unread_kwargs(source: str, kwargs: dict, passed: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(the keys of `kwargs` the template never reads, the names it reads that a user could set: neither
    PASSED nor in `passed`, the tokenizer's special-token names)."""
    if not kwargs:
        return [], []
    names = names_read(source)
    if names is None:
        return [], []
    return [k for k in kwargs if k not in names], sorted(names - PASSED - passed)


def check_template_kwargs(tok, kwargs: dict) -> None:
    """A ConfigError for each `orchestrator.reconstruction.chat_template_kwargs` key the student's template (that
    of `tok`) never reads (`unread_kwargs`): it would change nothing, silently."""
    from distill.core.config import ConfigError, Problem

    if not kwargs or not isinstance(tok.chat_template, str):  # no template: the Reconstructor says so
        return
    unread, names = unread_kwargs(tok.chat_template, kwargs, frozenset(tok.special_tokens_map))
    if not unread:
        return
    known = f"the names it reads: {', '.join(names)}" if names else "it reads none"
    raise ConfigError(
        "the student's chat template",
        [
            Problem(
                f"orchestrator.reconstruction.chat_template_kwargs.{k}",
                f"is never read by the student's chat template, so it would change nothing ({known}). "
                "Fix: remove it, or use the template's own name for the switch",
            )
            for k in unread
        ],
    )
