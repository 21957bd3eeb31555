"""The template's renders of a conversation's prefixes, and the append-only derivation.

Part of `Reconstructor` (reconstructor.py sets the state used here). For every trained
turn k reconstruction needs P_k (the history before the turn, with the generation
prompt) and F_k (the history through it). When orchestrator/template.py proves the
template append-only, both come from the marked render of the whole conversation
plus a render of its first prompt ("Prefix renders" in docs/reconstruction.md);
otherwise each prefix is rendered. Prompt renders are cached by content.
"""

from __future__ import annotations

import collections
import json
import sys
from typing import Any

from orchestrator.reconstruction.cache import put_bounded
from orchestrator.template import ChatTemplate


class PrefixRenders:
    """Renders through the student's chat template (a mixin of Reconstructor)."""

    #: With a constant after(True), the first prompt is still rendered for every this-many
    #: conversations and compared with the derivation.
    CROSS_CHECK_EVERY = 64

    # Set by Reconstructor.__init__:
    PROMPT_CACHE_SIZE: int
    stats: collections.Counter
    chat_template: ChatTemplate
    _template_kwargs: dict[str, Any]
    _render_cache: dict[str, Any]  # messages JSON -> generation-prompt render (text or parts)
    _derive_prefixes: bool  # off only if a cross-check ever fails
    _after_prompt: str | None  # after(True), once learnt (constant-after templates)

    def render(self, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        """The template's text for `msgs` (plain JSON data, as normalize_messages makes it)."""
        self.stats["renders"] += 1
        return self.chat_template.render(msgs, tools, add_generation_prompt, **self._template_kwargs)

    def _render_parts(self, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool):
        self.stats["renders"] += 1
        return self.chat_template.render_parts(msgs, tools, add_generation_prompt, **self._template_kwargs)

    def _cached_prompt(self, msgs: list[dict], tools: list[dict] | None, parts: bool):
        """The generation-prompt render of `msgs` (as text, or as render_parts), cached by content.

        The n teacher samples of one prompt share their prompt; keying on the JSON of
        the messages costs far less than a sandboxed jinja render.
        """
        key = json.dumps([msgs, tools, parts], ensure_ascii=False, separators=(",", ":"))
        if key in self._render_cache:
            self.stats["prompt_render_cache_hits"] += 1
            return self._render_cache[key]
        out = self._render_parts(msgs, tools, True) if parts else self.render(msgs, tools, True)
        put_bounded(self._render_cache, key, out, self.PROMPT_CACHE_SIZE)
        return out

    def _prefix_renders(self, data: list[dict], tools: list[dict] | None, first: int):
        """Two functions for this conversation: j -> render(data[:j]) with the generation
        prompt, and without. Derived from the marked render of the whole conversation when
        the template is append-only (orchestrator/template.py, docs/reconstruction.md
        "Prefix renders"); else each call renders that prefix. The derived functions are
        only called with j >= first >= 1."""
        if self.chat_template.append_only and first >= 1 and self._derive_prefixes:
            derived = self._derived_prefixes(data, tools, first)
            if derived is not None:
                self.stats["prefix_renders_derived"] += 1
                return derived
            self.stats["prefix_renders_not_derived"] += 1
        return (lambda j: self._cached_prompt(data[:j], tools, parts=False)), (
            lambda j: self.render(data[:j], tools, False)
        )

    def _derived_prefixes(self, data: list[dict], tools: list[dict] | None, first: int):
        """The marked render of the whole conversation gives the text before the loop, each
        message's text and after(False); after(True) comes from the marked render of the
        first prompt, which must agree with it on what they share. When after() is
        constant (template.after_is_constant) after(True) is learnt once and the prompt is
        rendered again only every CROSS_CHECK_EVERY conversations, as a check."""
        known = self._after_prompt if self.chat_template.after_is_constant else None
        check = known is None or self.stats["prefix_renders_derived"] % self.CROSS_CHECK_EVERY == 0
        try:
            full = self._render_parts(data, tools, False)
            prompt = self._cached_prompt(data[:first], tools, parts=True) if check and full is not None else None
        except Exception:  # noqa: BLE001 - the per-prefix path reports it with its message index
            return None
        if full is None or (check and prompt is None):
            return None  # a message holds the marker character: render each prefix
        if check:
            if prompt[0] != full[0] or prompt[1] != full[1][:first]:
                return None
            if known is not None and prompt[2] != known:  # cannot happen if the proof holds
                self._derive_prefixes = False
                self.stats["prefix_cross_check_failed"] += 1
                print(
                    "warning: the student's chat template rendered a different generation prompt than before; "
                    "reconstruction now renders every prefix (please report this template)",
                    file=sys.stderr,
                )
                return None
            if self.chat_template.after_is_constant:
                self._after_prompt = prompt[2]
        after_prompt = prompt[2] if check else known
        head = full[0]
        ends = [len(head)]
        for body in full[1]:
            ends.append(ends[-1] + len(body))
        head += "".join(full[1])
        after_full = full[2]
        return (lambda j: head[: ends[j]] + after_prompt), (lambda j: head[: ends[j]] + after_full)
