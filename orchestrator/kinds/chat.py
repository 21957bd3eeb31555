"""The chat-completions request kind: messages (+ tools, sampling args) in, choices back.

    ChatKind (name "chat")   send: POST {base_url}/chat/completions through the SDK (n = args["n"])
                             parse: read_choices + read_usage -> ChatAnswer(choices, bad slots by reason, usage,
                                    model, id, usage_estimated, extra_choices)

A body unusable as a whole is a retryable TeacherError ("malformed_response", "empty_response", or,
when no choice is usable, the first unusable choice's reason); a partial answer keeps its usable
choices and reports the others by slot in `bad` (empty_content, null_message, malformed_choice),
for the caller to ask again; choices beyond those asked for are dropped and counted (extra_choices).
A `usage` missing or not usable never discards an answer: it is counted at the estimate
(usage_estimated; read_usage, estimated_usage). `TeacherClient.complete` (orchestrator/client.py)
is this kind on a Transport, returning a TeacherResponse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

from distill.core.conversation import cut_short
from orchestrator.content_parts import joined_thinking
from orchestrator.legacy_functions import LegacyError, as_tool_call
from orchestrator.transport import Delivery, RawResponse, ResponseError, error_message


@dataclass
class Choice:
    index: int
    message: dict[str, Any]  # role, content, reasoning_content, tool_calls
    finish_reason: str | None


@dataclass
class ChatRequest:
    messages: list[dict]
    tools: list[dict] | None = None
    args: dict[str, Any] = field(default_factory=dict)  # sampling args sent (n, max_tokens, seed, ...)
    extra_body: dict[str, Any] | None = None
    want: int = 1  # choices asked for: the slots 0..want-1 (see parse_choices)
    est_prompt: float | None = None  # prompt tokens reserved per attempt; None: estimated from the messages
    est_completion: float = 0.0  # completion tokens reserved per attempt


@dataclass
class ChatAnswer:
    choices: list[Choice]  # the usable ones; Choice.index is the slot (sample position) each answers
    bad: dict[int, str]  # slot -> why that choice was unusable
    usage: dict[str, int]
    model: str | None
    response_id: str | None
    # why `usage` holds estimates (the body reported no usable usage; see estimated_usage), else None
    usage_estimated: str | None = None
    extra_choices: int = 0  # choices beyond the `want` asked for: paid for, not kept (see _slots)


@dataclass
class TeacherResponse:
    choices: list[Choice]  # the usable ones; Choice.index is the slot (sample position) each answers
    bad: dict[int, str]  # slot -> why that choice was unusable (empty_content, null_message, malformed_choice)
    usage: dict[str, int]
    model: str | None
    endpoint: str
    request_id: str | None
    sent: dict[str, Any]  # sampling args sent (without messages/model)
    t_start: float
    t_end: float
    attempts: int = 1
    usage_estimated: str | None = None  # why `usage` is the request's estimate (none reported usably), else None


#: Message keys that only distill reads and no chat API takes: OpenAI fine-tuning's per-message
#: "weight" (0: a turn kept as context, not trained). A strict API (OpenAI's) refuses a request
#: whose messages hold a key it does not know, so these stay in the recording, not on the wire.
LOCAL_MESSAGE_KEYS = frozenset({"weight"})


def wire_messages(messages: list[dict]) -> list[dict]:
    """`messages` as sent to the teacher: without LOCAL_MESSAGE_KEYS (the same list when none has one)."""
    if not any(k in m for m in messages if isinstance(m, dict) for k in LOCAL_MESSAGE_KEYS):
        return messages
    return [{k: v for k, v in m.items() if k not in LOCAL_MESSAGE_KEYS} if isinstance(m, dict) else m for m in messages]


def estimate_prompt_tokens(messages: list[dict]) -> float:
    """A rough prompt size for budgets and the tokens-per-minute bucket: 4 characters of JSON a token."""
    return len(json.dumps(messages, ensure_ascii=False)) / 4.0


class ChatKind:
    """Chat completions through the SDK (implements transport.RequestKind[ChatRequest, ChatAnswer])."""

    name = "chat"

    def estimate(self, req: ChatRequest) -> tuple[float, float]:
        est_p = estimate_prompt_tokens(req.messages) if req.est_prompt is None else req.est_prompt
        return est_p, req.est_completion

    async def send(self, client: AsyncOpenAI, model: str, req: ChatRequest) -> RawResponse:
        kw = dict(req.args)
        if req.tools:
            kw["tools"] = req.tools
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=wire_messages(req.messages), extra_body=req.extra_body or None, **kw
        )
        return raw.http_response

    def parse(self, body: bytes, req: ChatRequest) -> ChatAnswer:
        """The answer; usage the body does not report usably is the estimate (estimated_usage), with why."""
        d, choices, bad = read_choices(body, req.want)
        counts, why = read_usage(d, completion_cap(req, len(d["choices"])))
        usage = estimated_usage(counts, req, choices) if why else {k: v or 0 for k, v in counts.items()}
        extra = max(0, len(d["choices"]) - req.want)
        return ChatAnswer(choices, bad, usage, d.get("model"), d.get("id"), usage_estimated=why, extra_choices=extra)


def estimated_usage(counts: dict[str, int | None], req: ChatRequest, choices: list[Choice]) -> dict[str, int]:
    """`counts` with each count the body did not report usably (None) replaced by the request's estimate,
    rounded up: the prompt's, and the completion tokens reserved (with max_tokens set an upper bound:
    max_tokens x n); without max_tokens at least the answer's own size (its JSON characters / 4)."""
    est_p, est_c = ChatKind().estimate(req)
    if "max_tokens" not in req.args and "max_completion_tokens" not in req.args:
        est_c = max(est_c, estimate_prompt_tokens([c.message for c in choices]))
    est = {"prompt_tokens": est_p, "completion_tokens": est_c}
    return {k: v if v is not None else math.ceil(est[k]) for k, v in counts.items()}


def to_response(d: Delivery[ChatAnswer], req: ChatRequest) -> TeacherResponse:
    """The TeacherResponse of a delivered chat request (`sent`: its sampling args, extra_body nested)."""
    sent = dict(req.args)
    if req.extra_body:
        sent["extra_body"] = req.extra_body
    a = d.answer
    return TeacherResponse(
        choices=a.choices,
        bad=a.bad,
        usage=a.usage,
        model=a.model,
        endpoint=d.endpoint,
        request_id=d.request_id,
        sent=sent,
        t_start=d.t_start,
        t_end=d.t_end,
        attempts=d.attempts,
        usage_estimated=a.usage_estimated,
    )


def parse_completion(
    body: bytes | str, want_choices: int
) -> tuple[list[Choice], dict[str, int], str | None, str | None]:
    """The usable choices of a chat-completions body (see parse_choices, whose unusable ones it drops)."""
    choices, _, usage, model, rid = parse_choices(body, want_choices)
    return choices, usage, model, rid


def parse_choices(body: bytes | str, want_choices: int):
    """Validate a chat-completions body: (usable choices, {slot: reason} of unusable ones, usage, model, id).

    A choice's slot (its `index`, or its position when the indices are not distinct 0..want-1) is the
    sample it answers; slots under want_choices that are in neither are missing from the body. Raises
    ResponseError (a TeacherError; retryable) when the body is unusable as a whole ("malformed_response", "empty_response") or no
    choice is usable (the first unusable choice's reason: empty_content, null_message, malformed_choice).
    A usage count the body does not report usably reads 0 here (ChatKind.parse counts it at the estimate).
    """
    d, choices, bad = read_choices(body, want_choices)
    counts, _ = read_usage(d)
    return choices, bad, {k: v or 0 for k, v in counts.items()}, d.get("model"), d.get("id")


def read_choices(body: bytes | str, want_choices: int) -> tuple[dict, list[Choice], dict[int, str]]:
    """The body as an object, its usable choices and {slot: reason} of the unusable ones (see parse_choices)."""
    try:
        d = json_object(body)
        raw = d.get("choices")
        if not isinstance(raw, list) or not raw:
            raise ResponseError("empty_response", "response has no choices")
        choices, bad = [], {}
        for slot, c in _slots(raw, want_choices):
            try:
                choices.append(_parse_choice(c, slot))
            except ResponseError as e:
                bad[slot] = (e.reason, e.detail)
        if not choices:
            first = min(bad)
            raise ResponseError(bad[first][0], f"no usable choice in the response ({bad[first][1]})")
    except (TypeError, ValueError, AttributeError, OverflowError) as e:  # wrong types inside (usage, ...)
        raise ResponseError(
            "malformed_response", f"response body has an unexpected shape ({type(e).__name__}: {e})"
        ) from None
    return d, choices, {k: r for k, (r, _) in bad.items()}


USAGE_KEYS = ("prompt_tokens", "completion_tokens")
#: A usage count above this is not believed (2**40 tokens: no answer is that long).
MAX_USAGE_TOKENS = 2**40
#: Nor completion tokens above max_tokens x choices x this (a generous margin for servers that count
#: differently, e.g. reasoning tokens or choices beyond n).
COMPLETION_SLACK = 4


def completion_cap(req: ChatRequest, choices_in_body: int) -> int | None:
    """The most completion tokens an answer to `req` can plausibly report; None without max_tokens."""
    mt = req.args.get("max_tokens") or req.args.get("max_completion_tokens")
    if type(mt) is not int or mt <= 0:
        return None
    return mt * max(req.want, choices_in_body) * COMPLETION_SLACK


def read_usage(d: dict, cap: int | None = None) -> tuple[dict[str, int | None], str | None]:
    """The body's usage counts (None: not reported, or not usable: see usable_count; completion tokens
    above `cap`) and, when one is None, why in words. Usage never makes the answer unusable."""
    u = d.get("usage")
    if not isinstance(u, dict):
        return dict.fromkeys(USAGE_KEYS), "the response has no usage" if u is None else "its usage is not an object"
    counts: dict[str, int | None] = {}
    why = []
    for k in USAGE_KEYS:
        v, n = u.get(k), usable_count(u.get(k))
        if n is not None and k == "completion_tokens" and cap is not None and n > cap:
            n = None
            why.append(f"{k} = {_shown(v)}, more than {COMPLETION_SLACK} x max_tokens x choices ({cap})")
        elif n is None:
            why.append(f"no {k}" if v is None else f"{k} = {_shown(v)}, not a count of tokens")
        counts[k] = n
    return counts, ("its usage has " + " and ".join(why)) if why else None


def usable_count(v: Any) -> int | None:
    """A usage count: a finite, non-negative, whole number (int, or a float such as 12.0) of at most
    MAX_USAGE_TOKENS; else None (absent, a string, a bool, negative, fractional, NaN, Infinity, absurd)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        return None
    return int(v) if 0 <= v <= MAX_USAGE_TOKENS else None


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def token_count(v: Any) -> int:
    """A `usage` count: a whole number of tokens, 0 when absent; ValueError (or OverflowError for
    Infinity) when it is not one: a negative count would credit the budget."""
    n = int(v or 0)
    if n < 0:
        raise ValueError(f"token count {v!r} is negative")
    return n


def not_json(body: bytes | str, e: Exception) -> str:
    """Why a 200 body is not JSON, in words a user can act on: a stream of server-sent events (the
    server or a proxy streams though no stream was asked for), an HTML page (base_url reaches a web
    page: a login or proxy page, a UI), else the parser's error and the body's first characters."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    head = text.lstrip()[:200].lower()
    if head.startswith(("data:", "event:")):
        return (
            "response body is a server-sent event stream, not JSON: the server (or a proxy in between) "
            "streams although no stream was asked for"
        )
    if head.startswith(("<!doctype html", "<html", "<head", "<body")):
        return "response body is an HTML page, not JSON: base_url reaches a web page (a login or proxy page?)"
    if not head:
        return "response body is " + ("blank (only whitespace)" if text else "empty") + ", not JSON"
    return f"response body is not JSON ({e}); it starts {text.lstrip()[:60]!r}"


def json_object(body: bytes | str) -> dict:
    """A 200 body as a JSON object; ResponseError (retried) when it is not one or carries an error object."""
    try:
        d = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResponseError("malformed_response", not_json(body, e)) from None
    if not isinstance(d, dict):
        raise ResponseError("malformed_response", f"response body is a {type(d).__name__}, not an object")
    if "error" in d and not d.get("choices"):
        raise ResponseError("malformed_response", f"error object in a 200 response: {error_message(d)}")
    return d


def _slots(raw: list, want: int) -> list[tuple[int, Any]]:
    """(slot, choice) for the first `want` slots: by `index` when the indices are distinct ints in
    0..want-1 (a choice left out then leaves its slot empty), else by position."""
    idx = [c.get("index") if isinstance(c, dict) else None for c in raw]
    if all(type(i) is int and 0 <= i < want for i in idx) and len(set(idx)) == len(idx):
        return sorted(zip(idx, raw), key=lambda t: t[0])
    return list(enumerate(raw))[:want]


def _parse_choice(c: Any, slot: int) -> Choice:
    """One choice; ResponseError(empty_content / null_message / malformed_choice) when it is unusable."""
    if not isinstance(c, dict):
        raise ResponseError("malformed_choice", f"choice {slot} is a {type(c).__name__}, not an object")
    m = c.get("message")
    if m is None:
        raise ResponseError("null_message", f"choice {slot} has no message")
    if not isinstance(m, dict):
        raise ResponseError("malformed_choice", f"choice {slot}'s message is a {type(m).__name__}, not an object")
    thought = ""
    try:
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones, and reasoning as parts of its own
            thought = joined_thinking(content)
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is not None and not isinstance(content, str):
            raise TypeError(f"content is a {type(content).__name__}")
    except (TypeError, ValueError, AttributeError) as e:
        raise ResponseError("malformed_choice", f"choice {slot} has an unexpected shape ({e})") from None
    reasoning = m.get("reasoning_content")
    if reasoning is None:
        reasoning = m.get("reasoning")
    if not reasoning and thought:  # Mistral's and Anthropic's thinking parts (orchestrator/content_parts.py)
        reasoning = thought
    tool_calls = m.get("tool_calls") or None
    if tool_calls is None and m.get("function_call") is not None:  # OpenAI's legacy spelling of one call
        try:
            tool_calls = [as_tool_call(m["function_call"])]
        except LegacyError as e:
            raise ResponseError("malformed_choice", f"choice {slot}: {e.problem}") from None
    if not content and not tool_calls:
        refusal = m.get("refusal")
        if isinstance(refusal, str) and refusal.strip():
            raise ResponseError("refusal", f"choice {slot} is a refusal with no content ({refusal[:80]!r})")
        # cut off while reasoning (max_tokens spent thinking): a paid answer, recorded; reconstruction
        # rejects it as `truncated`, naming the fix, and asking again would most likely cost the same
        if not (isinstance(reasoning, str) and reasoning.strip() and cut_short(c.get("finish_reason"))):
            raise ResponseError("empty_content", f"choice {slot} has neither content nor tool calls")
    return Choice(
        index=slot,
        message={"role": "assistant", "content": content, "reasoning_content": reasoning, "tool_calls": tool_calls},
        finish_reason=c.get("finish_reason"),
    )


def request_body(model: str, req: ChatRequest) -> dict[str, Any]:
    """The JSON body `ChatKind.send` posts for `req`: what the SDK's create() sends (model, messages, the
    sampling args, tools when there are some, extra_body merged at the top level). A Batch API input
    line carries it as its `body` (orchestrator/batch_store.py)."""
    body: dict[str, Any] = {"model": model, "messages": wire_messages(req.messages), **req.args}
    if req.tools:
        body["tools"] = req.tools
    if req.extra_body:
        body.update(req.extra_body)
    return body
