"""Thinking blocks around the generation prompt's end, for turns the reasoning policy gives a block of their own.

Part of `Reconstructor` (a base of turns.TurnLocator). Two cases, each docs/reconstruction.md's "Generation
prompts that open the thinking block":

- the prompt opens a block ("<think>\\n") that the template renders, in every turn, empty and closed before the
  content (EXAONE 4.0 with thinking on): the student writes the rest of that block holding its reasoning
  (`_inside_opened_block`);
- the prompt ends with an empty block, closed (thinking off): a turn that starts with a block of its own would
  teach a second block, and is rejected (`_check_no_second_block`);
- the prompt opens a block ("<think>") that the template renders only for a turn with reasoning (GigaChat3.5 with
  reasoning on): a turn without reasoning is the template's own render of it with an empty reasoning field
  (`_with_empty_reasoning`).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.open_reasoning import THINK_FORM, block_tags, ends_with_empty_block, trailing_opening
from orchestrator.reconstruction.messages import Msg
from orchestrator.reconstruction.reasons import Reject

#: how much of a generation prompt's end is read for the thinking block it may open or close
PROMPT_END = 256

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.core.config import Reconstruction


class ThinkingBlocks:
    """The block placement checks of assistant turns (a mixin of TurnLocator; turns are turns.Turn)."""

    # Set by Reconstructor.__init__:
    cfg: Reconstruction
    places_reasoning: bool  # the template renders an assistant turn's reasoning_content (open_reasoning.py)
    # From the other parts:
    render: Callable[..., str]  # prefixes.PrefixRenders.render
    _locate_turn: Callable[..., Any]  # turns.TurnLocator._locate_turn

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
        # turn a's two renders, the prompt (data[:a] is unchanged) and this one: no prefix is rendered again
        renders = ({a: prompt}.__getitem__, {a + 1: full}.__getitem__, lambda j: None, None)
        return self._locate_turn([*msgs[:a], replace(m, data=turn_data)], changed, a, tools, renders)

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
        form = self.cfg.reasoning_form or THINK_FORM
        empty, block = form.replace("{reasoning}", ""), form.replace("{reasoning}", m.reasoning)
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

    def _closes_empty_block(self, prompt: str, tags: list[tuple[str, str]] | None = None) -> bool:
        """Whether the generation prompt ends with an empty thinking block, closed (thinking off), in one of
        `tags` (default: every block's). Only its last PROMPT_END characters are read."""
        end = prompt[-PROMPT_END:]
        return any(ends_with_empty_block(end, t) for t in (self._block_tags if tags is None else tags))

    @functools.cached_property
    def _block_tags(self) -> tuple[tuple[str, str], ...]:
        return block_tags(self.cfg.reasoning_form)
