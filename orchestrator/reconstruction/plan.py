"""One conversation -> the samples to build: their segment texts, not yet tokenised.

Part of `Reconstructor` (reconstructor.py sets the state used here). Applies the
policies (system_prompt, special_tokens_in_content, truncated, on_history_rewrite),
locates every trained turn (turns.py) in the prefix renders (prefixes.py), chains turns
into one sample while each render is a string prefix of the next (else splits or
rejects), and cuts each sample into segments: the prompt, then alternately a trained
turn and the untrained context between turns.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distill.core.contract import Rejection
from distill.core.conversation import cut_short
from orchestrator.open_reasoning import open_block
from orchestrator.reconstruction.messages import (
    normalize_messages,
    plain_tools,
    strip_contents,
    where_not_unicode,
)
from orchestrator.reconstruction.reasons import Reject
from orchestrator.reconstruction.special_text import check_special
from orchestrator.reconstruction.tool_definitions import definitions_text, renumbered, with_definitions
from orchestrator.reconstruction.turns import Turn
from orchestrator.system_merge import merge_system_into_first_user
from orchestrator.tool_args import ToolCallShape

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    import re

    from distill.core.config import Reconstruction


@dataclass
class Pending:
    """One sample to be: its segment texts (prompt first) and which are trained."""

    sid: str
    texts: list[str]
    utf8: list[bytes]  # each text's UTF-8 (the token-bytes self-check compares with it)
    trained: list[bool]
    keep_open: bool
    split: bool
    meta: dict[str, Any]
    fields: dict[str, Any]
    # the conversation's opening assistant message is kept as untrained context (Planner._opening_as_context):
    # counted in stats["opening_turns_as_context"] once the conversation gives a sample (pipeline._complete)
    opening_context: bool = False


class Planner:
    """Plans the samples of a conversation (a mixin of Reconstructor)."""

    # Set by Reconstructor.__init__ (and methods of its other parts):
    cfg: Reconstruction
    stats: collections.Counter
    train_roles: tuple[str, ...]
    tool_shape: ToolCallShape
    renders_tool_results: bool  # tool_args.probe_renders_tool_results
    # tool_args.probe_renders_tools (where calls are rendered or written as text): `tools`' definitions reach
    # the prompt (the template shows them, or tools_in_system_prompt writes them)
    renders_tools: bool
    _definitions: str | None  # tools_in_system_prompt
    places_reasoning: bool
    _special_re: re.Pattern | None
    eot_spaces: str  # end_of_turn.EndOfTurn.spaces: spaces before the end token
    _inline_tags: tuple[tuple[str, str], ...]  # the student's own thinking tags, when not <think> (reconstructor.py)
    # From the other parts:
    _reject: Callable[[str, Reject], Rejection]  # reconstructor.Reconstructor._reject
    _prefix_renders: Callable[..., tuple]  # prefixes.PrefixRenders._prefix_renders
    _locate_turn: Callable[..., Turn]  # turns.TurnLocator._locate_turn
    _check_opening_prompt: Callable[..., bool]  # rendered_checks.RenderedChecks._check_opening_prompt

    def _prepare(
        self,
        messages,
        tools=None,
        *,
        sample_id: str,
        prompt_id: str = "",
        sample_index: int = 0,
        finish_reason: str | None = None,
        reward: float | None = None,
        teacher_model: str | None = None,
        meta: dict | None = None,
    ):
        """Render and cut one conversation into per-sample segment texts (no tokens yet)."""
        self.stats["conversations"] += 1
        try:
            groups, turns, opening_context = self._plan(messages, tools, finish_reason)
        except Reject as r:
            return [], [self._reject(sample_id, r)]
        except RecursionError:  # data nested deeper than any check above foresaw: this conversation only
            deep = Reject("invalid_message", "the conversation holds data nested too deeply to read")
            return [], [self._reject(sample_id, deep)]
        split = len(groups) > 1
        if split:
            self.stats["split"] += 1
        plans = []
        for group in groups:
            is_last = group[-1] == len(turns) - 1
            extra: dict[str, Any] = {"turns": len(group)}
            if split:
                extra.update(split_from=sample_id, first_turn=group[0] + 1)
            keep_open = is_last and cut_short(finish_reason) and turns[-1].role == "assistant"
            texts, trained = self._segments([turns[k] for k in group], keep_open, self.eot_spaces)
            try:
                utf8 = _utf8(texts, messages, tools)
            except Reject as r:
                return [], [self._reject(sample_id, r)]
            plans.append(
                Pending(
                    sid=f"{sample_id}/turn{group[0] + 1}" if split else sample_id,
                    texts=texts,
                    utf8=utf8,
                    trained=trained,
                    keep_open=keep_open,
                    split=split,
                    meta={**(meta or {}), **extra},
                    opening_context=opening_context,
                    fields=dict(
                        prompt_id=prompt_id,
                        sample_index=sample_index,
                        reward=reward,
                        teacher_model=teacher_model,
                        finish_reason=finish_reason
                        if is_last
                        else ("tool_calls" if turns[group[-1]].has_tool_calls else "stop"),
                    ),
                )
            )
        return plans, []

    def _plan(self, messages, tools, finish_reason):
        msgs, tools = self._messages(messages, tools, finish_reason)
        trained = [i for i, m in enumerate(msgs) if m.role in self.train_roles and m.weight]
        if not trained:
            weighed = any(m.role in self.train_roles for m in msgs)  # all of them with weight 0
            raise Reject(
                "no_trained_turn",
                f"every message with a role in train_roles {list(self.train_roles)} has weight 0"
                if weighed
                else f"no message has a role in train_roles {list(self.train_roles)}",
            )
        msgs = msgs[: trained[-1] + 1]  # context after the last trained turn trains nothing
        if not self.renders_tool_results:
            _no_tool_results(msgs)
        if cut_short(finish_reason) and self.cfg.truncated == "drop" and msgs[-1].role == "assistant":
            raise Reject("truncated", f"the last assistant turn was cut off (finish_reason={finish_reason})")
        msgs, shift = self._with_definitions(msgs, tools)
        trained = [a + shift for a in trained]
        opened = self._opening_as_context(msgs, tools, trained)
        try:
            groups, turns = self._turns(msgs, tools, opened)
        except Reject as r:  # named as the user gave the messages, not counting a system message made above
            raise renumbered(r, shift) from None
        if tools and not self.renders_tools:  # after the turns: a call the template cannot write is named first
            _no_tool_definitions(msgs, opened, self.chat_template.source)
        return groups, turns, len(opened) < len(trained)

    def _opening_as_context(self, msgs: list, tools: list[dict] | None, trained: list[int]) -> list[int]:
        """`trained` less messages[0] where that is an assistant turn the template gives no prompt and a later
        turn is trained: its prompt would be the render of no messages with the generation prompt, which
        Qwen2.5's, Qwen3's, Llama 3.1's and SmolLM3's templates cannot make (they read messages[0]) and OLMo 2's,
        GigaChat 3's and DeepSeek V3.1's make without a generation prompt (_check_opening_prompt). The opening
        (a dataset's greeting, a prompt's few-shot answer) stays in the conversation as context (counted in
        stats["opening_turns_as_context"] once the conversation gives a sample, and named in the summaries of
        replay and live runs); before, the whole conversation was rejected, the teacher's answer after it
        included. Alone, it is still rejected, naming the fix (the check's Reject here, or _locate_turn's
        template_error for a template that cannot render no messages)."""
        if trained[0] != 0 or msgs[0].role != "assistant":
            return trained
        try:
            renders = self._check_opening_prompt(tools)
        except Reject:
            if len(trained) == 1:
                raise
            return trained[1:]
        return trained if renders or len(trained) == 1 else trained[1:]

    def _messages(self, messages, tools, finish_reason) -> tuple[list, list[dict] | None]:
        """The conversation's messages as the template sees them (normalised, per the policies) and its
        tools as plain JSON, checked for special-token text; raises Reject."""
        if self.cfg.system_prompt == "merge_into_first_user":
            messages = merge_system_into_first_user(messages)
        if self.cfg.content_whitespace == "strip":
            messages = strip_contents(messages)
        if cut_short(finish_reason):
            _no_answer_yet(messages, finish_reason)
        drop = self.cfg.text_with_tool_calls == "drop"
        msgs = normalize_messages(
            messages,
            self.cfg.reasoning,
            self.tool_shape,
            self.places_reasoning,
            self.cfg.tool_calls_as_text,
            drop,
            self.cfg.reasoning_form,
            self._inline_tags,
        )
        if drop:
            self.stats["tool_call_text_dropped"] += sum(m.dropped_text for m in msgs)
        tools = plain_tools(tools)
        if self._special_re is not None and self.cfg.special_tokens_in_content == "reject":
            check_special(msgs, tools, self._special_re)
        return msgs, tools

    def _with_definitions(self, msgs: list, tools: list[dict] | None) -> tuple[list, int]:
        """`msgs` with the tool definitions written into the system prompt (tools_in_system_prompt:
        tool_definitions.py), and how many messages that added before them (0 or 1)."""
        if not tools or self._definitions is None:
            return msgs, 0
        text = definitions_text(tools, self._definitions, self.cfg.tool_definition_form)
        return with_definitions(msgs, text, self.cfg.system_prompt == "merge_into_first_user")

    def _prompt_data(self, messages: Any, tools: Any) -> tuple[list[dict], list[dict] | None]:
        """What the template is given for the prompt of a turn that would follow `messages` (Reconstructor.
        prompt_text): what _plan gives it for the messages before a trained turn, and the checks of these
        messages that would reject such a conversation (a template that drops tool results)."""
        msgs, tools = self._messages(messages, tools, None)
        if not self.renders_tool_results:
            _no_tool_results(msgs)
        msgs, _ = self._with_definitions(msgs, tools)
        return [m.data for m in msgs], tools

    def _turns(self, msgs: list, tools: list[dict] | None, trained: list[int]) -> tuple[list[list[int]], list[Turn]]:
        """Every trained turn located in the renders, and the turns grouped into samples (a new group where
        a turn's render does not continue the one before: the template rewrote the history)."""
        data = [m.data for m in msgs]
        renders = self._prefix_renders(data, tools, trained[0])
        turns = [self._locate_turn(msgs, data, a, tools, renders) for a in trained]
        groups = [[0]]
        for k in range(1, len(turns)):
            prev, cur = turns[k - 1], turns[k]
            # both fulls start with the conversation's head[:same] (prefixes.py): compare the rest
            same = min(prev.shared, cur.shared, prev.end)
            upto = prev.full if prev.end == len(prev.full) and not same else prev.full[same : prev.end]
            if prev.end <= cur.start and cur.full.startswith(upto, same):
                groups[-1].append(k)
            else:
                groups.append([k])
        if len(groups) > 1 and self.cfg.on_history_rewrite == "reject":
            k = groups[1][0]
            raise Reject(
                "history_rewrite",
                f"the template renders the history before trained turn {k + 1} "
                f"(messages[{trained[k]}]) differently from how it rendered turn {k}",
            )
        return groups, turns

    @staticmethod
    def _segments(turns: list[Turn], keep_open: bool, spaces: str = "") -> tuple[list[str], list[bool]]:
        """Prompt, then (trained turn, context) alternately, ending with a trained turn (a
        turn kept open ends before the end token and the `spaces` the template puts
        before it: the content was cut off, the template's text after it never came)."""
        texts = [turns[0].full[: turns[0].start]]
        trained = [False]
        for j, t in enumerate(turns):
            if j:
                texts.append(t.full[turns[j - 1].end : t.start])
                trained.append(False)
            stop = t.end
            if keep_open and j == len(turns) - 1:
                stop = t.eot_start - (len(spaces) if spaces and t.full.endswith(spaces, t.start, t.eot_start) else 0)
            texts.append(t.full[t.start : stop])
            trained.append(True)
        return texts, trained


def _utf8(texts: list[str], messages, tools) -> list[bytes]:
    """Each segment text's UTF-8; a lone surrogate (no tokenizer can encode it) rejects the conversation."""
    try:
        return [t.encode("utf-8") for t in texts]
    except UnicodeEncodeError:
        raise Reject(
            "invalid_text",
            f"{where_not_unicode(messages, tools)} holds a lone surrogate "
            "(not valid Unicode, so no tokenizer can encode it). Fix: repair or "
            "drop the text at its source",
        ) from None


def _no_answer_yet(messages: Any, finish_reason: str) -> None:
    """A last assistant turn cut off while it was still reasoning (reasoning, but no content and no
    tool call) has nothing to train, whatever the `truncated` policy: rejected, naming the fix."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant" or last.get("tool_calls"):
        return
    content, reasoning = last.get("content"), last.get("reasoning_content") or last.get("reasoning")
    if isinstance(content, str) and open_block(content):  # "<think>R..." from a server without a parser
        reasoning, content = content, None
    # the newlines a reasoning parser leaves in content are the thinking block's, not an answer
    answered = content.strip("\n") if isinstance(content, str) and reasoning else content
    if not answered and isinstance(reasoning, str) and reasoning.strip():
        raise Reject(
            "truncated",
            f"the last assistant turn was cut off while reasoning, before any answer (finish_reason={finish_reason}). "
            "Fix: raise the teacher's max_tokens (orchestrator.sampling.max_tokens; reasoning counts towards it)",
        )


def _no_tool_results(msgs: list) -> None:
    """Reject a conversation with a tool message before a trained turn, for a template that renders none."""
    for i, m in enumerate(msgs):
        if m.role == "tool":
            raise Reject(
                "tool_results_not_rendered",
                f"messages[{i}]: the student's chat template renders no tool message (it drops them), so the "
                "answers after this tool result would be trained without it. Fix: use a student whose template "
                "renders tool results (student.chat_template), or filter out tool conversations",
            )


def _no_tool_definitions(msgs: list, trained: list[int], source: str) -> None:
    """Reject a conversation whose trained turns call tools (rendered by the template, as DeepSeek V3's does, or
    written as text: tool_calls_as_text), for a template that shows none of the definitions passed as `tools`
    (tool_args.probe_renders_tools): the student would learn to call tools it is never shown. Calls not written
    at all are left to the tool_calls_not_rendered check, which names that switch."""
    for i in trained:
        if msgs[i].placed_calls or msgs[i].data.get("tool_calls"):
            own = _own_tools_names(source)
            where = (
                f"it reads them from {', '.join(own)}"
                if own
                else "it reads no argument for them: DeepSeek's expect them in the system prompt, Phi-4-mini's in "
                "a system message's `tools` field"
            )
            raise Reject(
                "tools_not_rendered",
                f"messages[{i}] calls a tool, but the student's chat template does not show the tool definitions "
                f"passed as `tools` ({where}): the student would learn to call tools it was never shown. Fix: set "
                "orchestrator.reconstruction.tools_in_system_prompt to write them into the system prompt in the "
                "layout the student reads them in, pass them as the template reads them in chat_template_kwargs "
                "(e.g. SmolLM3's xml_tools, the same list for every conversation), or use a student.chat_template "
                "that renders `tools`",
            )


@functools.lru_cache(maxsize=4)
def _own_tools_names(source: str) -> list[str]:
    """The names other than `tools` that the template reads and that say tools (SmolLM3's xml_tools), once per
    template: they name where it takes its definitions from."""
    from orchestrator.template_kwargs import names_read

    return sorted(n for n in names_read(source) or () if "tools" in n and n != "tools")
