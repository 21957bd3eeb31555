"""`Reconstructor`: teacher conversations -> verified student `Sample`s (the public class).

The class is put together from the parts of this package (docs/reconstruction.md,
"Code map"): prefixes.PrefixRenders (renders), turns.TurnLocator (finding and checking
each trained turn), plan.Planner (policies, splitting, segment texts),
pipeline.Pipeline (tokenising, Sample assembly), selfcheck.SelfCheck (decode checks).
This module holds its state (__init__) and its public methods.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import re
from typing import TYPE_CHECKING, Any

from distill.core.contract import Rejection, Sample
from distill.core.conversation import Conversation, build_args
from orchestrator.reconstruction.end_of_turn import PROBE_TOOLS, probe_end_of_turn
from orchestrator.reconstruction.joined import SegmentJoiner
from orchestrator.reconstruction.next_role import probe_next_role
from orchestrator.reconstruction.pipeline import Pipeline
from orchestrator.reconstruction.plan import Planner
from orchestrator.reconstruction.prefixes import PrefixRenders
from orchestrator.reconstruction.prompt_reuse import prompt_reuse
from orchestrator.reconstruction.reasons import Reject
from orchestrator.reconstruction.selfcheck import SelfCheck, token_bytes
from orchestrator.reconstruction.turns import TurnLocator
from orchestrator.reconstruction.sp_bytes import sentencepiece_bytes
from orchestrator.segment_tokenize import PrefixSpaceRule
from orchestrator.template import ChatTemplate
from orchestrator.open_reasoning import other_block_tags, probe_places_reasoning, probe_thinking_part_form
from orchestrator.thinking_syntax import check_default_form, probe_placed_syntax
from orchestrator.tool_args import probe_renders_tool_results, probe_renders_tools, probe_tool_call_shape

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.core.config import Reconstruction


class Reconstructor(PrefixRenders, TurnLocator, Planner, Pipeline, SelfCheck):
    """Builds verified `Sample`s from teacher conversations with the student's template."""

    PROMPT_CACHE_SIZE = 1024

    def __init__(self, tokenizer, cfg: "Reconstruction", max_seq_len: int | None = None):
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or not template:
            raise ValueError(
                "the student tokenizer has no chat template; reconstruction needs one. "
                "Fix: add chat_template.jinja to the tokenizer folder"
            )
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.max_seq_len = max_seq_len if max_seq_len is not None else cfg.max_seq_len
        self.template = template
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is None:
            raise ValueError(
                "reconstruction needs a fast (Rust) tokenizer with a tokenizer.json; "
                f"got {type(tokenizer).__name__}. Fix: save the student tokenizer with tokenizers installed"
            )
        self.train_roles = tuple(cfg.train_roles)
        self._token_bytes = token_bytes(self.backend)  # None unless a checked byte-level decoder
        self.chat_template = ChatTemplate(template)
        self._derive_prefixes = True  # off only if a cross-check ever fails
        self._try_tracked = True  # watched renders for templates that are not append-only (prefixes.py)
        self._after_prompt: str | None = None  # after(True), once learnt (constant-after templates)
        self._tracked_afters: dict = {}  # (g, state) -> after(g), learnt (watched renders, prefixes.py)
        self._assistant_leads: list[tuple[str, str]] = []  # turns.py _known_lead
        self._template_kwargs = json.loads(json.dumps({**tokenizer.special_tokens_map, **cfg.chat_template_kwargs}))
        self._prompt_cache: dict[str, list[int]] = {}  # prompt text -> ids
        self._verified_prompts: dict[str, None] = {}  # prompt texts whose ids decoded back exactly
        self._render_cache: dict[str, Any] = {}  # messages JSON -> generation-prompt render (text or parts)
        added = sorted(
            {t.content for t in tokenizer.added_tokens_decoder.values() if t.content.strip()}, key=len, reverse=True
        )
        self._added_tokens = added
        self._special_re = re.compile("|".join(map(re.escape, added))) if added else None
        self.stats: collections.Counter = collections.Counter()
        plain = lambda m, t, g: self.chat_template.render(m, t, g, **self._template_kwargs)  # noqa: E731
        self.next_role = probe_next_role(plain, added)  # GLM-4: next_role.py
        end = probe_end_of_turn(self.render, added, tokenizer.eos_token)  # end_of_turn.py
        self.eot, self.eot_spaces, self.eot_closing, self.final_tail = end.token, end.spaces, end.closing, end.tail
        self.probe_tools, self.probe_render = end.probe_tools, end.probe_render
        self._probe_tools(cfg)
        self.cfg = cfg = self._probe_reasoning(cfg)
        # SentencePiece-style dummy prefix: later segments are tokenised without it
        # (orchestrator/segment_tokenize.py); None for tokenizers without one (BPE).
        self._prefix_rule = PrefixSpaceRule(self.backend, [self.eot] + added) if self._token_bytes is None else None
        self._continuation = self._prefix_rule.continuation if self._prefix_rule is not None else None
        self._anchor = [self.backend.token_to_id(self.eot)] if self._continuation is not None else []
        self._sp_bytes = _sentencepiece_table(self.backend, self.eot, self._token_bytes, self._continuation)
        # split samples' prompts reuse the previous prompt's ids where exact (prompt_reuse.py);
        # None switches that off (tests compare both)
        byte_level = self._continuation is None and self._token_bytes is not None
        # runs of texts encoded as one input, joined by a separator (joined.py); none: one by one
        # (the template's tokens, in its source or, like a bos token, in its output, are the last choice)
        written = template + self.probe_render
        self._joiner = SegmentJoiner(self.backend, tokenizer.added_tokens_decoder, written)
        self._cont_joiner = SegmentJoiner(  # the prefix-less copy's (for trained turns), when there is one
            self._continuation, tokenizer.added_tokens_decoder if self._continuation is not None else {}, written
        )
        self._prompt_reuse = prompt_reuse(self.backend, template, byte_level)
        self.stats.clear()

    def build(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        *,
        sample_id: str,
        prompt_id: str = "",
        sample_index: int = 0,
        finish_reason: str | None = None,
        reward: float | None = None,
        teacher_model: str | None = None,
        meta: dict | None = None,
    ) -> tuple[list[Sample], list[Rejection]]:
        """Samples for one conversation (several when split), and rejections."""
        return self.build_many(
            [
                dict(
                    messages=messages,
                    tools=tools,
                    sample_id=sample_id,
                    prompt_id=prompt_id,
                    sample_index=sample_index,
                    finish_reason=finish_reason,
                    reward=reward,
                    teacher_model=teacher_model,
                    meta=meta,
                )
            ]
        )[0]

    #: build_many works in chunks of at most this many conversations: while the tokenizer
    #: (Rust, without the GIL) encodes one chunk in a helper thread, Python plans the next
    #: and finishes the one before (the ends are smaller: pipeline_chunks).
    PIPELINE_CHUNK = 32

    def build_many(self, conversations: list[Conversation] | list[dict]) -> list[tuple[list[Sample], list[Rejection]]]:
        """`build` for several conversations (Conversation, or deprecated: dicts of build's arguments),
        tokenised in batches.

        Same results as calling `build` on each; faster, because the segments of many
        conversations go to the fast tokenizer (and the decode self-check) in one call,
        and the tokenizer works on one chunk while the templates render the next.
        """
        conversations = [build_args(c) for c in conversations]
        results: list[tuple[list[Sample], list[Rejection]]] = []
        sizes = pipeline_chunks(len(conversations), self.PIPELINE_CHUNK)
        if len(sizes) == 1:
            pending = self._prepare_chunk(conversations, 0, results)
            self._complete(pending, self._encode([p for _, p in pending]), results)
            return results
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-encode") as pool:
            previous, jobs, start = None, None, 0
            for size in sizes:
                pending = self._prepare_chunk(conversations[start : start + size], start, results)
                start += size
                run, finish, jobs = self._encode_job([p for _, p in pending], jobs)
                encoded = pool.submit(run)  # queued behind the chunk before: the tokenizer is never idle
                if previous is not None:
                    self._complete(previous[0], previous[1](previous[2].result()), results)
                previous = (pending, finish, encoded)
            self._complete(previous[0], previous[1](previous[2].result()), results)
        return results

    def prompt_text(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The student's prompt after `messages` (a conversation that ends where the student answers): the
        text `build` takes as the prompt of a trained turn after them. The same normalisation and policies
        (system merge, stripping, roles and text parts, tool-call arguments in the template's shape, the
        reasoning of earlier turns, tools as plain JSON, tools_in_system_prompt), rendered with the generation
        prompt. On-policy mode samples the student from it (distill/on_policy_parts.py, Renderer). Raises
        Reject where `build` would reject such a conversation for these messages."""
        data, tools = self._prompt_data(messages, tools)
        try:
            return self.render(data, tools, True)
        except Exception as e:  # noqa: BLE001 - a template raising is data-dependent
            raise self._template_error(e, "rendering the prompt", data, tools) from None

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """`prompt_text`'s token ids, as `build` tokenises a prompt: on its own, no special tokens added, and
        self-checked as build checks it (roundtrip_mismatch where the tokenizer cannot represent the text)."""
        text = self.prompt_text(messages, tools)
        return self._checked_prompt(text, list(self.backend.encode(text, add_special_tokens=False).ids))

    def _probe_tools(self, cfg: "Reconstruction") -> None:
        """How tool calls are passed to the template (tool_args.py), whether it writes tool messages and shows
        the tool definitions passed as `tools`; a template that renders calls refuses `tool_calls_as_text`, one
        that shows the definitions `tools_in_system_prompt` (ValueError)."""
        render = lambda msgs: self.render(msgs, self.probe_tools, False)  # noqa: E731
        self.tool_shape = probe_tool_call_shape(render)
        calls_as_text, in_system = cfg.tool_calls_as_text, cfg.tools_in_system_prompt
        if calls_as_text and self.tool_shape.probed:
            raise ValueError(
                "orchestrator.reconstruction.tool_calls_as_text is set, but this chat template renders tool calls "
                f"itself ({self.tool_shape.describe()}), in the form the student learnt. Fix: unset tool_calls_as_text"
            )
        self.renders_tool_results = probe_renders_tool_results(render, self.tool_shape)
        # asked only where the template renders calls or they are written as text (the check that reads it
        # looks at trained calls); a kwarg whose name says tools (SmolLM3's xml_tools): the user passes them so
        by_kwarg = [k for k in cfg.chat_template_kwargs if "tools" in k]
        calls = bool(calls_as_text or self.tool_shape.probed)  # trained calls the student sees
        shows = (calls or in_system is not None) and (
            bool(by_kwarg) or probe_renders_tools(lambda m, t: self.render(m, t, False), PROBE_TOOLS)
        )
        if in_system is not None and shows:
            by = f"chat_template_kwargs.{by_kwarg[0]}" if by_kwarg else "its own layout, from `tools`"
            raise ValueError(
                "orchestrator.reconstruction.tools_in_system_prompt is set, but the student's chat template shows "
                f"the tool definitions itself ({by}): they would be written twice. Fix: unset tools_in_system_prompt"
            )
        self.renders_tools = shows or in_system is not None or not calls
        self._definitions = in_system

    def _probe_reasoning(self, cfg: "Reconstruction") -> "Reconstruction":
        """Where the template puts reasoning: its reasoning field (`places_reasoning`; a thinking block
        inside content then moves there), else a thinking content part it renders (Mistral's): then
        reasoning = "template" is reasoning = "think_tags" in the form the part renders
        (`reasoning_form_from_parts`), the student's own layout, checked per turn as any think_tags turn.
        The config with that change; a ThinkingSyntaxError for think_tags teaching <think> tags to a
        student with another thinking syntax (thinking_syntax.check_default_form). `_inline_tags`: the tags
        of the student's own syntax, in which a teacher's block inside content is read as its reasoning too."""
        render = lambda msgs: self.render(msgs, self.probe_tools, False)  # noqa: E731
        self.places_reasoning = probe_places_reasoning(render)
        self.reasoning_form_from_parts = None if self.places_reasoning else probe_thinking_part_form(render)
        templated = self.places_reasoning or self.reasoning_form_from_parts is not None
        check_default_form(self.thinking_form, cfg.reasoning, cfg.reasoning_form, templated, lambda: self.placed_syntax)
        if cfg.reasoning == "template" and self.reasoning_form_from_parts is not None:
            cfg = cfg.model_copy(update={"reasoning": "think_tags", "reasoning_form": self.reasoning_form_from_parts})
        # the teacher's own block inside content, in the student's syntax: the form trained, else the template's
        self._inline_tags = other_block_tags(
            cfg.reasoning_form if cfg.reasoning == "think_tags" else self.thinking_form
        )
        return cfg

    @functools.cached_property
    def placed_syntax(self) -> str | None:
        """Where the template places an assistant turn's reasoning field outside <think> tags, as the turn's text
        up to its answer (thinking_syntax.probe_placed_syntax: gpt-oss, Kimi K3); None where it places no field
        (`places_reasoning`) or places it in <think> tags. Rendered once, when first asked."""
        if not self.places_reasoning:
            return None
        return probe_placed_syntax(lambda msgs: self.render(msgs, self.probe_tools, False))

    def _reject(self, item_id: str, r: Reject) -> Rejection:
        self.stats[f"rejected:{r.reason}"] += 1
        return Rejection(item_id, r.reason, r.detail)


#: The sizes of build_many's first and last chunks (conversations). The tokenizer waits
#: while the first chunk is planned, and Python finishes the last chunk alone, so both are
#: small; each chunk next to them is planned (or finished) in less time than the tokenizer
#: takes for its neighbour (planning takes ~1/6 of encoding's time, finishing ~1/5:
#: docs/reconstruction.md, "The ends of build_many's pipeline").
RAMP_UP, RAMP_DOWN = (4, 16), (12, 4)


def pipeline_chunks(n: int, chunk: int) -> list[int]:
    """The sizes of build_many's chunks for n conversations: a single chunk up to `chunk`;
    else RAMP_UP, chunks of at most `chunk` as even as can be, RAMP_DOWN (only their outer
    sizes when the conversations are too few for all of them, and only sizes below `chunk`)."""
    if n <= chunk:
        return [n]
    up, down = [x for x in RAMP_UP if x < chunk], [x for x in RAMP_DOWN if x < chunk]
    if sum(up) + sum(down) >= n:
        up, down = up[:1], down[-1:]
    if sum(up) + sum(down) >= n:
        up, down = [], []
    middle = n - sum(up) - sum(down)
    k = -(-middle // chunk)
    q, r = divmod(middle, k)
    return [*up, *(q + (i < r) for i in range(k)), *down]


def _sentencepiece_table(backend: Any, eot: str, byte_table: Any, continuation: Any) -> list[bytes | None] | None:
    """The self-check's token bytes for SentencePiece decoders (sp_bytes.py): Llama-2 style
    with a dummy-prefix rule (a prefix-less copy exists); Gemma's without one (a decoder
    that strips no space); none for byte-level tokenizers (`byte_table`: their own table)."""
    if continuation is not None:  # a "piece" or "first" rule
        return sentencepiece_bytes(backend, eot, strip=True)
    if byte_table is None:  # not byte-level, no dummy-prefix rule
        return sentencepiece_bytes(backend, eot, strip=False)
    return None
