"""Blocks a template drops from every assistant turn it renders, and the turns trained across them.

Part of `Reconstructor` (a base of turns.TurnLocator). Two shapes, each proven from renders:

- the generation prompt writes, after the turn's header, a block no rendered turn shows (Gemma 4
  with thinking off: the empty thought channel "<|channel>thought\\n<channel|>"): `dropped_opening`,
  found once, and `_after_dropped_block`, proven per turn;
- reasoning = "think_tags" puts the reasoning before the content in `reasoning_form`, and the template
  strips exactly that block from the turn (Gemma 4 with thinking on strips its thought channel from
  every model turn, the last one too): `dropped_reasoning`. The student, prompted with the turn's
  header, writes its reasoning first, then the turn as the template renders it. A block the teacher
  wrote inside content, which think_tags keeps as written, is such a block too where the template
  strips it (Nemotron Super v1.5 keeps what follows the last "</think>"): `inline_block`.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from dataclasses import replace

from orchestrator.open_reasoning import leading_block
from orchestrator.reconstruction.end_of_turn import SENTINEL
from orchestrator.reconstruction.messages import Msg
from orchestrator.reconstruction.reasons import Reject


class DroppedBlocks:
    """The turns after a block the template drops (a mixin of TurnLocator)."""

    # Set by Reconstructor.__init__ and the other parts:
    stats: collections.Counter
    probe_tools: list[dict] | None
    render: Callable[..., str]
    _without_reasoning: Callable[..., tuple[list[dict], str | None]]  # thinking_blocks.py

    @functools.cached_property
    def _simplest(self) -> tuple[str, str] | None:
        """The simplest conversation (one user message, one answer: a sentinel), as the student's prompt
        and as the rendered turn; None when the template raises on it."""
        user = [{"role": "user", "content": "Hi"}]
        try:
            prompt = self.render(user, self.probe_tools, True)
            return prompt, self.render(user + [{"role": "assistant", "content": SENTINEL}], self.probe_tools, False)
        except Exception:  # noqa: BLE001 - nothing known from it
            return None

    def _after_dropped_block(self, data, a: int, tools, header: str, probe: str, h: int, i: int, sentinel: str):
        """The text between the generation header and the content (the calls of a tool-call turn, or
        "") when the prompt's header is the turn's header H plus the template's `dropped_opening` X
        (Gemma 4's empty thought channel) and the template renders this turn with content X + sentinel
        as with the sentinel alone: the student, after H + X, writes the rest of the turn as rendered
        after H. None when that does not hold."""
        block = self.dropped_opening
        if not block or not header.endswith(block) or not probe.startswith(header[: -len(block)], h):
            return None
        try:
            if self.render(data[:a] + [dict(data[a], content=block + sentinel)], tools, False) != probe:
                return None
        except Exception:  # noqa: BLE001 - not provable this way
            return None
        start = h + len(header) - len(block)
        if "reasoning_content" in data[a]:  # reasoning = "template": the lead may hold it, as rendered
            self._check_no_reasoning_in_lead(data, a, tools, block, probe[start:i], start, sentinel)
        self.stats["dropped_opening_turns"] += 1
        return probe[start:i]

    def _check_no_reasoning_in_lead(
        self, data, a: int, tools, block: str, lead: str, start: int, sentinel: str
    ) -> None:
        """Rejects a lead that holds the turn's reasoning field as the template renders it (Gemma 4 31B's
        interleaved template writes a tool-call turn's reasoning in a thought channel after the header): the
        prompt already ends with the dropped block, the empty channel (thinking off), and the student would
        learn to write a second one after it. The lead is compared with the one the template renders for the
        turn without the field (`start`: where the lead starts in the probe render, whose content is `sentinel`)."""
        plain = self._without_reasoning(data, a, tools, sentinel)[1] or ""  # "" where it raises: not proven free
        if plain[start : plain.find(sentinel)] == lead:
            return
        raise Reject(
            "template_mismatch",
            f"messages[{a}]: the generation prompt ends with {block!r}, a block the template drops from every "
            "turn (thinking off), and the template renders this turn's reasoning field after the turn's header "
            f"({lead[:40]!r}): the student would learn to write a second block after the empty one. Fix: set "
            'reasoning = "drop" to train the turn without it, or turn thinking on in '
            "orchestrator.reconstruction.chat_template_kwargs (e.g. enable_thinking = true) to train the reasoning",
        )

    @functools.cached_property
    def dropped_opening(self) -> str:
        """What the generation prompt writes after the header of an assistant turn that the template drops
        from a turn whose content starts with it (Gemma 4 with thinking off: the empty thought channel
        "<|channel>thought\\n<channel|>", which no rendered turn shows), in the simplest conversation; or ""."""
        if self._simplest is None:
            return ""
        prompt, turn = self._simplest
        user = [{"role": "user", "content": "Hi"}]
        try:
            history = self.render(user, self.probe_tools, False)
            i = turn.find(SENTINEL)
            header = turn[len(history) : i]
            block = prompt[len(history) + len(header) :]
            if not (i >= 0 and block and turn.startswith(history) and prompt.startswith(history + header)):
                return ""
            dropped = self.render(user + [{"role": "assistant", "content": block + SENTINEL}], self.probe_tools, False)
        except Exception:  # noqa: BLE001 - none known
            return ""
        return block if dropped == turn else ""

    def dropped_reasoning(self, data: list[dict], a: int, tools, full: str, content: str) -> bool:
        """Whether the template renders turn a (whose content is the think_tags block, then `content`)
        exactly as the same turn with `content` alone: `full`, the render through the turn, is also
        the render without the block. The template then knows the block as the model's own reasoning
        (it strips exactly it) and the prompt, its header, is where the student writes it first."""
        try:
            plain = self.render(data[:a] + [dict(data[a], content=content)], tools, False)
        except Exception:  # noqa: BLE001 - not provable this way
            return False
        if plain != full:
            return False
        self.stats["dropped_reasoning_turns"] += 1
        return True


def inline_block(m: Msg, policy: str) -> Msg | None:
    """With reasoning = "think_tags", an assistant message whose content starts with the teacher's own
    "<think>...</think>" block (kept as written: no reasoning field was placed) as the block placed before
    its answer: the block with the newlines after it as the placed prefix, the rest as the content, for
    `dropped_reasoning` to prove that the template strips exactly it. None otherwise (no such block, or
    no answer after it)."""
    if policy != "think_tags" or m.role != "assistant" or m.placed_prefix or m.reasoning:
        return None
    inline = leading_block(m.content)
    if inline is None or not inline[1]:
        return None
    cut = len(m.content) - len(inline[1])
    return replace(m, placed_prefix=m.content[:cut], content=inline[1], reasoning=inline[0])
