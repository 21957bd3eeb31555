"""What a template rendered besides a turn's content: its tool calls and its reasoning.

Part of `Reconstructor` (a base of turns.TurnLocator). The calls and the reasoning must be found in
the turn's render outside the content (not in a content that mentions them), and the render without
each call must differ from the turn's: a template that renders only a turn's first call (GigaChat3's)
would teach the student fewer calls than the results that follow, and one that renders no call, an
empty turn, whatever text of its own in the turn holds the call's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from orchestrator.open_reasoning import empty_block_form
from orchestrator.reconstruction.end_of_turn import SENTINEL
from orchestrator.reconstruction.messages import Msg
from orchestrator.reconstruction.reasons import Reject
from orchestrator.thinking_syntax import template_thinking_form
from orchestrator.tool_args import ToolCallShape


#: reasoning shorter than this (characters) is also proven rendered by a render (`_check_short_reasoning`)
SHORT_REASONING = 32


class RenderedChecks:
    """Checks of the calls and reasoning a turn's render holds (a mixin of TurnLocator)."""

    # Set by Reconstructor.__init__ and the other parts:
    tool_shape: ToolCallShape
    render: Callable[..., str]
    template: str  # the chat template's source

    @functools.cached_property
    def thinking_form(self) -> str | None:
        """The thinking syntax the template's source writes, where it is a known one other than <think> tags
        (thinking_syntax.template_thinking_form), read once."""
        return template_thinking_form(self.template)

    def _check_rendered(self, m: Msg, seg: str, a: int, calls, at: int) -> None:
        """What the template rendered besides the content itself (at seg[at:]): the tool calls
        and the reasoning must be found there, not in a content that happens to mention them.
        The content is cut out where the template put it, not where it first occurs."""
        check_reasoning = bool(m.reasoning)  # set only where a policy places it (template, think_tags)
        rest = seg[:at] + seg[at + len(m.content) :] if check_reasoning or calls else ""
        if check_reasoning and m.placed_prefix and m.reasoning.strip() not in rest:
            raise Reject(
                "reasoning_not_rendered",
                f'messages[{a}]: the template does not render the reasoning block that reasoning = "think_tags" '
                f"writes before the content (starts {m.placed_prefix[:30]!r}), and does not drop exactly that block "
                "from the turn either. Fix: set orchestrator.reconstruction.reasoning_form to the student's own "
                'thinking syntax (docs/reconstruction.md, Policies), or reasoning = "drop"',
            )
        if check_reasoning and m.reasoning.strip() not in rest:  # the form: the source's, or an empty block's
            raise _reasoning_not_rendered(a, self.thinking_form or empty_block_form(seg[:at]))
        for call in calls:
            name = call["function"]["name"]
            if name not in rest and self.tool_shape.null_content and m.content:
                raise Reject(
                    "tool_calls_not_rendered",
                    f"messages[{a}]: the student's chat template renders tool calls only in turns "
                    f"without content (`content is none`), and this turn has content besides tool call "
                    f'{name!r}. Fix: set orchestrator.reconstruction.text_with_tool_calls = "drop" to train '
                    "the calls alone, or use a student whose template renders both",
                )
            if name not in rest:
                raise _not_rendered(a, name)

    def _check_opening_prompt(self, tools) -> bool:
        """messages[0] is a trained assistant turn: its prompt is the template's render of no messages with
        the generation prompt. A template that writes the generation prompt only after a message (OLMo 2's and
        GigaChat 3's, inside the loop at `loop.last`; DeepSeek V3.1's, only after a user message) writes none
        there, so the turn was trained from its own role header, or with none: a turn start the student never
        writes, since every prompt it is given ends with the header. Rejected when the render of no messages is
        the same with and without the generation prompt while the render of one user message is not (after a
        later message an empty generation prompt is what serving renders too: DeepSeek V3's after a tool
        result). Returns whether the template renders no messages with the generation prompt at all (False:
        Qwen2.5's, Llama 3.1's read messages[0]); a template that raises here is left to _locate_turn, which
        names the same fix."""
        user = [{"role": "user", "content": "Hi"}]
        try:
            opening = self.render([], tools, True)
        except Exception:  # noqa: BLE001 - no prompt for messages[0] at all (Planner._opening_as_context)
            return False
        try:
            if opening != self.render([], tools, False):
                return True
            after_user = self.render(user, tools, True), self.render(user, tools, False)
        except Exception:  # noqa: BLE001 - _locate_turn reports the template's error with its hint
            return True
        if after_user[0] == after_user[1]:  # no generation prompt anywhere (Mistral v0.1's): nothing missing
            return True
        shown = after_user[0][len(after_user[1]) :] if after_user[0].startswith(after_user[1]) else after_user[0]
        raise Reject(
            "template_mismatch",
            "messages[0] is a turn to train with nothing before it, and the template writes no generation prompt "
            f"for no messages (after a user message it ends the prompt with {shown[-60:]!r}): the turn would be "
            "trained from its own role header, or with none, where every prompt the student is given ends with the "
            "header; followed by a later turn to train, it would be kept as context. Fix: start the conversation "
            "with the message the answer replies to",
        )

    def _check_short_reasoning(self, data: list[dict], a: int, tools, m: Msg) -> None:
        """Reasoning the template renders itself (policy "template") and shorter than SHORT_REASONING, found in the
        turn's render by `_check_rendered`, is no proof: so short a text can be part of what the template writes
        in the turn (a call's JSON, its own tags). A render with a mark as the reasoning must show the mark."""
        if m.placed_prefix or not m.reasoning or len(m.reasoning.strip()) >= SHORT_REASONING:
            return
        mark = f"{SENTINEL[:-1]}reasoning{SENTINEL[-1]}"
        try:
            shown = mark in self.render([*data[:a], dict(data[a], reasoning_content=mark, thinking=mark)], tools, False)
        except Exception:  # noqa: BLE001 - unproven
            shown = False
        if not shown:
            raise _reasoning_not_rendered(a, self.thinking_form)

    def _check_every_call(self, data: list[dict], a: int, tools) -> None:
        """Each of the turn's tool calls is rendered. The names found in the render (`_check_rendered`) are
        no proof: two calls of one function share theirs (GigaChat3's template renders only a turn's first
        call), and a name can be part of the text the template writes in the turn (GigaChat3's
        "<|message_sep|>" holds "g"). One render with a mark for each call's name shows each mark; where a
        mark is missing (a template that rewrites names, refuses unknown ones, or leaves a call out), the
        turn's render without each call in turn must differ from its render."""
        calls = data[a]["tool_calls"]
        marks = [f"{SENTINEL[:-1]}call{j}{SENTINEL[-1]}" for j in range(len(calls))]
        marked = [dict(c, function=dict(c["function"], name=k)) for c, k in zip(calls, marks)]
        try:
            text = self.render([*data[:a], dict(data[a], tool_calls=marked)], tools, False)
        except Exception:  # noqa: BLE001 - a template that checks the names against the tools: compare below
            text = ""
        if all(k in text for k in marks):
            return
        try:
            full = self.render(data[: a + 1], tools, False)
        except Exception:  # noqa: BLE001 - rendered before; nothing to compare with
            return
        for j, call in enumerate(calls):
            fewer = dict(data[a], tool_calls=calls[:j] + calls[j + 1 :])
            if len(calls) == 1:
                del fewer["tool_calls"]
            try:
                if self.render([*data[:a], fewer], tools, False) != full:
                    continue
            except Exception:  # noqa: BLE001 - not comparable without this call
                continue
            if len(calls) == 1:
                raise _not_rendered(a, call["function"]["name"])
            raise Reject(
                "tool_calls_not_rendered",
                f"messages[{a}]: the student's chat template renders only some of this turn's {len(calls)} tool "
                f"calls (tool_calls[{j}], {call['function']['name']!r}, leaves its render unchanged), so the "
                "student would learn fewer calls than the results that follow. Fix: use a student whose template "
                "renders every call, or keep one call per turn in the data",
            )


def _reasoning_not_rendered(a: int, own: str | None) -> Reject:
    """The rejection of reasoning the template leaves out, naming the student's own thinking syntax `own` where its
    template shows one (RenderedChecks.thinking_form)."""
    form = (
        f"with reasoning_form = {own!r}, the template's own thinking syntax"
        if own
        else "with reasoning_form for a student whose thinking syntax is not <think> tags, e.g. Gemma 4's "
        '"<|channel>thought\\n{reasoning}<channel|>"'
    )
    return Reject(
        "reasoning_not_rendered",
        f'messages[{a}]: the template did not render reasoning_content. Fix: set reasoning = "think_tags" ({form}) '
        'or "drop"; where the generation prompt closes an empty thinking block (thinking off), "drop", or thinking on',
    )


def _not_rendered(a: int, name: str) -> Reject:
    return Reject(
        "tool_calls_not_rendered",
        f"messages[{a}]: the student's chat template does not render tool call {name!r}; "
        "training would teach an empty turn. Fix: if the student writes its calls as text, set "
        "orchestrator.reconstruction.tool_calls_as_text to its form (docs/reconstruction.md, Policies); "
        "else use a student whose template supports tools, or filter out tool conversations",
    )
