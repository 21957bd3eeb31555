"""Thinking blocks around the generation prompt's end, for turns the reasoning policy gives a block of their own.

Part of `Reconstructor` (a base of turns.TurnLocator). Six cases, each docs/reconstruction.md's "Generation
prompts that open the thinking block":

- the prompt opens a block ("<think>\\n") that the template renders, in every turn, empty and closed before the
  content (EXAONE 4.0 with thinking on): the student writes the rest of that block holding its reasoning
  (`_inside_opened_block`);
- the prompt ends with an empty block, closed (thinking off): a turn that starts with a block of its own would
  teach a second block, and is rejected (`_check_no_second_block`); the same where the template writes its own
  empty block at the start of the turn (Kimi-K2-Thinking; or in place of think_tags' block, which it drops), unless
  think_tags' block, in that layout, fills it (`_own_empty_block`; open_reasoning.leading_empty_block);
- the prompt opens a block ("<think>") and the template writes the content verbatim, which starts with the
  teacher's own block (OLMo 3 Think): the render from the prompt's opening on (`_continues_opening`);
- the prompt opens a block ("<think>") that the template renders only for a turn with reasoning (GigaChat3.5 with
  reasoning on): a turn without reasoning is the template's own render of it with an empty reasoning field
  (`_with_empty_reasoning`);
- the prompt opens a block ("<think>") where the template renders a tool-call turn as the header, "</think>" and
  the calls (DeepSeek-V3.1 with thinking on): the reasoning, then that turn (`_call_after_closing`);
- the prompt opens a block ("<think>\\n") that the template writes for a tool-call turn only with reasoning, in the
  layout of reasoning_form, and renders the content verbatim (MiniMax-M2): the turn with the block, closed, at the
  start of its content (`_call_in_opened_block`).
"""

from __future__ import annotations

import collections
import functools
from dataclasses import replace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.open_reasoning import (
    CLOSE,
    OPEN,
    SENTINEL,
    THINK_FORM,
    block_tags,
    ends_with_empty_block,
    leading_empty_block,
    trailing_opening,
)
from orchestrator.reconstruction.messages import Msg, without_reasoning_fields
from orchestrator.reconstruction.reasons import Reject

#: how much of a generation prompt's end is read for the thinking block it may open or close
PROMPT_END = 256

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.core.config import Reconstruction


class ThinkingBlocks:
    """The block placement checks of assistant turns (a mixin of TurnLocator; turns are turns.Turn)."""

    # Set by Reconstructor.__init__:
    cfg: Reconstruction
    stats: collections.Counter
    places_reasoning: bool  # the template renders an assistant turn's reasoning_content (open_reasoning.py)
    tool_shape: Any  # tool_args.ToolCallShape
    # From the other parts:
    render: Callable[..., str]  # prefixes.PrefixRenders.render
    _locate_turn: Callable[..., Any]  # turns.TurnLocator._locate_turn
    _simplest: tuple[str, str] | None  # dropped_blocks.DroppedBlocks._simplest

    def _continues_opening(self, m: Msg, full: str, start: int, end: int) -> bool:
        """Whether the turn's render full[start:end], after a generation prompt full[:start] that opens a block
        ("<think>": OLMo 3 Think), is the content verbatim from that opening on: the content starts with the
        teacher's own block, kept as written (a template placing no reasoning field), and the template writes
        the content as it is, so the prompt's opening is the content's. The cut is the template's own render."""
        opening = trailing_opening(full[max(0, start - PROMPT_END) : start])
        content = m.content
        if not (opening and content.startswith(opening) and end - start == len(content) - len(opening)):
            return False
        if not full.startswith(content, start - len(opening)):
            return False
        self.stats["turns_continuing_opening"] += 1
        return True

    def _with_empty_reasoning(self, msgs: list[Msg], data: list[dict], a: int, tools, prompt: str) -> Any:
        """Turn a without reasoning after a generation prompt that opens a thinking block (`prompt` ends
        "<think>": GigaChat3.5 with reasoning on) which the template renders only for a turn with reasoning: the
        turn as the template renders it with an empty reasoning field - its own empty block, then the content
        (or calls) - located and checked as any turn (its rejections are this turn's), where the prompt is a
        prefix of that render. Only where the template places reasoning and the policy gives the turn none of
        its own ("template" without reasoning, "drop"). None where that does not hold: the caller's other
        proofs apply."""
        m = msgs[a]
        if not (self.places_reasoning and self.cfg.reasoning != "think_tags" and not m.reasoning):
            return None
        if "reasoning_content" in data[a] or not trailing_opening(prompt[-PROMPT_END:]):
            return None
        turn_data = dict(data[a], reasoning_content="", thinking="")  # both names, as messages.py places them
        changed = [*data[:a], turn_data]
        try:
            full = self.render(changed, tools, False)
        except Exception:  # noqa: BLE001 - not provable this way
            return None
        if not full.startswith(prompt):
            return None
        # the prompt is still the render before turn a (data[:a] is unchanged)
        return self._locate_in(msgs, changed, a, tools, replace(m, data=turn_data), prompt, full)

    def _call_after_closing(self, msgs: list[Msg], data: list[dict], a: int, tools, prompt: str) -> Any:
        """Tool-call turn a after a generation prompt that opens a block ("<think>": DeepSeek-V3.1 with thinking
        on) where the template renders the turn as the prompt's header, a closing tag and the calls (the fifth
        shape, open_reasoning.py): the turn located and checked after header + closing tag, as the history renders
        it, then the opening's continuation - the reasoning, if any - written before that tag. None where the
        renders are not that shape."""
        if not self._closes_after_header:
            return None
        m, head = msgs[a], self._opened_head(prompt)
        custom = m.reasoning and self.cfg.reasoning_form not in (None, THINK_FORM)  # no render shows that form here
        if head is None or CLOSE in m.content or CLOSE in m.reasoning or custom:
            return None
        content = data[a].get("content")
        if m.placed_prefix and isinstance(content, str):  # think_tags: the block goes where the student writes it
            content = content[len(m.placed_prefix) :] or (None if self.tool_shape.null_content else "")
        changed, full = self._without_reasoning(data, a, tools, content)
        if full is None or not (full.startswith(head) and full.startswith(CLOSE, len(head))):
            return None
        bare_m = replace(m, data=changed[a], placed_prefix="", reasoning="")
        turn = self._locate_in(msgs, changed, a, tools, bare_m, head + CLOSE, full)  # after the prompt as history
        text = prompt[len(head) :] + m.reasoning  # the opening, then the reasoning
        self.stats["opened_reasoning_turns"] += 1
        n = len(text)
        return replace(
            turn,
            full=head + text + full[len(head) :],
            start=len(prompt),
            eot_start=turn.eot_start + n,
            end=turn.end + n,
            shared=min(turn.shared, len(head)),
        )

    def _call_in_opened_block(self, msgs: list[Msg], data: list[dict], a: int, tools, prompt: str) -> Any:
        """Tool-call turn a after a generation prompt that opens a "<think>" block (the first shape, open_reasoning.py)
        which the template writes for the turn only with reasoning (MiniMax-M2 without reasoning, or with "drop"):
        the turn rendered with content C = the block, closed, in reasoning_form (THINK_FORM by default; holding the
        reasoning, or none), then the content. Where that render starts with the prompt - the template writes such
        content verbatim after the turn's header - and the template lays out a call turn's reasoning field exactly
        as that form before the content (`_lays_out_as_form`), the turn is located and checked after the prompt as
        any turn: the rest of the block, the content, the calls, the end token. None where not, and for a template
        that places no reasoning field (probe_places_reasoning: no layout to compare; no render paid)."""
        m, opening = msgs[a], trailing_opening(prompt[-PROMPT_END:])
        c = self._form.replace("{reasoning}", m.reasoning) + m.content
        if (
            not self.places_reasoning
            or m.placed_prefix
            or CLOSE in m.content
            or CLOSE in m.reasoning
            or not opening
            or not c.startswith(opening)
        ):
            return None
        changed, full = self._without_reasoning(data, a, tools, c)
        if (
            full is None
            or not full.startswith(prompt)
            or not self._lays_out_as_form(data, a, tools, self._form, m.content)
        ):
            return None
        lead = c[len(opening) : len(c) - len(m.content)]  # the rest of the block, before the content
        self.stats["opened_reasoning_turns"] += 1
        return self._locate_in(msgs, changed, a, tools, replace(m, data=changed[a], placed_prefix=lead), prompt, full)

    def _lays_out_as_form(self, data: list[dict], a: int, tools, form: str, content: str) -> bool:
        """Whether the template renders call turn a with a reasoning field exactly as with that reasoning in `form`
        before the content (MiniMax-M2 does; GigaChat3.5 writes a blank line before calls after a non-empty
        content, so the block in the content would not be its own layout)."""
        _, as_form = self._without_reasoning(data, a, tools, form.replace("{reasoning}", SENTINEL) + content)
        field = [*data[:a], dict(data[a], reasoning_content=SENTINEL, thinking=SENTINEL)]  # both names (messages.py)
        try:
            return as_form is not None and as_form == self.render(field, tools, False)
        except Exception:  # noqa: BLE001 - not provable this way
            return False

    def _without_reasoning(self, data: list[dict], a: int, tools, content: Any) -> tuple[list[dict], str | None]:
        """The history through turn a with that turn's reasoning fields removed and its content `content`, and its
        render (None where the template raises: not provable this way; the caller's rejection names why)."""
        turn = without_reasoning_fields(data[a]) | {"content": content}
        changed = [*data[:a], turn]
        try:
            return changed, self.render(changed, tools, False)
        except Exception:  # noqa: BLE001 - see above
            return changed, None

    def _locate_in(self, msgs: list[Msg], changed: list[dict], a: int, tools, m: Msg, prompt: str, full: str) -> Any:
        """Turn a (message `m`, data `changed`) located in `full`, its render, after `prompt`, the render before
        it: both renders given, so no prefix is rendered again."""
        renders = ({a: prompt}.__getitem__, {a + 1: full}.__getitem__, lambda j: None, None)
        return self._locate_turn([*msgs[:a], m], changed, a, tools, renders)

    @staticmethod
    def _opened_head(prompt: str) -> str | None:
        """The generation prompt less the "<think>" it ends with (whitespace around it allowed), or None."""
        opening = trailing_opening(prompt[-PROMPT_END:])
        return prompt[: len(prompt) - len(opening)] if opening.strip() == OPEN else None

    def _opened_call(self, a: int, base: str, m: Msg) -> NoReturn:
        """The rejection of a tool-call turn after a generation prompt that is not the start of its render: one
        that opens a block (no render shows how the student goes on into the calls), or that closes an empty
        one while the turn has reasoning (thinking off), naming the fixes."""
        if m.reasoning and self._closes_empty_block(base):
            why = (
                "already closes the thinking block (thinking off: Qwen3's enable_thinking=false), but the turn has "
                'reasoning, which the template renders before its calls. Fix: set reasoning = "drop", or enable thinking'
            )
        elif trailing_opening(base[-PROMPT_END:]):
            why = "opens a reasoning block, and no render shows how the student continues from it into the tool call"
            if self.places_reasoning and self.cfg.reasoning == "think_tags":
                why += (
                    '. Fix: set reasoning = "template" or "drop": the template\'s own render of the turn with an '
                    "empty reasoning field then shows it"
                )
        else:
            why = (
                "is not the start of the template's render of this tool-call turn (the history renders otherwise "
                "once the turn follows), and no render shows how the student continues from it into the tool call"
            )
        raise Reject("template_mismatch", f"messages[{a}]: the generation prompt (ends {base[-30:]!r}) {why}")

    def _inside_opened_block(self, turn: Any, m: Msg, opening: str, a: int) -> Any:
        """The bare `turn` (content alone) after a generation prompt that opens a thinking block (EXAONE 4.0 with
        thinking on: "<think>\\n"), for a template that drops our block (`dropped_reasoning`) and renders its
        own, empty, in its place: the bare turn is the rest of that empty block, then the content. When that
        empty block is the reasoning form with no reasoning, the student continues from the opening with the
        form holding the reasoning: the rest of the filled block, then the content. Else template_mismatch."""
        empty, block = self._form_empty_block, self._form.replace("{reasoning}", m.reasoning)
        at, rest = turn.start, empty[len(opening) :]
        if not (empty.startswith(opening) and turn.full.startswith(rest + m.content, at)):
            raise Reject(
                "template_mismatch",
                f"messages[{a}]: the generation prompt opens a thinking block ({opening!r}), and the template "
                f"renders the turn without the reasoning and not as the rest of an empty block in reasoning_form "
                f"({empty!r}) before the content: nothing proves where the student writes the reasoning after it",
            )
        full = turn.full[:at] + block[len(opening) :] + turn.full[at + len(rest) :]
        n = len(block) - len(empty)
        return replace(turn, full=full, eot_start=turn.eot_start + n, end=turn.end + n, shared=min(turn.shared, at))

    def _check_no_second_block(self, full: str, start: int, a: int) -> None:
        """A trained turn (full[start:]) that starts with a thinking block right after a generation prompt
        (full[:start]) that ends with an empty one, closed - thinking off - would teach the student to write a
        second block where it answers: rejected, naming the switches."""
        head = full[start : start + 64].lstrip()
        opened = [tags for tags in self._block_tags if head.startswith(tags[0])]
        if opened and self._closes_empty_block(full[max(0, start - PROMPT_END) : start], opened):
            raise Reject(
                "template_mismatch",
                f"messages[{a}]: the generation prompt ends with an empty thinking block, closed "
                f"({full[max(0, start - 30) : start]!r}: thinking is off, as with SmolLM3's /no_think or "
                "Qwen3's enable_thinking=false), and the trained turn starts with a thinking block of its "
                f"own ({head[:30]!r}): the student would learn to write a second block where it answers. "
                'Fix: set reasoning = "drop" to train the answer alone, or turn thinking on in '
                "orchestrator.reconstruction.chat_template_kwargs (e.g. enable_thinking = true) to train the "
                "reasoning",
            )

    def _own_empty_block(self, full: str, start: int, eot_start: int, a: int, m: Msg) -> int:
        """A trained turn (full[start:eot_start]) that starts with the template's own empty thinking block and
        then a second block (Kimi-K2-Thinking writes "<think></think>" before the content of every finished turn
        but the agentic loop's last ones; the teacher's block inside the content, or think_tags', follows it).
        Where that empty block is reasoning_form's with no reasoning and the second block is the one think_tags
        placed, the student writes the block holding its reasoning in the empty one's place: returns the empty
        block's length, to cut (0: no such block). Else rejected: the student would learn to write two blocks."""
        head = full[start : min(eot_start, start + PROMPT_END)]
        found = leading_empty_block(head, self._block_tags)
        if found is None or not any(head.startswith(o, len(found[0])) for o, _ in self._block_tags):
            return 0
        empty = found[0]
        placed = self.cfg.reasoning == "think_tags" and m.placed_prefix and head.startswith(m.placed_prefix, len(empty))
        if placed and self._form_empty_block == empty:
            self.stats["filled_empty_blocks"] += 1
            return len(empty)
        raise self._two_blocks(a, found, head[len(empty) : len(empty) + 30])

    @staticmethod
    def _two_blocks(a: int, found: tuple[str, str], second: str) -> Reject:
        """The rejection of a trained turn that would hold the template's own empty block and a second one;
        `found`: that block and its opening tag (open_reasoning.leading_empty_block)."""
        empty, opening = found
        hint = opening + "{reasoning}" + empty[len(opening) :]
        return Reject(
            "template_mismatch",
            f"messages[{a}]: the template writes its own empty thinking block ({empty!r}) at the start of the turn, "
            f"and a second block comes with it ({second!r}: the teacher's block inside the content, or the one "
            'reasoning = "think_tags" placed in another layout): the student would learn to write two blocks. Fix: '
            f'set reasoning = "think_tags" with reasoning_form = {hint!r} (that empty block holding the reasoning) to '
            'train the reasoning in its place, or reasoning = "drop" to train the answer alone '
            "([orchestrator.reconstruction])",
        )

    def _closes_empty_block(self, prompt: str, tags: list[tuple[str, str]] | None = None) -> bool:
        """Whether the generation prompt ends with an empty thinking block, closed (thinking off), in one of
        `tags` (default: every block's). Only its last PROMPT_END characters are read."""
        end = prompt[-PROMPT_END:]
        return any(ends_with_empty_block(end, t) for t in (self._block_tags if tags is None else tags))

    @functools.cached_property
    def _closes_after_header(self) -> bool:
        """Whether the simplest conversation's generation prompt is a header + "<think>" and its turn renders as
        that header + "</think>" + the content (DeepSeek-V3.1, thinking on): only such templates are tried in
        `_call_after_closing`, so that others pay no render for it."""
        if self._simplest is None:
            return False
        prompt, turn = self._simplest
        head = self._opened_head(prompt)
        return head is not None and turn.startswith(head + CLOSE)

    @functools.cached_property
    def _block_tags(self) -> tuple[tuple[str, str], ...]:
        return block_tags(self.cfg.reasoning_form)

    @functools.cached_property
    def _form(self) -> str:
        """How the student writes its reasoning before the answer: reasoning_form, THINK_FORM when unset."""
        return self.cfg.reasoning_form or THINK_FORM

    @functools.cached_property
    def _form_empty_block(self) -> str:
        """reasoning_form's block holding no reasoning (THINK_FORM's by default): "<think>\\n\\n</think>\\n\\n"."""
        return self._form.replace("{reasoning}", "")
