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
from orchestrator.reconstruction.next_role import NextRole
from orchestrator.template import ChatTemplate


class PrefixRenders:
    """Renders through the student's chat template (a mixin of Reconstructor)."""

    #: With a constant after(True), the first prompt is still rendered for every this-many
    #: conversations and compared with the derivation.
    CROSS_CHECK_EVERY = 64
    #: Watched renders are no longer tried after this many conversations where none proved its prefixes.
    TRACKED_GIVE_UP = 32

    # Set by Reconstructor.__init__:
    PROMPT_CACHE_SIZE: int
    stats: collections.Counter
    chat_template: ChatTemplate
    _template_kwargs: dict[str, Any]
    _render_cache: dict[str, Any]  # messages JSON -> generation-prompt render (text or parts)
    _derive_prefixes: bool  # off only if a cross-check ever fails
    _after_prompt: str | None  # after(True), once learnt (constant-after templates)
    _tracked_afters: dict  # (g, namespace state) -> after(g), learnt (watched renders, constant after())
    _try_tracked: bool  # watched renders (template not append-only), until TRACKED_GIVE_UP
    next_role: NextRole | None  # next_role.py: the token that ends a turn where no message follows

    def render(self, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        """The template's text for `msgs` (plain JSON data, as normalize_messages makes it); for a
        template that ends an assistant turn at the next message's role token (next_role.py), a
        render that ends with an assistant turn ends with that token."""
        text = self._plain_render(msgs, tools, add_generation_prompt)
        return text if add_generation_prompt or not msgs else self._with_next_role(msgs[-1], text)

    def _plain_render(self, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        self.stats["renders"] += 1
        return self.chat_template.render(msgs, tools, add_generation_prompt, **self._template_kwargs)

    def _with_next_role(self, last: dict, text: str) -> str:
        """`text`, a render without the generation prompt whose last message is `last`, ended as render() ends it."""
        if self.next_role is None or last.get("role") != "assistant":
            return text
        return text + self.next_role.after(last)

    def _ending_turns(self, data: list[dict], renders: tuple) -> tuple:
        """_prefix_renders' functions, the renders without the prompt ended as render() ends them."""
        if self.next_role is None:
            return renders
        full = renders[1]
        return (renders[0], lambda j: self._with_next_role(data[j - 1] if j else {}, full(j)), *renders[2:])

    def _render_parts(self, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool):
        self.stats["renders"] += 1
        return self.chat_template.render_parts(msgs, tools, add_generation_prompt, **self._template_kwargs)

    def _cached_prompt(self, msgs: list[dict], tools: list[dict] | None, parts: bool | str):
        """The generation-prompt render of `msgs` (as text, or as render_parts), cached by content.

        The n teacher samples of one prompt share their prompt; keying on the JSON of
        the messages costs far less than a sandboxed jinja render.
        """
        key = json.dumps([msgs, tools, parts], ensure_ascii=False, separators=(",", ":"))
        if key in self._render_cache:
            self.stats["prompt_render_cache_hits"] += 1
            return self._render_cache[key]
        if parts == "tracked":
            self.stats["renders"] += 1
            out = self.chat_template.tracked.render(msgs, tools, True, **self._template_kwargs)
        else:
            out = self._render_parts(msgs, tools, True) if parts else self.render(msgs, tools, True)
        put_bounded(self._render_cache, key, out, self.PROMPT_CACHE_SIZE)
        return out

    def _prefix_renders(self, data: list[dict], tools: list[dict] | None, first: int):
        """Three functions for this conversation and a text: j -> render(data[:j]) with the
        generation prompt, and without; j -> c, where both renders of data[:j] start with
        head[:c] for one text `head` of this conversation (None: not known); and `tail`,
        where the first render is head[:c] + tail whenever c is known (None: never; or a
        function j -> tail, where it differs per prefix).
        Derived from the
        marked render of the whole conversation when the template is append-only
        (orchestrator/template.py, docs/reconstruction.md "Prefix renders"); else each
        call renders that prefix. The derived functions are only called with j >= first >= 1.
        The last two let a caller compare two renders after the start they are known to
        share (turns.py), which is the same test without reading that start twice."""
        if self.chat_template.append_only and first >= 1 and self._derive_prefixes:
            derived = self._derived_prefixes(data, tools, first)
            if derived is not None:
                self.stats["prefix_renders_derived"] += 1
                return self._ending_turns(data, derived)
            self.stats["prefix_renders_not_derived"] += 1
        direct = (
            (lambda j: self._cached_prompt(data[:j], tools, parts=False)),
            (lambda j: self._plain_render(data[:j], tools, False)),
            _nothing_shared,
            None,
        )
        if self.chat_template.tracked is not None and first >= 1 and self._try_tracked:
            tracked = self._tracked_prefixes(data, tools, first, direct)
            self.stats["prefix_renders_tracked" if tracked else "prefix_renders_not_tracked"] += 1
            if tracked is not None:
                return self._ending_turns(data, tracked)
            if (
                self.stats["prefix_renders_not_tracked"] >= self.TRACKED_GIVE_UP
                and not self.stats["prefix_renders_tracked"]
            ):
                self._try_tracked = False  # e.g. Qwen3's pre-pass reads every message: never proves anything
        return self._ending_turns(data, direct)

    def _tracked_prefixes(self, data: list[dict], tools: list[dict] | None, first: int, direct):
        """Prefixes proven by watched renders (orchestrator/template_tracked.py): the whole
        conversation's (g=False) and the first prompt's (g=True), which must agree on the
        text up to it; it gives after(True). Neither after() may read a message at or past
        `first`. A prefix the watched render does not prove is rendered (`direct`). When
        after() reads namespace attributes (template_prepass.py), it is kept per snapshot of
        them, (g, state) -> text, and a prefix in a state not seen yet is rendered watched
        (which shows its after()). When after() is constant (template.after_is_constant: it
        reads no message), after(g) is learnt once per state and the first prompt is rendered
        again only every CROSS_CHECK_EVERY conversations, as a check (as _derived_prefixes does)."""
        tracked = self.chat_template.tracked
        afters = self._tracked_afters if self.chat_template.after_is_constant else {}
        try:
            full = tracked.render(data, tools, False, **self._template_kwargs)
            self.stats["renders"] += 1
        except Exception:  # noqa: BLE001 - the per-prefix path reports it with its message index
            return None
        text = full.text_for(first, True) if full is not None else None
        if text is None or full.after_max >= first or (state := full.state_for(first)) is None:
            return None
        known = afters.get((True, state))
        if known is None or self.stats["prefix_renders_tracked"] % self.CROSS_CHECK_EVERY == 0:
            try:
                prompt = self._cached_prompt(data[:first], tools, parts="tracked")
            except Exception:  # noqa: BLE001 - as above
                return None
            if prompt is None or prompt.after_max >= first or prompt.text_for(prompt.n, True) != text:
                return None
            if prompt.end_state != state or (known is not None and prompt.after != known):
                self._cross_check_failed()  # cannot happen if the proof holds
                self._try_tracked = False
                return None
            known = prompt.after
        self._learn_after(afters, (True, state), known)
        if full.end_state is not None and not self._learn_after(afters, (False, full.end_state), full.after):
            return None
        return self._tracked_functions(data, tools, first, direct, full, afters, state)

    def _learn_after(self, afters: dict, key: tuple, after: str) -> bool:
        """Keep after(g) for a state; False (and watched renders off) if it differs from the one kept."""
        if afters.get(key, after) != after:
            self._cross_check_failed()  # cannot happen if the proof holds
            self._try_tracked = False
            return False
        put_bounded(afters, key, after, self.PROMPT_CACHE_SIZE)
        return True

    def _tracked_functions(self, data, tools, first: int, direct, full, afters: dict, state):
        """_prefix_renders' functions from a watched render (see _tracked_prefixes)."""
        head, after_prompt = full.head, afters[(True, state)]
        if full.states is None and full.lasts is None:  # after() reads no namespace: one after(g) for every prefix
            after_full = full.after

            def prompt_render(j: int) -> str:
                c = full.cut_for(j)
                return head[:c] + after_prompt if c is not None else direct[0](j)

            def full_render(j: int) -> str:
                c = full.cut_for(j)
                return head[:c] + after_full if c is not None else direct[1](j)

            return prompt_render, full_render, full.cut_for, after_prompt

        def render(j: int, g: bool) -> str:
            text = full.text_for(j, g)
            s = full.state_for(j) if text is not None else None
            after = afters.get((g, s)) if s is not None else None
            if after is not None:
                return text + after
            if full.states is None:  # after() reads no namespace: nothing to learn from a watched render
                return direct[0 if g else 1](j)
            try:  # a watched render may fail where the template does not (template_last.py): render it plainly
                parts = self._watched_prefix(data[:j], tools, g)
            except Exception:  # noqa: BLE001 - the direct render reports the template's own errors
                parts = None
            own = parts.text_for(parts.n, g) if parts is not None else None
            if own is None:
                return direct[0 if g else 1](j)
            if parts.after_max < first and parts.end_state is not None:
                self._learn_after(afters, (g, parts.end_state), parts.after)
            return own + parts.after

        def shared(j: int) -> int | None:  # the prompt's render is head[:c] + after_prompt only in `state`
            c = full.shared_cut(j)
            return c if c is not None and full.state_for(j) == state else None

        def tail(j: int) -> str | None:  # with last units: the last iteration's text as the last, then after(True)
            last = full.last_for(j, True)
            return None if last is None else last + after_prompt

        return (
            (lambda j: render(j, True)),
            (lambda j: render(j, False)),
            shared,
            (tail if full.lasts is not None else after_prompt),
        )

    def _watched_prefix(self, msgs: list[dict], tools: list[dict] | None, g: bool):
        if g:
            return self._cached_prompt(msgs, tools, parts="tracked")
        self.stats["renders"] += 1
        return self.chat_template.tracked.render(msgs, tools, False, **self._template_kwargs)

    def _cross_check_failed(self) -> None:
        self.stats["prefix_cross_check_failed"] += 1
        print(
            "warning: the student's chat template rendered a different generation prompt than before; "
            "reconstruction now renders every prefix (please report this template)",
            file=sys.stderr,
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
                self._cross_check_failed()
                self._derive_prefixes = False
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
        prompt_render, full_render = (
            (lambda j: head[: ends[j]] + after_prompt),
            (lambda j: head[: ends[j]] + after_full),
        )
        return prompt_render, full_render, ends.__getitem__, after_prompt


def _nothing_shared(j: int) -> None:
    return None
