"""One transport for every kind of teacher request: endpoints, rate limits, retries, budgets.

    t = Transport(base_urls, model, api_key, concurrency=..., retry=RetryPolicy(...), ...)
    delivery = await t.request(kind, req, gate=budget_gate)      # Delivery(answer, endpoint, ...)

A request *kind* (orchestrator/kinds/; `chat` first) says what one request sends and how a 200
body is read (the `RequestKind` protocol below). Everything else is here, the same for every kind:
least-loaded endpoint (ties round-robin), bounded concurrency, requests/tokens-per-minute buckets,
retries with backoff + jitter honouring Retry-After, the budget gate before every attempt, failure
classes (`TeacherError.reason`: http_<status>, timeout, connection_error, insufficient_quota, or the
kind's parse reason). On the `openai` SDK's AsyncOpenAI with its retries off; the kind reads the raw
body, so provider fields are kept and a malformed body is retried rather than a crash.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import openai
from openai import AsyncOpenAI

from distill.core.redact import mask_known, mask_known_bytes, redact_url
from orchestrator.answer_notes import note_answer, note_wait
from orchestrator.http_client import (
    RedirectRefused,
    ResponseTooLarge,
    UnsupportedEncoding,
    endpoint_client,
    failure_words,
    unrepeatable,
)
from orchestrator.limits import RetryPolicy, TokenBucket, parse_retry_after

try:  # the HTTP library under the SDK: httpx2 in openai 3.x, httpx before
    from httpx2 import Response as _HttpResponse
except ImportError:  # pragma: no cover - older openai
    from httpx import Response as _HttpResponse  # type: ignore[no-redef]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: The reason of a failure the same request would meet again (http_client.unrepeatable): not retried.
UNREPEATABLE = {
    ResponseTooLarge: "response_too_large",
    UnsupportedEncoding: "unsupported_encoding",
    RedirectRefused: "redirect_refused",
}


class TeacherError(Exception):
    """A request that failed for good. `reason` is short and machine-readable."""

    def __init__(self, reason: str, detail: str, status: int | None = None):
        self.reason = reason
        detail = mask_known(detail)  # a server may echo the API key in its error text
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}")


class NonRetryableError(TeacherError):
    """The endpoint refused the request (4xx other than 408/409/425/429): retrying cannot help."""


class ResponseError(TeacherError):
    """A kind could not use a 200 body. Retried (the next answer may be fine) unless `retryable` is False."""

    def __init__(self, reason: str, detail: str, retryable: bool = True):
        super().__init__(reason, detail)
        self.retryable = retryable


class StopRequested(Exception):
    """A budget or stop signal forbids sending another request (carries the stop reason)."""


class Gate(Protocol):
    async def reserve(self, est_prompt: float, est_completion: float) -> None: ...

    def settle(self, est_prompt: float, est_completion: float, usage: dict[str, int] | None) -> None: ...


class RawResponse(Protocol):
    """The HTTP response a kind's send() returns (the SDK's httpx response)."""

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Any: ...  # a case-insensitive mapping: .get("x-request-id")


class Answer(Protocol):
    """What a kind's parse() returns, at least: the usage (settles the budget and the token rate limit)."""

    usage: dict[str, int]  # prompt_tokens, completion_tokens
    response_id: str | None  # the body's id, if any (the x-request-id header wins)


Req_contra = TypeVar("Req_contra", contravariant=True)
Ans_co = TypeVar("Ans_co", bound=Answer, covariant=True)
R = TypeVar("R")  # a request
T = TypeVar("T", bound=Answer)  # its answer


class RequestKind(Protocol[Req_contra, Ans_co]):
    """One kind of teacher request (orchestrator/kinds/; registered by name in orchestrator/kinds/__init__.py).

    The transport calls, for every attempt of a request `req`:
      estimate(req)              -> (prompt tokens, completion tokens) it reserves from the budget gate and
                                    the tokens-per-minute bucket before sending (settled with the real usage)
      await send(client, model, req) -> the raw HTTP response of a 2xx answer: an SDK call
                                    (`client.chat.completions.with_raw_response.create(...).http_response`) or
                                    `post_json(client, path, body)`; the SDK's errors (status, timeout,
                                    connection) are classified and retried by the transport
      parse(body, req)           -> the kind's answer (an `Answer`: has `usage` and `response_id`); raises
                                    ResponseError (or TeacherError) when the body is unusable: retried like a
                                    5xx unless ResponseError.retryable is False (then NonRetryableError)
    A request's answer comes back as a Delivery around what parse returned.
    """

    name: str

    def estimate(self, req: Req_contra) -> tuple[float, float]: ...

    async def send(self, client: AsyncOpenAI, model: str, req: Req_contra) -> RawResponse: ...

    def parse(self, body: bytes, req: Req_contra) -> Ans_co: ...


A = TypeVar("A")


@dataclass
class Delivery(Generic[A]):
    """A request that succeeded: the kind's parsed answer and where/when it came from."""

    answer: A
    endpoint: str
    request_id: str | None  # the x-request-id header, else the body's id
    t_start: float
    t_end: float
    attempts: int = 1


async def post_json(client: AsyncOpenAI, path: str, body: dict[str, Any]) -> RawResponse:
    """POST `body` as JSON to `path` (relative to the endpoint's base_url, or an absolute URL) through the
    endpoint's SDK client: for kinds with no SDK call (e.g. /completions with prompt_logprobs, /generate).
    Non-2xx answers raise the SDK's errors, which the transport classifies like a chat call's."""
    return await client.post(path, body=body, cast_to=_HttpResponse)


@dataclass
class ClientStats:
    attempts: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    retry_after_waits: int = 0
    usage_estimated: int = 0  # answers whose usage is the estimate (the body reported none usable)
    long_waits: int = 0  # Retry-After waits of LONG_WAIT_S or more (answer_notes.note_wait)
    extra_choices: int = 0  # choices answers held beyond those asked for (paid for, not kept)

    def count_retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1


class Endpoint:
    def __init__(self, base_url: str, api_key: str, headers: dict[str, str], timeout: float):
        self.base_url = base_url
        self.shown = redact_url(base_url)  # for messages and records: credentials in the URL masked
        self.in_flight = 0
        self.sent = 0
        self.timeout = timeout
        self.client = endpoint_client(base_url, api_key, headers=headers, timeout=timeout)

    async def close(self) -> None:
        await self.client.close()


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


class Transport:
    """Sends requests of any kind to the least-loaded endpoint with bounded concurrency, rate limits and retries."""

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        api_key: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 120.0,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
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
        self._warned_echo = False

    def pick_endpoint(self) -> Endpoint:
        """Least requests in flight; ties go round-robin."""
        self._rr += 1
        k = len(self.endpoints)
        order = [self.endpoints[(self._rr + i) % k] for i in range(k)]
        return min(order, key=lambda e: e.in_flight)

    async def close(self) -> None:
        for e in self.endpoints:
            await e.close()

    async def request(self, kind: RequestKind[R, T], req: R, *, gate: Gate | None = None) -> Delivery[T]:
        """One logical request, retried until it succeeds or fails for good (TeacherError; NonRetryableError
        when retrying cannot help).

        `gate.reserve(est_prompt, est_completion)` (the kind's estimate) is awaited before every HTTP attempt
        (budgets, stop signals; it raises StopRequested to refuse) and
        `gate.settle(est_prompt, est_completion, usage_or_None)` is called after it.
        """
        est_prompt, est_completion = kind.estimate(req)
        last: TeacherError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            if gate is not None:
                await gate.reserve(est_prompt, est_completion)
            retry_after = None
            usage = None
            unsent = False
            try:
                out = await self._attempt(kind, req, est_prompt + est_completion, attempt, gate)
                usage = out.answer.usage
                return out
            except NonRetryableError:
                raise
            except StopRequested:
                unsent = True  # stopped while it waited for a slot: never sent
                raise
            except _Retryable as r:
                last, retry_after = r.error, r.retry_after
            finally:
                if gate is not None:
                    gate.settle(est_prompt, est_completion, usage)
                    if unsent and (uncount := getattr(gate, "unsent", None)) is not None:
                        uncount()  # max_requests counts the requests sent, exactly
            self.stats.count_retry(last.reason)
            if attempt == self.retry.max_attempts:
                break
            delay = self.retry.delay(attempt, retry_after)
            note_wait(self.stats, delay, retry_after, last.detail)  # counts Retry-After waits; a long one is told
            await self._backoff(delay, gate)
        assert last is not None
        raise TeacherError(
            last.reason, f"{last.detail} (gave up after {self.retry.max_attempts} attempts)", last.status
        )

    async def _backoff(self, delay: float, gate: Gate | None) -> None:
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

    def _masked(self, body: bytes, ep: Endpoint) -> bytes:
        """`body` masked of every remembered key; the first time a key was in one, a warning says so."""
        masked = mask_known_bytes(body)
        if masked is not body and not self._warned_echo:  # a new object only when something was masked
            self._warned_echo = True
            print(
                f"distill: warning: an answer from {ep.shown} held the API key or another credential of the config; "
                "it is masked as *** in what is recorded and trained on",
                file=sys.stderr,
            )
        return masked

    async def _attempt(
        self, kind: RequestKind[R, T], req: R, est_tokens: float, attempt: int, gate: Gate | None = None
    ) -> Delivery[T]:
        if self.rpm:
            await self.rpm.acquire(1)
        if self.tpm:
            await self.tpm.acquire(est_tokens)
        async with self.sem:
            # The run may have been stopped while this attempt waited for a slot (rate limit or
            # concurrency): it is not sent then (its reservation is settled by the caller).
            stopped = getattr(gate, "stopped", None)
            if stopped is not None and stopped():
                raise StopRequested(getattr(gate, "stop_reason", None) or "stopped")
            ep = self.pick_endpoint()
            ep.in_flight += 1
            ep.sent += 1
            self.stats.attempts += 1
            t0 = time.time()
            try:
                # The HTTP timeout is per read: a body sent a byte at a time would never end it. The
                # whole attempt (send and read) gets the configured timeout, plus a grace second.
                response = await asyncio.wait_for(kind.send(ep.client, self.model, req), ep.timeout + 1.0)
                body = self._masked(response.content, ep)  # an echoed key reaches no record or sample
            except openai.APIStatusError as e:
                raise _status_error(e, ep.shown) from None
            except (openai.APITimeoutError, asyncio.TimeoutError) as e:
                why = str(e) or f"no complete answer within timeout = {ep.timeout:g} s"
                raise _Retryable(TeacherError("timeout", f"{ep.shown}: {why}"), None) from None
            except (openai.APIConnectionError, ResponseTooLarge, UnsupportedEncoding, RedirectRefused) as e:
                if (same := unrepeatable(e)) is not None:  # the same request would get the same answer
                    raise NonRetryableError(UNREPEATABLE[type(same)], f"{ep.shown}: {same}") from None
                raise _Retryable(TeacherError("connection_error", f"{ep.shown}: {failure_words(e)}"), None) from None
            finally:
                ep.in_flight -= 1
        t1 = time.time()
        try:
            answer = kind.parse(body, req)
        except NonRetryableError:
            raise
        except TeacherError as e:
            if isinstance(e, ResponseError) and not e.retryable:
                raise NonRetryableError(e.reason, f"{ep.shown}: {e.detail}", e.status) from None
            raise _Retryable(e, None) from None
        except Exception as e:  # noqa: BLE001 - a body no check foresaw must not take the run down
            why = f"{ep.shown}: the answer could not be read ({type(e).__name__}: {e})"
            raise _Retryable(ResponseError("malformed_response", why), None) from None
        note_answer(self.stats, answer, ep.shown)
        if self.tpm:
            self.tpm.adjust(answer.usage["prompt_tokens"] + answer.usage["completion_tokens"] - est_tokens)
        return Delivery(
            answer=answer,
            endpoint=ep.shown,
            request_id=response.headers.get("x-request-id") or answer.response_id,
            t_start=t0,
            t_end=t1,
            attempts=attempt,
        )


def _status_error(e: openai.APIStatusError, base_url: str) -> Exception:
    """A non-2xx answer: NonRetryableError (429 insufficient_quota, other 4xx) or _Retryable (408/409/425/429, 5xx)."""
    msg = _status_message(e)
    if e.status_code == 429 and _error_code(e) == "insufficient_quota":
        return NonRetryableError(
            "insufficient_quota", f"{base_url} answered 429 (insufficient quota): {msg}", e.status_code
        )
    if e.status_code in RETRYABLE_STATUS or e.status_code >= 500:
        return _Retryable(
            TeacherError(f"http_{e.status_code}", msg, e.status_code),
            parse_retry_after(e.response.headers.get("retry-after")),
        )
    return NonRetryableError(f"http_{e.status_code}", f"{base_url} answered {e.status_code}: {msg}", e.status_code)


class _Retryable(Exception):
    def __init__(self, error: TeacherError, retry_after: float | None):
        self.error = error
        self.retry_after = retry_after
