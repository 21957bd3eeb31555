"""Teacher messages -> student tokens and loss mask, built turn by turn and verified.

How a conversation becomes samples (docs/reconstruction.md has the long version):

1. The messages are checked and normalised (roles, text-only content, tool-call
   arguments checked and passed in the shape the template expects - orchestrator/
   tool_args.py -, reasoning placed per policy).
2. For every trained turn k (an assistant message, by default) the student's chat
   template renders two strings: P_k, the history before the turn with the
   generation prompt (what the student sees at inference), and F_k, the history
   through the turn. The turn's text is F_k[len(P_k):]; the template's own constant
   end-of-conversation text (worked out once from a probe render, e.g. "\\n" after
   `<|im_end|>`) is cut off its end and what remains must end with the end-of-turn
   token and contain the teacher's content verbatim where the template puts it.
3. Turns are chained into one sample while the rendered text through turn k is a
   string prefix of the text before turn k+1 (the template does not rewrite
   history). Where it is not, the conversation is split into per-turn samples (each
   with its own full prompt) or rejected, per `on_history_rewrite`.
4. Each sample's text is cut into segments - the prompt, then alternately a
   trained turn and the untrained context between turns - and every segment is
   tokenised on its own, in one batch call to the fast tokenizer (segments after the
   prompt without a SentencePiece dummy prefix: orchestrator/segment_tokenize.py).
5. Self-check: decode(prompt + completion) must equal the rendered text and the
   decoded trained tokens must equal the trained text; else the sample is rejected.

P_k and F_k come from one or two renders per conversation when the template is
provably append-only (orchestrator/template.py), else from two renders per turn (a third
only when the content is not at the start of the turn's text); tokenising is linear
in the conversation's length (every character is tokenised once per sample).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distill.core.conversation import Conversation, build_args
from orchestrator.contract import Rejection, Sample, atomic_write_text
from orchestrator.open_reasoning import opened_turn, without_thinking_tags
from orchestrator.segment_tokenize import PrefixSpaceRule
from orchestrator.system_merge import hint_for_mismatch, hint_for_template_error, merge_system_into_first_user
from orchestrator.template import ChatTemplate
from orchestrator.tool_args import ToolCallShape, parse_arguments, probe_tool_call_shape

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.config import Reconstruction

#: Every reason a conversation (or one of its split samples) can be rejected for.
REJECTION_REASONS: dict[str, str] = {
    "invalid_message": "a message is not an object, has no role, or its content is not text/None/list",
    "unknown_role": "a role other than system, user, assistant, tool",
    "non_text_content": "a content part other than {'type': 'text'} (images, audio, ...)",
    "empty_assistant_turn": "an assistant message with no content and no tool calls",
    "invalid_tool_call": "a tool call that is not {'function': {'name': str, 'arguments': ...}}",
    "invalid_tool_arguments": "tool-call arguments that are not a JSON object (or a JSON string of one)",
    "no_trained_turn": "no message has a role in train_roles",
    "special_token_in_content": "special-token text (e.g. '<|im_end|>') inside content, with special_tokens_in_content=reject",
    "truncated": "the last assistant turn hit the length limit (finish_reason=length), with truncated=drop",
    "template_error": "the student's chat template raised an error on this conversation",
    "template_mismatch": "the template's generation prompt is not a prefix of its rendering of the turn",
    "template_alters_content": "the template does not render the teacher's content verbatim (e.g. it trims it)",
    "reasoning_not_rendered": "reasoning=template, but the template did not render the turn's reasoning",
    "tool_calls_not_rendered": "the assistant turn has tool calls but the student's template does not render them "
                               "(e.g. SmolLM2's), so the student would learn an empty turn",
    "missing_end_token": "the rendered turn does not end with the template's end-of-turn token",
    "history_rewrite": "the template rewrites earlier turns, with on_history_rewrite=reject",
    "overlong": "longer than max_seq_len with overlong=drop, or nothing trainable left after truncation",
    "no_trained_tokens": "the sample would train on zero tokens",
    "invalid_text": "text that is not valid Unicode (a lone surrogate, as a JSON escape of half an emoji gives), "
                    "which no tokenizer can encode",
    "roundtrip_mismatch": "decoding the tokens does not give back the rendered text (self-check failed)",
    "invalid_json": "(tokenize_file) the input line is not valid JSON",
    "invalid_line": "(tokenize_file) the input line is not an object with a 'messages' list",
}

KNOWN_ROLES = ("system", "user", "assistant", "tool")
_KEPT_KEYS = ("name", "tool_call_id")
_SENTINEL = "\u2063Zq7xSENTINELx7qZ\u2063"


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REJECTION_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------
# Message checks and normalisation
# ---------------------------------------------------------------------------


@dataclass
class _Msg:
    """A normalised message: what the template sees, plus what verification needs."""

    data: dict[str, Any]  # passed to the template
    role: str
    content: str  # the teacher's content, verbatim ("" when absent)
    placed_prefix: str  # text put before the content by the reasoning policy (think_tags)
    reasoning: str  # the teacher's reasoning ("" when absent)


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Reject("non_text_content", f"{where}: content part {j} is {kind!r}; only text parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _Reject("invalid_message", f"{where}: content is a {type(content).__name__}, expected a string, null or a list of text parts")


def _tool_calls(raw: Any, where: str, shape: ToolCallShape) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _Reject("invalid_tool_call", f"{where}: tool_calls is a {type(raw).__name__}, expected a list")
    out = []
    for j, tc in enumerate(raw):
        fn = tc.get("function") if isinstance(tc, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise _Reject("invalid_tool_call", f"{where}: tool_calls[{j}] has no function.name")
        args, text = parse_arguments(fn.get("arguments", {}), f"{where}: tool_calls[{j}] ({name})")
        if args is None:
            raise _Reject("invalid_tool_arguments", text)
        call: dict[str, Any] = {"type": "function",
                                "function": {"name": name, "arguments": text if shape.arguments_as_string else args}}
        if tc.get("id") is not None:
            call["id"] = str(tc["id"])
        out.append(call)
    return out


def normalize_messages(messages: Any, reasoning_policy: str, shape: ToolCallShape = ToolCallShape()) -> list[_Msg]:
    """Check `messages` and convert them to what the template sees (tool calls in
    `shape`, see orchestrator/tool_args.py). Raises _Reject."""
    if not isinstance(messages, list) or not messages:
        raise _Reject("invalid_message", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Reject("invalid_message", f"{where} is not an object with a string 'role'")
        role = m["role"]
        if role not in KNOWN_ROLES:
            raise _Reject("unknown_role", f"{where} has role {role!r}; known roles are {', '.join(KNOWN_ROLES)}")
        content = _text_content(m.get("content"), where)
        data: dict[str, Any] = {"role": role, "content": content}
        for k in _KEPT_KEYS:
            if m.get(k) is not None:
                if not isinstance(m[k], str):
                    raise _Reject("invalid_message", f"{where}: {k} is a {type(m[k]).__name__}, expected a string")
                data[k] = m[k]
        prefix = reasoning = ""
        if role == "assistant":
            calls = _tool_calls(m["tool_calls"], where, shape) if m.get("tool_calls") else []
            if calls:
                data["tool_calls"] = calls
                if not content and shape.null_content:
                    data["content"] = None  # the template renders tool calls only for null content
            if not content and not calls:
                raise _Reject("empty_assistant_turn", f"{where} is an assistant turn with no content and no tool calls")
            r = m.get("reasoning_content") or m.get("reasoning") or ""
            if not isinstance(r, str):
                raise _Reject("invalid_message", f"{where}: reasoning is a {type(r).__name__}, expected a string")
            if r and reasoning_policy == "template":
                # both names, as transformers' apply_chat_template aliases them
                data["reasoning_content"] = data["thinking"] = reasoning = r
            elif r and reasoning_policy == "think_tags":
                reasoning = r
                prefix = f"<think>\n{r}\n</think>\n\n"
                data["content"] = prefix + content
        out.append(_Msg(data, role, content, prefix, reasoning))
    return out


# ---------------------------------------------------------------------------
# The reconstructor
# ---------------------------------------------------------------------------


@dataclass
class _Turn:
    """One trained turn, located in F (the render of the history through the turn)."""

    full: str  # F_k
    start: int  # first trained character in F_k (everything before is context)
    eot_start: int  # where the end-of-turn token starts in F_k
    end: int  # just after the end-of-turn token in F_k
    has_tool_calls: bool
    role: str


class Reconstructor:
    """Builds verified `Sample`s from teacher conversations with the student's template."""

    PROMPT_CACHE_SIZE = 1024
    #: With a constant after(True), the first prompt is still rendered for every this-many
    #: conversations and compared with the derivation.
    CROSS_CHECK_EVERY = 64

    def __init__(self, tokenizer, cfg: "Reconstruction", max_seq_len: int | None = None):
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or not template:
            raise ValueError("the student tokenizer has no chat template; reconstruction needs one. "
                             "Fix: add chat_template.jinja to the tokenizer folder")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.max_seq_len = max_seq_len if max_seq_len is not None else cfg.max_seq_len
        self.template = template
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is None:
            raise ValueError("reconstruction needs a fast (Rust) tokenizer with a tokenizer.json; "
                             f"got {type(tokenizer).__name__}. Fix: save the student tokenizer with tokenizers installed")
        self.train_roles = tuple(cfg.train_roles)
        self._token_bytes = _token_bytes(self.backend)  # None unless a checked byte-level decoder
        self.chat_template = ChatTemplate(template)
        self._derive_prefixes = True  # off only if a cross-check ever fails
        self._after_prompt: str | None = None  # after(True), once learnt (constant-after templates)
        self._template_kwargs = json.loads(json.dumps({**tokenizer.special_tokens_map, **cfg.chat_template_kwargs}))
        self._prompt_cache: dict[str, list[int]] = {}  # prompt text -> ids
        self._verified_prompts: dict[str, None] = {}  # prompt texts whose ids decoded back exactly
        self._render_cache: dict[str, Any] = {}  # messages JSON -> generation-prompt render (text or parts)
        added = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.content.strip()},
                       key=len, reverse=True)
        self._added_tokens = added
        self._special_re = re.compile("|".join(map(re.escape, added))) if added else None
        self.stats: collections.Counter = collections.Counter()
        self.eot, self.final_tail = self._probe_end_of_turn()
        self.tool_shape = probe_tool_call_shape(lambda msgs: self.render(msgs, None, False))
        # SentencePiece-style dummy prefix: later segments are tokenised without it
        # (orchestrator/segment_tokenize.py); None for tokenizers without one (BPE).
        self._prefix_rule = PrefixSpaceRule(self.backend, [self.eot] + added) if self._token_bytes is None else None
        self._continuation = self._prefix_rule.continuation if self._prefix_rule is not None else None
        self._anchor = [self.backend.token_to_id(self.eot)] if self._continuation is not None else []
        self.stats.clear()

    # -- template ----------------------------------------------------------

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
        _put_bounded(self._render_cache, key, out, self.PROMPT_CACHE_SIZE)
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
        return (lambda j: self._cached_prompt(data[:j], tools, parts=False)), (lambda j: self.render(data[:j], tools, False))

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
                print("warning: the student's chat template rendered a different generation prompt than before; "
                      "reconstruction now renders every prefix (please report this template)", file=sys.stderr)
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

    def _probe_end_of_turn(self) -> tuple[str, str]:
        """The end-of-turn token and the constant text the template puts after it at the end.

        Renders a probe conversation whose assistant content is a sentinel and reads
        what follows the sentinel: an added (special) token, or else the eos token.
        """
        probes = ([{"role": "user", "content": "Hi"}],
                  [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
        errors = []
        for head in probes:
            try:
                text = self.render(head + [{"role": "assistant", "content": _SENTINEL}], None, False)
            except Exception as e:  # noqa: BLE001 - any template error: try the next probe
                errors.append(f"{type(e).__name__}: {e}")
                continue
            if _SENTINEL not in text:
                errors.append("the template does not render assistant content")
                continue
            after = text[text.rindex(_SENTINEL) + len(_SENTINEL):]
            for tok in self._added_tokens + [self.tokenizer.eos_token or ""]:
                if tok and after.startswith(tok):
                    return tok, after[len(tok):]
            errors.append(f"after the assistant content the template renders {after!r}, "
                          "which does not start with a special token")
        raise ValueError("cannot work out the end-of-turn token from the student's chat template: "
                         + "; ".join(errors))

    # -- per turn ------------------------------------------------------------

    def _locate_turn(self, msgs: list[_Msg], data: list[dict], a: int, tools, renders) -> _Turn:
        m = msgs[a]
        prompt, full_render = renders
        try:
            full = full_render(a + 1)
            if m.role == "assistant":
                base = prompt(a)
            else:
                base = full_render(a) if a else ""
        except Exception as e:  # noqa: BLE001 - a template raising is data-dependent
            hint = hint_for_template_error(str(e), data, self.cfg.system_prompt)
            raise _Reject("template_error", f"rendering up to messages[{a}]: {type(e).__name__}: {e}{hint}") from None
        if not full.startswith(base):
            if m.role == "assistant":
                return self._opened_turn(data, a, tools, base, m)
            raise _Reject("template_mismatch", f"messages[{a}]: the template's render of the history before it is "
                                               f"not a prefix of its rendering of the turn (ends {base[-40:]!r})")
        eot = self._turn_end_token(full, base, a)
        end = len(full) - len(self.final_tail)
        eot_start = end - len(eot)
        seg = full[len(base):eot_start]
        placed = m.placed_prefix + m.content
        start = len(base)
        if m.role != "assistant" or not seg.startswith(placed):
            # Where does the template put the content? Render the turn with a sentinel
            # in its place and compare: no searching in the real text.
            lead = self._lead(data, a, tools, base, seg, m, eot)
            if m.role != "assistant":
                start += len(lead)  # the header before a non-assistant turn is context
        # What the template rendered besides the content itself: the tool calls and the
        # reasoning must be found there, not in a content that happens to mention them.
        rest = seg.replace(m.content, "", 1) if m.content else seg
        if m.reasoning and self.cfg.reasoning == "template" and m.reasoning.strip() not in rest:
            raise _Reject("reasoning_not_rendered",
                          f"messages[{a}]: the template did not render reasoning_content. "
                          "Fix: set reasoning = \"think_tags\" or \"drop\"")
        for call in m.data.get("tool_calls", []):
            name = call["function"]["name"]
            if name not in rest and self.tool_shape.null_content and m.content:
                raise _Reject("tool_calls_not_rendered",
                              f"messages[{a}]: the student's chat template renders tool calls only in turns "
                              f"without content (`content is none`), and this turn has content besides tool call "
                              f"{name!r}; no setting changes that. Fix: use a student whose template renders both, "
                              "or filter out such conversations")
            if name not in rest:
                raise _Reject("tool_calls_not_rendered",
                              f"messages[{a}]: the student's chat template does not render tool call {name!r}; "
                              "training would teach an empty turn. Fix: use a student whose template supports "
                              "tools, or filter out tool conversations")
        return _Turn(full, start, eot_start, end, bool(m.data.get("tool_calls")), m.role)

    def _opened_turn(self, data: list[dict], a: int, tools, base: str, m: _Msg) -> _Turn:
        """The turn after a generation prompt that opens a block the history render
        drops (DeepSeek-R1-Distill's "<think>\n"), proven by orchestrator/open_reasoning.py."""
        if m.data.get("tool_calls"):
            raise _Reject("template_mismatch", f"messages[{a}]: the generation prompt opens a reasoning block "
                                               f"(ends {base[-20:]!r}) and the turn has tool calls; the template "
                                               "cannot show how the student continues into a tool call")

        def render_with(content: str) -> str:
            msg = {k: v for k, v in data[a].items() if k not in ("reasoning_content", "thinking")}
            return self.render(data[:a] + [dict(msg, content=content)], tools, False)

        try:
            text = opened_turn(render_with, base, m.content, m.reasoning, self.eot, self.final_tail)
        except ValueError as e:
            try:
                hint = hint_for_mismatch(base, render_with(m.content), data, self.cfg.system_prompt)
            except Exception:  # noqa: BLE001 - only a hint
                hint = ""
            raise _Reject("template_mismatch", f"messages[{a}]: {e}{hint}") from None
        except Exception as e:  # noqa: BLE001 - a template raising is data-dependent
            raise _Reject("template_error", f"rendering messages[{a}]: {type(e).__name__}: {e}") from None
        self.stats["opened_reasoning_turns"] += 1
        full = base + text
        return _Turn(full, len(base), len(full) - len(self.eot), len(full), False, m.role)

    def _turn_end_token(self, full: str, base: str, a: int) -> str:
        """The token that ends this turn: the template's usual end-of-turn token, or
        another special token in its place (Llama 3.1 ends tool-call turns with
        <|eom_id|>), right before the template's constant final text."""
        tail = self.final_tail
        body = full[: len(full) - len(tail)] if full.endswith(tail) else None
        if body is not None:
            for tok in (self.eot, *self._added_tokens):
                if body.endswith(tok) and len(body) - len(tok) >= len(base):
                    if tok != self.eot:
                        self.stats["other_end_token"] += 1
                    return tok
        raise _Reject("missing_end_token", f"messages[{a}]: the rendered turn does not end with a special token "
                                           f"such as {self.eot!r} followed by {tail!r} (ends {full[-40:]!r})")

    def _lead(self, data: list[dict], a: int, tools, base: str, seg: str, m: _Msg, eot: str) -> str:
        probe = dict(data[a], content=m.placed_prefix + _SENTINEL)
        try:
            full_s = self.render(data[:a] + [probe], tools, False)
        except Exception as e:  # noqa: BLE001
            raise _Reject("template_error", f"rendering messages[{a}]: {type(e).__name__}: {e}") from None
        end_s = len(full_s) - len(eot + self.final_tail)
        ok = full_s.startswith(base) and full_s.endswith(eot + self.final_tail) and end_s >= len(base)
        seg_s = full_s[len(base):end_s] if ok else ""
        i = seg_s.find(_SENTINEL)
        if i < 0 or seg_s[:i] + m.content + seg_s[i + len(_SENTINEL):] != seg:
            how = "does not render the content verbatim"
            if i >= 0 and seg_s[:i] + m.content.strip() + seg_s[i + len(_SENTINEL):] == seg:
                how = ("trims whitespace from the content (`| trim`, as Llama 3's does), so the student would "
                       "learn different text; no setting changes that: strip the content at its source, or use a "
                       "student whose template keeps it")
            raise _Reject("template_alters_content",
                          f"messages[{a}] ({m.role}): the template {how} (content starts {m.content[:30]!r})")
        return seg_s[:i]

    # -- public --------------------------------------------------------------

    def build(self, messages: list[dict], tools: list[dict] | None = None, *, sample_id: str,
              prompt_id: str = "", sample_index: int = 0, finish_reason: str | None = None,
              reward: float | None = None, teacher_model: str | None = None,
              meta: dict | None = None) -> tuple[list[Sample], list[Rejection]]:
        """Samples for one conversation (several when split), and rejections."""
        return self.build_many([dict(messages=messages, tools=tools, sample_id=sample_id, prompt_id=prompt_id,
                                     sample_index=sample_index, finish_reason=finish_reason, reward=reward,
                                     teacher_model=teacher_model, meta=meta)])[0]

    #: build_many works in chunks of this many conversations: while the tokenizer (Rust,
    #: without the GIL) encodes one chunk in a helper thread, Python renders the next.
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
        chunk = self.PIPELINE_CHUNK
        if len(conversations) <= chunk:
            pending = self._prepare_chunk(conversations, 0, results)
            self._complete(pending, self._encode([p for _, p in pending]), results)
            return results
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-encode") as pool:
            previous = None
            for start in range(0, len(conversations), chunk):
                pending = self._prepare_chunk(conversations[start: start + chunk], start, results)
                encoded = pool.submit(self._encode, [p for _, p in pending])  # one at a time: _encode owns its cache
                if previous is not None:
                    self._complete(previous[0], previous[1].result(), results)
                previous = (pending, encoded)
            self._complete(previous[0], previous[1].result(), results)
        return results

    def _prepare_chunk(self, conversations: list[dict], base: int, results: list) -> list[tuple[int, "_Pending"]]:
        pending: list[tuple[int, _Pending]] = []
        for ci, conv in enumerate(conversations, base):
            plans, rejections = self._prepare(**conv)
            results.append(([], rejections))
            pending += [(ci, p) for p in plans]
        return pending

    def _complete(self, pending: list[tuple[int, "_Pending"]], seg_ids: list[list[list[int]]],
                  results: list) -> None:
        """Self-check the tokenised samples and add them (or their rejections) to `results`."""
        checks = self._roundtrip([p for _, p in pending], seg_ids)
        for (ci, p), ids, check in zip(pending, seg_ids, checks):
            try:
                if check is not None:
                    raise check
                completion = list(itertools.chain.from_iterable(ids[1:]))
                mask: list[int] = []
                for x, trained in zip(ids[1:], p.trained[1:]):
                    mask += [1 if trained else 0] * len(x)
                s = self._finish(p, ids[0], completion, mask)
            except _Reject as r:
                results[ci][1].append(self._reject(p.sid, r))
                continue
            results[ci][0].append(s)
            self.stats["samples"] += 1
            if p.split:
                self.stats["split_samples"] += 1

    def _reject(self, item_id: str, r: _Reject) -> Rejection:
        self.stats[f"rejected:{r.reason}"] += 1
        return Rejection(item_id, r.reason, r.detail)

    def _prepare(self, messages, tools=None, *, sample_id: str, prompt_id: str = "", sample_index: int = 0,
                 finish_reason: str | None = None, reward: float | None = None,
                 teacher_model: str | None = None, meta: dict | None = None):
        """Render and cut one conversation into per-sample segment texts (no tokens yet)."""
        self.stats["conversations"] += 1
        try:
            groups, turns = self._plan(messages, tools, finish_reason)
        except _Reject as r:
            return [], [self._reject(sample_id, r)]
        split = len(groups) > 1
        if split:
            self.stats["split"] += 1
        plans = []
        for group in groups:
            is_last = group[-1] == len(turns) - 1
            extra: dict[str, Any] = {"turns": len(group)}
            if split:
                extra.update(split_from=sample_id, first_turn=group[0] + 1)
            keep_open = is_last and finish_reason == "length" and turns[-1].role == "assistant"
            texts, trained = self._segments([turns[k] for k in group], keep_open)
            try:
                utf8 = [t.encode("utf-8") for t in texts]
            except UnicodeEncodeError:
                r = _Reject("invalid_text", f"{_where_not_unicode(messages, tools)} holds a lone surrogate "
                                            "(not valid Unicode, so no tokenizer can encode it). Fix: repair or "
                                            "drop the text at its source")
                return [], [self._reject(sample_id, r)]
            plans.append(_Pending(
                sid=f"{sample_id}/turn{group[0] + 1}" if split else sample_id, texts=texts, utf8=utf8,
                trained=trained,
                keep_open=keep_open, split=split, meta={**(meta or {}), **extra},
                fields=dict(prompt_id=prompt_id, sample_index=sample_index, reward=reward,
                            teacher_model=teacher_model,
                            finish_reason=finish_reason if is_last else
                            ("tool_calls" if turns[group[-1]].has_tool_calls else "stop"))))
        return plans, []

    def _plan(self, messages, tools, finish_reason):
        if self.cfg.system_prompt == "merge_into_first_user":
            messages = merge_system_into_first_user(messages)
        msgs = normalize_messages(messages, self.cfg.reasoning, self.tool_shape)
        tools = _plain_tools(tools)
        if self._special_re is not None and self.cfg.special_tokens_in_content == "reject":
            self._check_special(msgs, tools)
        trained = [i for i, m in enumerate(msgs) if m.role in self.train_roles]
        if not trained:
            raise _Reject("no_trained_turn", f"no message has a role in train_roles {list(self.train_roles)}")
        msgs = msgs[: trained[-1] + 1]  # context after the last trained turn trains nothing
        if finish_reason == "length" and self.cfg.truncated == "drop" and msgs[-1].role == "assistant":
            raise _Reject("truncated", "the last assistant turn stopped at the length limit (finish_reason=length)")
        data = [m.data for m in msgs]
        renders = self._prefix_renders(data, tools, trained[0])
        turns = [self._locate_turn(msgs, data, a, tools, renders) for a in trained]
        groups = [[0]]
        for k in range(1, len(turns)):
            prev, cur = turns[k - 1], turns[k]
            if prev.end <= cur.start and cur.full.startswith(prev.full[: prev.end]):
                groups[-1].append(k)
            else:
                groups.append([k])
        if len(groups) > 1 and self.cfg.on_history_rewrite == "reject":
            k = groups[1][0]
            raise _Reject("history_rewrite", f"the template renders the history before trained turn {k + 1} "
                                             f"(messages[{trained[k]}]) differently from how it rendered turn {k}")
        return groups, turns

    def _check_special(self, msgs: list[_Msg], tools) -> None:
        for i, m in enumerate(msgs):
            texts = [without_thinking_tags(m.content) if m.role == "assistant" else m.content, m.reasoning]
            texts += [json.dumps(tc["function"], ensure_ascii=False) for tc in m.data.get("tool_calls", [])]
            for t in texts:
                hit = t and self._special_re.search(t)
                if hit:
                    raise _Reject("special_token_in_content",
                                  f"messages[{i}] ({m.role}) contains the special token text {hit.group()!r}. "
                                  "Fix: clean the data, or set special_tokens_in_content = \"allow\"")
        if tools:
            hit = self._special_re.search(json.dumps(tools, ensure_ascii=False))
            if hit:
                raise _Reject("special_token_in_content", f"tools contain the special token text {hit.group()!r}")

    @staticmethod
    def _segments(turns: list[_Turn], keep_open: bool) -> tuple[list[str], list[bool]]:
        """Prompt, then (trained turn, context) alternately, ending with a trained turn."""
        texts = [turns[0].full[: turns[0].start]]
        trained = [False]
        for j, t in enumerate(turns):
            if j:
                texts.append(t.full[turns[j - 1].end: t.start])
                trained.append(False)
            texts.append(t.full[t.start: t.eot_start if (keep_open and j == len(turns) - 1) else t.end])
            trained.append(True)
        return texts, trained

    def _encode(self, pending: list["_Pending"]) -> list[list[list[int]]]:
        """Token ids of every segment, each tokenised on its own, in one batch call.

        Prompts repeat (n samples per prompt, shared system prompts), so their ids are
        kept in a small cache keyed by the prompt text.
        """
        prompts: dict[str, list[int] | None] = {}
        todo: list[str] = []
        for p in pending:
            t = p.texts[0]
            if t not in prompts:
                prompts[t] = self._prompt_cache.get(t)
                if prompts[t] is None:
                    todo.append(t)
            todo.extend(p.texts[1:])
        if self._continuation is not None:  # trained turns without the dummy prefix (segment_tokenize.py)
            firsts = [t for t, ids in prompts.items() if ids is None]
            for t, e in zip(firsts, self.backend.encode_batch_fast(firsts, add_special_tokens=False)):
                prompts[t] = e.ids
            rest = [(t, f) for p in pending for t, f in zip(p.texts[1:], p.trained[1:])]
            encs = iter(self._prefix_rule.encode_after_prompt(self.backend, rest))
        else:
            encs = iter(self.backend.encode_batch_fast(todo, add_special_tokens=False) if todo else [])
        out = []
        for p in pending:
            prompt = prompts[p.texts[0]]
            if prompt is None:
                prompt = prompts[p.texts[0]] = next(encs).ids
            out.append([prompt] + [next(encs).ids for _ in p.texts[1:]])
        for t, ids in prompts.items():
            _put_bounded(self._prompt_cache, t, ids, self.PROMPT_CACHE_SIZE)
        return out

    def _roundtrip(self, pending: list["_Pending"], seg_ids: list[list[list[int]]]) -> list["_Reject | None"]:
        """Self-check of every sample: decoding all its tokens gives back the rendered
        text, and decoding its trained tokens gives back the trained text exactly.

        With a byte-level decoder (GPT-2 style) decoding is the UTF-8 of the tokens'
        bytes concatenated, so a sample whose every segment's token bytes are exactly its
        text's UTF-8 passes both checks; the bytes come from a table checked against the
        tokenizer's own decoder when the Reconstructor was made (_token_bytes). Samples
        where that does not hold, and every sample with another decoder, are checked by
        decoding the whole and the trained token sequences with the tokenizer. A prompt
        text seen to pass is not checked again (tokenisation is deterministic: same ids)."""
        out: list[_Reject | None] = [None] * len(pending)
        todo: Any = range(len(pending))
        table = self._token_bytes
        if table is not None:
            todo = []
            verified = self._verified_prompts
            for n, (p, ids) in enumerate(zip(pending, seg_ids)):
                known = p.texts[0] in verified
                if not _bytes_match(table, p.utf8, ids, 1 if known else 0):
                    todo.append(n)
                elif not known:
                    _put_bounded(verified, p.texts[0], None, self.PROMPT_CACHE_SIZE)
        seqs = []
        for n in todo:
            ids = seg_ids[n]
            seqs.append(list(itertools.chain.from_iterable(ids)))
            seqs.append(self._anchor + [i for x, f in zip(ids, pending[n].trained) if f for i in x])
        decoded = self.backend.decode_batch(seqs, skip_special_tokens=False) if seqs else []
        rule = self._prefix_rule if self._continuation is not None else None
        for j, n in enumerate(todo):
            try:
                self._self_check(pending[n], decoded[2 * j], decoded[2 * j + 1], rule, self.eot)
            except _Reject as r:
                out[n] = r
        return out

    @staticmethod
    def _self_check(p: "_Pending", got_all: str, got_masked: str, rule: PrefixSpaceRule | None = None,
                    anchor: str = "") -> None:
        """The tokens must say exactly what the template rendered (with a dummy-prefix
        rule: the prompt as the rule says its tokens decode, the trained tokens decoded
        after the end-of-turn token as an anchor; orchestrator/segment_tokenize.py)."""
        full = "".join(p.texts) if rule is None else rule.expected_text(p.texts, p.trained)
        masked = (anchor if rule is not None else "") + "".join(x for x, f in zip(p.texts, p.trained) if f)
        if got_all == full and got_masked == masked:
            return
        bad, ref = (got_all, full) if got_all != full else (got_masked, masked)
        pos = next((i for i, (x, y) in enumerate(zip(bad, ref)) if x != y), min(len(bad), len(ref)))
        raise _Reject("roundtrip_mismatch",
                      f"decoding the tokens differs from the rendered text at char {pos}: {bad[pos:pos + 20]!r} "
                      f"vs {ref[pos:pos + 20]!r} (the tokenizer cannot represent this text exactly)")

    def _finish(self, p: "_Pending", prompt_ids: list[int], completion_ids: list[int], mask: list[int]) -> Sample:
        meta = dict(p.meta)
        if p.keep_open:
            meta["truncated_turn"] = True
            self.stats["truncated_kept"] += 1
        n = len(prompt_ids) + len(completion_ids)
        if self.max_seq_len is not None and n > self.max_seq_len:
            if self.cfg.overlong == "drop":
                raise _Reject("overlong", f"{n} tokens > max_seq_len {self.max_seq_len}")
            keep = self.max_seq_len - len(prompt_ids)
            if keep <= 0 or not any(mask[:keep]):
                raise _Reject("overlong", f"{n} tokens > max_seq_len {self.max_seq_len}, and the prompt "
                                          f"({len(prompt_ids)} tokens) leaves nothing trainable")
            completion_ids, mask = completion_ids[:keep], mask[:keep]
            meta["truncated_from"] = n
            self.stats["overlong_truncated"] += 1
        if not any(mask):
            raise _Reject("no_trained_tokens", "no trained token in this sample")
        return Sample(sample_id=p.sid, prompt_ids=list(prompt_ids), completion_ids=completion_ids,
                      completion_mask=mask, meta=meta, **p.fields)


@dataclass
class _Pending:
    """One sample to be: its segment texts (prompt first) and which are trained."""

    sid: str
    texts: list[str]
    utf8: list[bytes]  # each text's UTF-8 (the token-bytes self-check compares with it)
    trained: list[bool]
    keep_open: bool
    split: bool
    meta: dict[str, Any]
    fields: dict[str, Any]


def _put_bounded(cache: dict, key: Any, value: Any, size: int) -> None:
    """cache[key] = value, then the oldest entries (insertion order) dropped beyond `size`."""
    cache[key] = value
    while len(cache) > size:
        cache.pop(next(iter(cache)))


def _bytes_match(table: list, utf8: list[bytes], seg_ids: list[list[int]], first: int) -> bool:
    """Whether the tokens of each segment (from `first` on) are exactly its text's UTF-8."""
    get = table.__getitem__
    try:
        return all(b"".join(map(get, ids)) == text for text, ids in zip(utf8[first:], seg_ids[first:]))
    except (TypeError, IndexError):  # an id the table has no bytes for
        return False


def _where_not_unicode(messages: list, tools: Any) -> str:
    """Which message (or the tools) holds text that cannot be UTF-8 encoded."""
    for i, m in enumerate(messages):
        try:
            json.dumps(m, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            return f"messages[{i}]"
    return "tools" if tools else "the rendered text"


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte in a
    token's string (printable Latin-1 characters for themselves, the other bytes
    shifted to U+0100 onwards)."""
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(0x100, 0x200))
    return {chr(b) if b in kept else chr(next(shifted)): b for b in range(256)}


_TOKEN_BYTES_CACHE: dict[tuple, list[bytes | None] | None] = {}


def _token_bytes(backend) -> list[bytes | None] | None:
    """_token_bytes_uncached, kept per process for each distinct tokenizer (the key is
    its full serialisation, so an edited tokenizer is a different one)."""
    try:
        key = (type(backend), hashlib.sha256(backend.to_str().encode("utf-8")).digest())
    except Exception:  # noqa: BLE001 - cannot serialise it: no caching
        return _token_bytes_uncached(backend)
    if key not in _TOKEN_BYTES_CACHE:
        _put_bounded(_TOKEN_BYTES_CACHE, key, _token_bytes_uncached(backend), 4)
    return _TOKEN_BYTES_CACHE[key]


def _token_bytes_uncached(backend) -> list[bytes | None] | None:
    """The bytes of every token id, when the tokenizer's decoder is exactly GPT-2's
    byte-level one (SmolLM2, Llama 3, Qwen): that decoder maps each character of each
    token's string to a byte (or, for a token with a character outside the alphabet,
    takes the string's UTF-8) and decodes the concatenation as UTF-8, so the bytes of a
    token sequence are the concatenation of the table's entries.

    Nothing here is taken on trust: the alphabet is checked on the decoder itself, each
    byte in a context where it is valid UTF-8 (bytes that never occur in valid UTF-8 can
    never match a text, so they need no check), and every id's single-token decode is
    compared with its entry. Any disagreement, or another kind of decoder: None, and the
    self-check decodes with the tokenizer instead."""
    if not _is_byte_level(backend):
        return None
    alphabet = _gpt2_byte_chars()
    char_of = {b: c for c, b in alphabet.items()}
    contexts = []  # (token strings, expected text): each byte inside valid UTF-8
    for b in range(256):
        if b < 0x80:
            seq = [b]
        elif b < 0xC0:
            seq = [0xC2, b]
        elif 0xC2 <= b < 0xE0:
            seq = [b, 0x80]
        elif 0xE0 <= b < 0xF0:
            seq = [b, 0xA0 if b == 0xE0 else 0x80, 0x80]
        elif 0xF0 <= b < 0xF5:
            seq = [b, 0x90 if b == 0xF0 else 0x80, 0x80, 0x80]
        else:
            continue  # 0xC0, 0xC1, 0xF5-0xFF: never in valid UTF-8
        contexts.append(([char_of[x] for x in seq], bytes(seq).decode("utf-8")))
    try:
        if any(backend.decoder.decode(toks) != text for toks, text in contexts):
            return None
        vocab = backend.get_vocab(with_added_tokens=True)
        table: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        # A token's string -> bytes: translate the alphabet to Latin-1, in which every other
        # character fails to encode (the token then stands for its own UTF-8).
        to_latin1 = {ord(c): b for c, b in alphabet.items()}
        to_latin1.update({x: 0x100 for x in range(0x100) if x not in to_latin1})
        for token, i in vocab.items():
            try:
                table[i] = token.translate(to_latin1).encode("latin-1")
            except UnicodeEncodeError:
                table[i] = token.encode("utf-8")
        ids = [i for i, t in enumerate(table) if t is not None]
        decoded = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    except Exception:  # noqa: BLE001 - a decoder or vocabulary we cannot read: decode with the tokenizer
        return None
    if any(table[i].decode("utf-8", "replace") != d for i, d in zip(ids, decoded)):
        return None
    return table


def _is_byte_level(backend) -> bool:
    """Whether the tokenizer's decoder is exactly GPT-2's byte-level one (see _token_bytes)."""
    try:
        from tokenizers import decoders

        return isinstance(backend.decoder, decoders.ByteLevel)
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def _plain_tools(tools: Any) -> list[dict] | None:
    """Tools as plain JSON data (what the template may see), or a rejection."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _Reject("invalid_message", "tools must be a list of objects (JSON schemas)")
    try:
        return json.loads(json.dumps(tools))
    except (TypeError, ValueError) as e:
        raise _Reject("invalid_message", f"tools are not JSON data ({e})") from None


# ---------------------------------------------------------------------------
# File front end: `distill tokenize`
# ---------------------------------------------------------------------------


def tokenize_file(tokenizer_dir: str, input_path: str, output_path: str,
                  cfg: "Reconstruction | None" = None) -> dict:
    """Reconstruct every conversation of a JSONL file; write samples and rejections as JSONL.

    Input lines: {"messages": [...], "tools": [...]?, "finish_reason": "..."?}.
    Output lines: {"prompt_ids", "completion_ids", "completion_mask", "line": N} per
    sample, or {"line": N, "error": "<reason>: <detail>"}. N is the 1-based input line.
    The output appears atomically (temp file + rename). Returns counts by reason.
    """
    from distill.config import Reconstruction
    from orchestrator.student import load_tokenizer

    cfg = cfg if cfg is not None else Reconstruction()
    recon = Reconstructor(load_tokenizer(tokenizer_dir), cfg)
    out_lines: list[str] = []
    counts: collections.Counter = collections.Counter()
    batch: list[tuple[int, Conversation]] = []

    def flush() -> None:
        results = recon.build_many([conv for _, conv in batch])
        for (n, _), (samples, rejections) in zip(batch, results):
            for s in samples:
                out_lines.append(json.dumps({"prompt_ids": s.prompt_ids, "completion_ids": s.completion_ids,
                                             "completion_mask": s.completion_mask, "line": n}))
            for r in rejections:
                out_lines.append(json.dumps({"line": n, "error": f"{r.reason}: {input_path}:{n}: {r.detail}"},
                                            ensure_ascii=False))
        batch.clear()

    with open(input_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                counts["blank_lines"] += 1
                continue
            counts["lines"] += 1
            rec, err = _parse_line(line, input_path, n)
            if err is not None:
                flush()  # keep output in input order
                out_lines.append(json.dumps({"line": n, "error": f"{err.reason}: {err.detail}"}, ensure_ascii=False))
                counts[f"rejected:{err.reason}"] += 1
                continue
            batch.append((n, Conversation(rec["messages"], rec.get("tools"), sample_id=f"line{n}",
                                          finish_reason=rec.get("finish_reason"))))
            if len(batch) >= 256:
                flush()
    flush()
    atomic_write_text(output_path, "".join(x + "\n" for x in out_lines))
    for k, v in recon.stats.items():
        if k != "conversations":
            counts[k] += v
    rejected = sum(v for k, v in counts.items() if k.startswith("rejected:"))
    return {"input": str(input_path), "output": str(output_path), "lines": counts.pop("lines", 0),
            "samples": counts.pop("samples", 0), "rejected": rejected,
            "by_reason": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("rejected:")},
            **{k: v for k, v in sorted(counts.items()) if not k.startswith("rejected:")}}


def _parse_line(line: str, path: str, n: int) -> tuple[dict | None, _Reject | None]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return None, _Reject("invalid_json", f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        return None, _Reject("invalid_line", f"{path}:{n}: expected an object with a 'messages' list")
    if rec.get("finish_reason") is not None and not isinstance(rec["finish_reason"], str):
        return None, _Reject("invalid_line", f"{path}:{n}: 'finish_reason' must be a string")
    return rec, None


__all__ = ["Reconstructor", "REJECTION_REASONS", "normalize_messages", "tokenize_file"]
