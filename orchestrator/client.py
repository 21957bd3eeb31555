"""Async teacher client: endpoints, rate limits, retries, response parsing.

Built on the `openai` SDK's AsyncOpenAI with the SDK's own retries off
(max_retries=0): retrying is done here, with exponential backoff + jitter,
honouring Retry-After. Responses are parsed from the raw JSON body, so
provider-specific fields (`reasoning_content`, `reasoning`) are kept and a
malformed body is a retryable error rather than a crash.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import openai
from openai import AsyncOpenAI

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherError(Exception):
    """A request that failed for good. `reason` is short and machine-readable."""

    def __init__(self, reason: str, detail: str, status: int | None = None):
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}")


class NonRetryableError(TeacherError):
    """The endpoint refused the request (4xx other than 408/409/425/429): retrying cannot help."""


class StopRequested(Exception):
    """A budget or stop signal forbids sending another request (carries the stop reason)."""


class Gate(Protocol):
    async def reserve(self, est_prompt: float, est_completion: float) -> None: ...

    def settle(self, est_prompt: float, est_completion: float, usage: dict[str, int] | None) -> None: ...


@dataclass
class Choice:
    index: int
    message: dict[str, Any]  # role, content, reasoning_content, tool_calls
    finish_reason: str | None


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


@dataclass
class ClientStats:
    attempts: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    retry_after_waits: int = 0

    def count_retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1


class TokenBucket:
    """Refills at `rate` units/s up to `capacity`; `acquire(k)` waits until k units are free.

    A debit larger than the capacity is allowed once the bucket is full (it goes
    negative), so one large request cannot block forever.
    """

    def __init__(self, per_minute: float, capacity: float | None = None, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, per_minute / 60.0)
        self.level = self.capacity
        self.clock = clock
        self.t = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            while True:
                self._refill()
                need = min(amount, self.capacity)
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def adjust(self, delta: float) -> None:
        """Debit (delta > 0) or credit the bucket after the real cost is known."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


MAX_RETRY_AFTER = 300.0  # seconds: the longest Retry-After honoured (unless max_backoff is longer)


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1).

        A Retry-After replaces the backoff, capped at max(max_backoff, 300) s (a server asking for an hour is
        not waited on; the attempt count still bounds the retries); a non-finite one is ignored."""
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(0.0, retry_after), max(self.max_backoff, MAX_RETRY_AFTER))
        base = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return base * (0.5 + 0.5 * self.rng.random())  # "equal jitter": [base/2, base]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        v = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, v) if math.isfinite(v) else None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - (now if now is not None else time.time()))


class Endpoint:
    def __init__(self, base_url: str, api_key: str, headers: dict[str, str], timeout: float):
        self.base_url = base_url
        self.in_flight = 0
        self.sent = 0
        self.client = AsyncOpenAI(
            base_url=base_url, api_key=api_key, default_headers=headers or None, timeout=timeout, max_retries=0)

    async def close(self) -> None:
        await self.client.close()


def parse_completion(body: bytes | str, want_choices: int) -> tuple[list[Choice], dict[str, int], str | None, str | None]:
    """The usable choices of a chat-completions body (see parse_choices, whose unusable ones it drops)."""
    choices, _, usage, model, rid = parse_choices(body, want_choices)
    return choices, usage, model, rid


def parse_choices(body: bytes | str, want_choices: int):
    """Validate a chat-completions body: (usable choices, {slot: reason} of unusable ones, usage, model, id).

    A choice's slot (its `index`, or its position when the indices are not distinct 0..want-1) is the
    sample it answers; slots under want_choices that are in neither are missing from the body. Raises
    TeacherError when the body is unusable as a whole ("malformed_response", "empty_response") or no
    choice is usable (the first unusable choice's reason: empty_content, null_message, malformed_choice).
    """
    try:
        d = _parse_body(body)
        raw = d.get("choices")
        if not isinstance(raw, list) or not raw:
            raise TeacherError("empty_response", "response has no choices")
        choices, bad = [], {}
        for slot, c in _slots(raw, want_choices):
            try:
                choices.append(_parse_choice(c, slot))
            except TeacherError as e:
                bad[slot] = (e.reason, e.detail)
        if not choices:
            first = min(bad)
            raise TeacherError(bad[first][0], f"no usable choice in the response ({bad[first][1]})")
        usage = d.get("usage") if isinstance(d.get("usage"), dict) else {}
        usage = {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                 "completion_tokens": int(usage.get("completion_tokens") or 0)}
    except (TypeError, ValueError, AttributeError) as e:  # wrong types inside (usage, ...)
        raise TeacherError("malformed_response", f"response body has an unexpected shape "
                                                 f"({type(e).__name__}: {e})") from None
    return choices, {k: r for k, (r, _) in bad.items()}, usage, d.get("model"), d.get("id")


def _parse_body(body: bytes | str) -> dict:
    try:
        d = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherError("malformed_response", f"response body is not JSON ({e})") from None
    if not isinstance(d, dict):
        raise TeacherError("malformed_response", f"response body is a {type(d).__name__}, not an object")
    if "error" in d and not d.get("choices"):
        raise TeacherError("malformed_response", f"error object in a 200 response: {error_message(d)}")
    return d


def _slots(raw: list, want: int) -> list[tuple[int, Any]]:
    """(slot, choice) for the first `want` slots: by `index` when the indices are distinct ints in
    0..want-1 (a choice left out then leaves its slot empty), else by position."""
    idx = [c.get("index") if isinstance(c, dict) else None for c in raw]
    if all(type(i) is int and 0 <= i < want for i in idx) and len(set(idx)) == len(idx):
        return sorted(zip(idx, raw), key=lambda t: t[0])
    return list(enumerate(raw))[:want]


def _parse_choice(c: Any, slot: int) -> Choice:
    """One choice; TeacherError(empty_content / null_message / malformed_choice) when it is unusable."""
    if not isinstance(c, dict):
        raise TeacherError("malformed_choice", f"choice {slot} is a {type(c).__name__}, not an object")
    m = c.get("message")
    if m is None:
        raise TeacherError("null_message", f"choice {slot} has no message")
    if not isinstance(m, dict):
        raise TeacherError("malformed_choice", f"choice {slot}'s message is a {type(m).__name__}, not an object")
    try:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is not None and not isinstance(content, str):
            raise TypeError(f"content is a {type(content).__name__}")
    except (TypeError, ValueError, AttributeError) as e:
        raise TeacherError("malformed_choice", f"choice {slot} has an unexpected shape ({e})") from None
    reasoning = m.get("reasoning_content")
    if reasoning is None:
        reasoning = m.get("reasoning")
    tool_calls = m.get("tool_calls") or None
    if not content and not tool_calls:
        raise TeacherError("empty_content", f"choice {slot} has neither content nor tool calls")
    return Choice(index=slot, message={"role": "assistant", "content": content, "reasoning_content": reasoning,
                                       "tool_calls": tool_calls}, finish_reason=c.get("finish_reason"))


def error_message(d: Any) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}} or similar)."""
    if isinstance(d, dict):
        e = d.get("error", d)
        if isinstance(e, dict):
            return str(e.get("message") or e)
        return str(e)
    return str(d)


def _error_code(err: openai.APIStatusError) -> str | None:
    """The `error.code` (or `error.type`) of an error body, if any."""
    try:
        d = err.response.json()
    except Exception:  # noqa: BLE001 - body may not be JSON
        return None
    e = d.get("error") if isinstance(d, dict) else None
    if isinstance(e, dict):
        code = e.get("code") or e.get("type")
        return str(code) if code is not None else None
    return None


def _status_message(err: openai.APIStatusError) -> str:
    try:
        return error_message(err.response.json())
    except Exception:  # noqa: BLE001 - body may not be JSON
        return (err.response.text or str(err))[:500]


class TeacherClient:
    """Sends chat requests to the least-loaded endpoint with bounded concurrency and retries.

    `before_attempt(estimate)` is awaited before every HTTP attempt (budgets,
    stop signals); it raises StopRequested to refuse. `after_attempt(usage)` is
    called with the usage of each successful attempt.
    """

    def __init__(self, base_urls: list[str], model: str, api_key: str, *, headers: dict[str, str] | None = None,
                 timeout: float = 120.0, concurrency: int = 8, retry: RetryPolicy | None = None,
                 requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if not base_urls:
            raise ValueError("no teacher base_url given")
        self.model = model
        self.endpoints = [Endpoint(u, api_key, headers or {}, timeout) for u in base_urls]
        self.sem = asyncio.Semaphore(concurrency)
        self.retry = retry or RetryPolicy()
        self.rpm = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tpm = TokenBucket(tokens_per_minute, capacity=tokens_per_minute) if tokens_per_minute else None
        self.stats = ClientStats()
        self.sleep = sleep
        self._rr = 0

    def pick_endpoint(self) -> Endpoint:
        """Least requests in flight; ties go round-robin."""
        self._rr += 1
        k = len(self.endpoints)
        order = [self.endpoints[(self._rr + i) % k] for i in range(k)]
        return min(order, key=lambda e: e.in_flight)

    async def close(self) -> None:
        for e in self.endpoints:
            await e.close()

    async def complete(self, messages: list[dict], tools: list[dict] | None, args: dict[str, Any],
                       extra_body: dict[str, Any] | None = None, *, want: int = 1, est_prompt: float = 0.0,
                       est_completion: float = 0.0, gate: "Gate | None" = None) -> TeacherResponse:
        """One logical request (n = args.get("n", 1)), retried until it succeeds or fails for good.

        `gate.reserve(est_prompt, est_completion)` is awaited before every HTTP attempt
        (budgets, stop signals; it raises StopRequested to refuse) and
        `gate.settle(est_prompt, est_completion, usage_or_None)` is called after it.
        """
        last: TeacherError | None = None
        est_tokens = est_prompt + est_completion
        for attempt in range(1, self.retry.max_attempts + 1):
            if gate is not None:
                await gate.reserve(est_prompt, est_completion)
            retry_after = None
            usage = None
            try:
                resp = await self._attempt(messages, tools, args, extra_body, want, est_tokens, attempt)
                usage = resp.usage
                return resp
            except NonRetryableError:
                raise
            except _Retryable as r:
                last, retry_after = r.error, r.retry_after
            finally:
                if gate is not None:
                    gate.settle(est_prompt, est_completion, usage)
            self.stats.count_retry(last.reason)
            if attempt == self.retry.max_attempts:
                break
            if retry_after is not None:
                self.stats.retry_after_waits += 1
            await self._backoff(self.retry.delay(attempt, retry_after), gate)
        assert last is not None
        raise TeacherError(last.reason, f"{last.detail} (gave up after {self.retry.max_attempts} attempts)",
                           last.status)

    async def _backoff(self, delay: float, gate: "Gate | None") -> None:
        """Sleeps `delay` seconds, ending early once `gate.stopped()` (if the gate has it) turns true;
        the next `gate.reserve` then refuses with StopRequested."""
        stopped = getattr(gate, "stopped", None)
        if stopped is None:
            await self.sleep(delay)
            return
        end = time.monotonic() + delay
        while not stopped():
            left = end - time.monotonic()
            if left <= 0:
                return
            await self.sleep(min(left, 0.05))

    async def _attempt(self, messages, tools, args, extra_body, want, est_tokens, attempt):
        if self.rpm:
            await self.rpm.acquire(1)
        if self.tpm:
            await self.tpm.acquire(est_tokens)
        async with self.sem:
            ep = self.pick_endpoint()
            ep.in_flight += 1
            ep.sent += 1
            self.stats.attempts += 1
            kw = dict(args)
            if tools:
                kw["tools"] = tools
            t0 = time.time()
            try:
                raw = await ep.client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, extra_body=extra_body or None, **kw)
                body = raw.http_response.content
                headers = raw.http_response.headers
            except openai.APIStatusError as e:
                msg = _status_message(e)
                if e.status_code == 429 and _error_code(e) == "insufficient_quota":
                    raise NonRetryableError("insufficient_quota", f"{ep.base_url} answered 429 (insufficient "
                                            f"quota): {msg}", e.status_code) from None
                if e.status_code in RETRYABLE_STATUS or e.status_code >= 500:
                    raise _Retryable(TeacherError(f"http_{e.status_code}", msg, e.status_code),
                                     parse_retry_after(e.response.headers.get("retry-after"))) from None
                raise NonRetryableError(f"http_{e.status_code}", f"{ep.base_url} answered {e.status_code}: {msg}",
                                        e.status_code) from None
            except openai.APITimeoutError as e:
                raise _Retryable(TeacherError("timeout", f"{ep.base_url}: {e}"), None) from None
            except openai.APIConnectionError as e:
                raise _Retryable(TeacherError("connection_error", f"{ep.base_url}: {e.__cause__ or e}"), None) from None
            finally:
                ep.in_flight -= 1
        t1 = time.time()
        try:
            choices, bad, usage, model, rid = parse_choices(body, want)
        except TeacherError as e:
            raise _Retryable(e, None) from None
        if self.tpm:
            self.tpm.adjust(usage["prompt_tokens"] + usage["completion_tokens"] - est_tokens)
        sent = dict(args)
        if extra_body:
            sent["extra_body"] = extra_body
        return TeacherResponse(choices=choices, bad=bad, usage=usage, model=model, endpoint=ep.base_url,
                               request_id=headers.get("x-request-id") or rid, sent=sent,
                               t_start=t0, t_end=t1, attempts=attempt)


class _Retryable(Exception):
    def __init__(self, error: TeacherError, retry_after: float | None):
        self.error = error
        self.retry_after = retry_after
