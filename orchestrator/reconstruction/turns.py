"""Where each trained turn is in the template's text, checked against the teacher's.

Part of `Reconstructor` (reconstructor.py sets the state used here). For each trained turn k it cuts
F_k[len(P_k):] into context and trained text, checks it ends with an end-of-turn token (end_of_turn.py)
and holds the teacher's content verbatim (a sentinel render shows where the template puts it), and that
tool calls and template reasoning were rendered. A generation prompt that opens a reasoning block the
history drops is handled by orchestrator/open_reasoning.py.
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from orchestrator.open_reasoning import (
    OPEN,
    THINK_FORM,
    inside_opened_block,
    leading_block,
    leading_empty_block,
    opened_turn,
    trailing_opening,
)
from orchestrator.reconstruction.dropped_blocks import DroppedBlocks, inline_block
from orchestrator.reconstruction.end_of_turn import SENTINEL
from orchestrator.reconstruction.messages import Msg, without_reasoning_fields
from orchestrator.reconstruction.reasons import Reject
from orchestrator.reconstruction.rendered_checks import RenderedChecks
from orchestrator.reconstruction.thinking_blocks import PROMPT_END, ThinkingBlocks
from orchestrator.system_merge import hint_for_mismatch, hint_for_template_error
from orchestrator.tool_args import ToolCallShape

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.core.config import Reconstruction


def sentinel_for(msg: dict) -> str:
    """SENTINEL, or a variant that occurs nowhere in `msg` (its reasoning, say, could hold it)."""
    text, k = json.dumps(msg, ensure_ascii=False, default=str), 0
    while (s := SENTINEL[:-1] + (str(k) if k else "") + SENTINEL[-1]) in text:
        k += 1
    return s


@dataclass(slots=True)
class Turn:
    """One trained turn, located in F (the render of the history through the turn)."""

    full: str  # F_k
    start: int  # first trained character in F_k (everything before is context)
    eot_start: int  # where the end-of-turn token starts in F_k
    end: int  # just after the end-of-turn token in F_k
    has_tool_calls: bool
    role: str
    shared: int = 0  # F_k[:shared] is the conversation's `head` [:shared] (prefixes.py; 0: unknown)


class TurnLocator(DroppedBlocks, RenderedChecks, ThinkingBlocks):
    """Finds and checks trained turns in renders (a mixin of Reconstructor)."""

    # Set by Reconstructor.__init__:
    tokenizer: Any
    cfg: Reconstruction
    stats: collections.Counter
    eot: str  # the template's end-of-turn token
    final_tail: str  # the constant text the template puts after the last end-of-turn token
    eot_spaces: str  # spaces the template puts between a turn's content and its end token (Llama 2's " ")
    eot_closing: str  # special tokens after the end token in every turn, through the eos (end_of_turn.py)
    tool_shape: ToolCallShape
    _added_tokens: list[str]  # added tokens' text, longest first
    probe_tools: list[dict] | None  # end_of_turn.EndOfTurn: PROBE_TOOLS if the template needs tools
    _assistant_leads: list[tuple[str, str]]  # (lead, tail) around assistant content, from sentinel renders
    # From the other parts:
    render: Callable[..., str]  # prefixes.PrefixRenders.render

    def _template_error(self, e: Exception, where: str, data: list[dict], tools, empty=None) -> Reject:
        """The template_error for the template raising `e` while rendering `data` (`where`), with the fix
        where one is known (system_merge.hint_for_template_error; `empty`: messages[0]'s prompt render, when
        that turn is the one rendered)."""
        toolless = not tools and self.probe_tools is not None  # a template for conversations with tools
        hint = hint_for_template_error(str(e), data, self.cfg.system_prompt, empty, toolless)
        return Reject("template_error", f"{where}: {type(e).__name__}: {e}{hint}")

    def _locate_turn(self, msgs: list[Msg], data: list[dict], a: int, tools, renders) -> Turn:
        m = msgs[a]
        try:
            full, known, base, blen, ok = self._turn_renders(m, a, renders)
        except Exception as e:  # noqa: BLE001 - a template raising is data-dependent
            empty = None if a else (lambda: self.render([], tools, True))  # messages[0]'s prompt
            raise self._template_error(e, f"rendering up to messages[{a}]", data, tools, empty) from None
        opening = None  # what the template writes between the header and the content, when known here
        if not ok:
            if m.role == "assistant":
                rebuilt = self._after_rewritten_history(data, a, tools, base, full)
                if rebuilt is None:
                    return self._after_opening(msgs, data, a, tools, base)
                (full, opening), known = rebuilt, 0  # starts with base
            else:
                raise Reject(
                    "template_mismatch",
                    f"messages[{a}]: the template's render of the history before it is "
                    f"not a prefix of its rendering of the turn (ends {base[-40:]!r})",
                )
        # From here on full starts with the render before the turn: it is full[:blen].
        eot = self._turn_end_token(full, blen, a)
        end = len(full) - len(self.final_tail)
        eot_start = end - len(eot)
        start = blen
        at = len(m.placed_prefix)  # where the content starts in seg = full[start:eot_start]
        seg = None  # cut only when needed: the usual turn is checked in place
        calls = m.data.get("tool_calls", ())
        if m.role == "assistant" and opening is None and not calls and inside_opened_block(full, start, eot_start):
            return self._opened_turn(data, a, tools, full[:start], m)
        if m.role != "assistant" or not full.startswith(m.placed_prefix + m.content, start, eot_start):
            known_lead = m.role == "assistant" and opening is None and not calls and not m.reasoning
            if known_lead and self._known_lead(m, full, start, eot_start):
                return self._assistant_turn(Turn(full, start, eot_start, end, False, m.role, known), m, a)
            if m.placed_prefix and opening is None and self.dropped_reasoning(data, a, tools, full, m.content):
                return self._after_reasoning(msgs, data, a, tools, renders)
            inline = inline_block(m, self.cfg.reasoning) if opening is None else None
            if inline is not None and self.dropped_reasoning(data, a, tools, full, inline.content):
                return self._after_reasoning([*msgs[:a], inline, *msgs[a + 1 :]], data, a, tools, renders)
            # Where does the template put the content? Render the turn with a sentinel
            # in its place and compare: no searching in the real text.
            seg = full[start:eot_start]
            lead = (
                opening + m.placed_prefix
                if opening is not None
                else self._lead(data, a, tools, full[:blen] if base is None else base, seg, m, eot)
            )
            at = len(lead)
            if m.role != "assistant":
                start += len(lead)  # the header before a non-assistant turn is context
        if calls or m.reasoning:
            self._check_rendered(m, full[blen:eot_start] if seg is None else seg, a, calls, at)
            self._check_short_reasoning(data, a, tools, m)
        if calls:
            self._check_every_call(data, a, tools)
        if m.role == "assistant":
            return self._assistant_turn(Turn(full, start, eot_start, end, bool(calls), m.role, known), m, a)
        return Turn(full, start, eot_start, end, bool(calls), m.role, known)

    def _assistant_turn(self, turn: Turn, m: Msg, a: int) -> Turn:
        """A located assistant turn, checked for a second thinking block (thinking_blocks.py); the template's own
        empty block before think_tags' cut (the block holding the reasoning takes its place)."""
        self._check_no_second_block(turn.full, turn.start, a)
        if n := self._own_empty_block(turn.full, turn.start, turn.eot_start, a, m):
            at = turn.start
            full = turn.full[:at] + turn.full[at + n :]
            return replace(turn, full=full, eot_start=turn.eot_start - n, end=turn.end - n, shared=min(turn.shared, at))
        return turn

    def _after_reasoning(self, msgs: list[Msg], data: list[dict], a: int, tools, renders) -> Turn:
        """Turn a, whose think_tags block the template drops (`dropped_reasoning`: its render is the
        turn's with the content alone), located and checked as that turn, then the block written at its
        start: right after the generation prompt, where the student writes its reasoning."""
        m = msgs[a]
        bare = replace(m, data=dict(m.data, content=m.content), placed_prefix="", reasoning="")
        turn = self._locate_turn([*msgs[:a], bare], [*data[:a], bare.data], a, tools, renders)
        n, at = len(m.placed_prefix), turn.start
        if opening := trailing_opening(turn.full[:at]):
            return self._inside_opened_block(turn, m, opening, a)
        if (found := leading_empty_block(turn.full[at : at + PROMPT_END], self._block_tags)) is not None:
            if self._form_empty_block != found[0]:
                raise self._two_blocks(a, found, m.placed_prefix[:30])
            return self._inside_opened_block(turn, m, "", a)  # the template's own empty block, in the form: filled
        full = turn.full[:at] + m.placed_prefix + turn.full[at:]
        self._check_no_second_block(full, at, a)
        return replace(turn, full=full, eot_start=turn.eot_start + n, end=turn.end + n, shared=min(turn.shared, at))

    @staticmethod
    def _turn_renders(m: Msg, a: int, renders) -> tuple[str, int, str | None, int, bool]:
        """F (the render through turn a), how long a start of F is the conversation's
        head (prefixes.py; 0: unknown), P (the render before the turn: the prompt for an
        assistant turn), len(P), and whether F starts with P. Both renders start with
        head[:c] when cut from it, so only what follows is compared; and when P is
        head[:c] + the prompt's tail, F starts with P iff F has that tail at c, so P,
        then F[:len(P)], is not built (None). The tail: a text, or j -> text (or None)."""
        prompt, full_render, shared, tail = renders
        full = full_render(a + 1)
        known = shared(a + 1)
        if m.role == "assistant":
            c = shared(a)
            if callable(tail) and c is not None:  # the prompt's tail differs per prefix (prefixes.py)
                tail = tail(a)
            if tail is not None and c is not None and known is not None and c <= known:
                if full.startswith(tail, c):
                    return full, known, None, c + len(tail), True
                return full, known, full[:c] + tail, c + len(tail), False
            base = prompt(a)
        else:
            base = full_render(a) if a else ""
            c = shared(a) if a else None
        k = min(known, c) if base and known is not None and c is not None else 0
        return full, known or 0, base, len(base), full.startswith(base[k:] if k else base, k)

    @functools.cached_property
    def turn_opening(self) -> str | None:
        """What the template writes between the generation header and an assistant turn's content in
        the simplest conversation (Qwen3 "<think>\\n\\n</think>\\n\\n", gpt-oss "<|channel|>final<|message|>",
        most templates ""), or None when that conversation does not show it."""
        if self._simplest is None:  # no opening known: only turns right after their header are proven
            return None
        prompt, turn = self._simplest
        i = turn.find(SENTINEL)
        return turn[len(prompt) : i] if i >= len(prompt) and turn.startswith(prompt) else None

    def _after_rewritten_history(self, data: list[dict], a: int, tools, base: str, full: str) -> tuple[str, str] | None:
        """The prompt plus the turn, for a template that renders the history one way when it ends the prompt
        and another when a turn follows (Hermes 3's tool_use: `loop.last`; Mistral-Nemo's and v0.3's write the
        system prompt only with the last user message). The prompt `base` is what the student sees; the turn is
        what the template renders after its generation header, proven from renders, never by searching: `base`
        is the history's render plus a header (none: the special token `base` ends with, Mistral's `[/INST]`),
        and a render of the turn with a sentinel as its content has that header right before the sentinel (or
        before the template's own `turn_opening`, then the sentinel: Qwen3's empty thinking block, gpt-oss's
        final channel; with no header, only so) and is `full` with the content in the sentinel's place.
        (base + the turn, the opening), or None when that does not hold."""
        content = data[a].get("content")
        if not isinstance(content, str):
            return None
        sentinel = sentinel_for(data[a])
        try:
            history = self.render(data[:a], tools, False)
            probe = self.render(data[:a] + [dict(data[a], content=sentinel)], tools, False)
        except Exception:  # noqa: BLE001 - not provable this way
            return None
        header, i = base[len(history) :], probe.find(sentinel)
        generated = bool(header)  # else no generation prompt (Mistral's): the turn follows the prompt's last token
        if not generated:
            header = next((t for t in self._added_tokens if base.endswith(t)), "")
        leads = ("", self.turn_opening) if generated else (self.turn_opening,)
        lead = next((x for x in leads if x is not None and probe.endswith(header + x, 0, i)), None)
        if lead is None and i >= 0 and generated:
            lead = self._after_dropped_block(data, a, tools, header, probe, len(history), i, sentinel)
        if not (header and base.startswith(history) and i >= 0 and probe.count(sentinel) == 1 and lead is not None):
            return None
        if probe[:i] + content + probe[i + len(sentinel) :] != full:
            if content != content.strip() and probe[:i] + content.strip() + probe[i + len(sentinel) :] == full:
                raise _trims(a, "assistant", content)
            return None
        self.stats["rewritten_history_turns"] += 1
        return base + full[i - len(lead) :], lead

    def _after_opening(self, msgs: list[Msg], data: list[dict], a: int, tools, base: str) -> Turn:
        """Assistant turn a, whose render does not start with the generation prompt `base`: the template's render
        with an empty reasoning field where that proves it (`_with_empty_reasoning`), else `_opened_turn`."""
        opened = self._with_empty_reasoning(msgs, data, a, tools, base)
        if opened is None and msgs[a].data.get("tool_calls"):
            opened = self._call_after_closing(msgs, data, a, tools, base)
            if opened is None:
                opened = self._call_in_opened_block(msgs, data, a, tools, base)
        return opened if opened is not None else self._opened_turn(data, a, tools, base, msgs[a])

    def _opened_turn(self, data: list[dict], a: int, tools, base: str, m: Msg) -> Turn:
        """The turn after a generation prompt that opens a block the history render
        drops (DeepSeek-R1-Distill's "<think>\n"), proven by orchestrator/open_reasoning.py."""
        if m.data.get("tool_calls"):
            self._opened_call(a, base, m)
        if m.reasoning and self.cfg.reasoning_form not in (None, THINK_FORM):
            raise Reject(
                "template_mismatch",
                f"messages[{a}]: the generation prompt (ends {base[-30:]!r}) is not the turn's header alone: it "
                "opens the template's own thinking block (DeepSeek-R1's \"<think>\\n\"), or closes an empty one "
                "(thinking off: Gemma 4's empty thought channel), so no render shows the reasoning in reasoning_form "
                'after it. Fix: with thinking off, set reasoning = "drop" or turn thinking on in '
                "chat_template_kwargs; for a prompt that opens the block, remove reasoning_form",
            )

        def render_with(content: str) -> str:
            return self.render(data[:a] + [dict(without_reasoning_fields(data[a]), content=content)], tools, False)

        content, form = m.content, self.cfg.reasoning_form
        if self.cfg.reasoning == "think_tags" and form and form.startswith(OPEN) and not m.reasoning:
            if not leading_block(content):  # the form's empty block, laid out as in a turn with reasoning
                content = form.replace("{reasoning}", "") + content
        try:
            end = self.eot + self.eot_closing
            text = opened_turn(render_with, base, content, m.reasoning, end, self.final_tail, self.eot_spaces)
        except ValueError as e:
            try:
                hint = hint_for_mismatch(base, render_with(m.content), data, self.cfg.system_prompt)
            except Exception:  # noqa: BLE001 - only a hint
                hint = ""
            raise Reject("template_mismatch", f"messages[{a}]: {e}{hint}") from None
        except Exception as e:  # noqa: BLE001 - a template raising is data-dependent
            raise Reject("template_error", f"rendering messages[{a}]: {type(e).__name__}: {e}") from None
        self.stats["opened_reasoning_turns"] += 1
        full = base + text
        return Turn(full, len(base), len(full) - len(self.eot + self.eot_closing), len(full), False, m.role)

    def _turn_end_token(self, full: str, base_len: int, a: int) -> str:
        """The text that ends this turn, right before the template's constant final text: the
        template's usual end-of-turn token, or another special token in its place (Llama 3.1
        ends tool-call turns with <|eom_id|>), then the closing tokens (end_of_turn.py)."""
        tail, closing = self.final_tail, self.eot_closing
        if full.endswith(tail):
            n = len(full) - len(tail)  # the body before the tail, compared in place (no copy)
            usual = self.eot + closing
            if full.endswith(usual, 0, n) and n - len(usual) >= base_len:
                return usual  # the usual case, without walking the added tokens
            for tok in self._added_tokens:
                other = tok + closing
                if full.endswith(other, 0, n) and n - len(other) >= base_len:
                    if tok != self.eot:
                        self.stats["other_end_token"] += 1
                    return other
        raise Reject(
            "missing_end_token",
            f"messages[{a}]: the rendered turn does not end with a special token "
            f"such as {self.eot!r} followed by {closing + tail!r} (ends {full[-40:]!r})",
        )

    def _lead(self, data: list[dict], a: int, tools, base: str, seg: str, m: Msg, eot: str) -> str:
        sentinel = sentinel_for(data[a])
        probe = dict(data[a], content=m.placed_prefix + sentinel)
        try:
            full_s = self.render(data[:a] + [probe], tools, False)
        except Exception as e:  # noqa: BLE001
            raise Reject("template_error", f"rendering messages[{a}]: {type(e).__name__}: {e}") from None
        end_s = len(full_s) - len(eot + self.final_tail)
        ok = full_s.startswith(base) and full_s.endswith(eot + self.final_tail) and end_s >= len(base)
        seg_s = full_s[len(base) : end_s] if ok else ""
        i = seg_s.find(sentinel)
        if i < 0 or seg_s[:i] + m.content + seg_s[i + len(sentinel) :] != seg:
            if i >= 0 and seg_s[:i] + m.content.strip() + seg_s[i + len(sentinel) :] == seg:
                raise _trims(a, m.role, m.content)
            raise _alters(a, m, self.cfg.reasoning, closed=self._closes_empty_block(base))
        lead, tail = seg_s[:i], seg_s[i + len(sentinel) :]
        if m.role == "assistant" and lead.endswith(m.placed_prefix) and len(self._assistant_leads) < 4:
            pair = (lead[: len(lead) - len(m.placed_prefix)], tail)
            if pair not in self._assistant_leads:
                self._assistant_leads.append(pair)
        return lead

    def _known_lead(self, m: Msg, full: str, start: int, end: int) -> bool:
        """Whether an assistant turn's segment full[start:end] is, character for character,
        lead + content + tail for a (lead, tail) that a sentinel render (`_lead`) found the
        template writing around an earlier assistant turn's content (Mistral's ' ' before
        it): the content is then rendered verbatim, which is all the sentinel render would
        prove here, and the render per turn is saved. Only for turns without tool calls or
        reasoning, where nothing else is located by the content's place; the trained text
        is the turn's render from `start` either way. Or the content starts inside the block
        the prompt opens, verbatim (`_continues_opening`: OLMo 3 Think)."""
        body = m.placed_prefix + m.content
        for lead, tail in self._assistant_leads:
            if (
                len(lead) + len(body) + len(tail) == end - start
                and full.startswith(lead, start)
                and full.startswith(body, start + len(lead))
                and full.endswith(tail, 0, end)
            ):
                self.stats["turn_leads_known"] += 1
                return True
        return self._continues_opening(m, full, start, end)


def _trims(a: int, role: str, content: str) -> Reject:
    return Reject(
        "template_alters_content",
        f"messages[{a}] ({role}): the template trims whitespace from the content (Llama 3's and Gemma's `| trim`, "
        'SmolLM3\'s `.lstrip("\\n")`), so the student would learn different text. Fix: set content_whitespace = '
        f'"strip" in [orchestrator.reconstruction] to train the content as the template writes it (content starts '
        f"{content[:30]!r})",
    )


def _alters(a: int, m: Msg, policy: str, closed: bool = False) -> Reject:
    """template_alters_content; for content that starts with the teacher's thinking block, the switch that
    trains it: kept in the content under `template` where the template places no reasoning field, and under
    `think_tags` where the template neither renders it as written nor strips exactly it; `drop` or thinking on
    where the generation prompt closes an empty block (`closed`: thinking off), whatever the policy."""
    where = f"messages[{a}] ({m.role}): the template does not render the content verbatim"
    starts = f"(content starts {m.content[:30]!r})"
    if m.role != "assistant" or leading_block(m.content) is None:
        return Reject("template_alters_content", f"{where} {starts}")
    if closed:  # the generation prompt ends with an empty block: no second one after it
        return Reject(
            "template_alters_content",
            f"{where}: it starts with the teacher's thinking block {starts}, and the generation prompt already "
            'closes an empty one (thinking off). Fix: set reasoning = "drop" to train the answer alone, or turn '
            "thinking on in orchestrator.reconstruction.chat_template_kwargs (e.g. enable_thinking = true)",
        )
    if policy == "think_tags":
        fix = 'reasoning = "template" where the template places reasoning itself (Qwen3)'
    else:
        fix = (
            'reasoning = "think_tags" to train the block where the student writes it, after the turn\'s header, '
            "where the template strips exactly that block (Nemotron Super v1.5)"
        )
    return Reject(
        "template_alters_content",
        f"{where}: it starts with the teacher's thinking block, which this template does not render as written "
        f'{starts}. Fix: set {fix}, or "drop" to train the answer alone ([orchestrator.reconstruction] reasoning)',
    )
