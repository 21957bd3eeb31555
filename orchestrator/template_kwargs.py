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
