"""Teacher client against the real FaultServer on loopback: retries, Retry-After, 4xx, parsing, limits."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from orchestrator.client import (
    NonRetryableError,
    RetryPolicy,
    TeacherClient,
    TeacherError,
    TokenBucket,
    parse_choices,
    parse_completion,
    parse_retry_after,
)
from support.fault_server import FaultServer, Faults

MSGS = [{"role": "user", "content": "two plus two"}]


def run(coro):
    return asyncio.run(coro)


async def _complete(url, args=None, *, retry=None, sleep=asyncio.sleep, want=1, **kw):
    c = TeacherClient(
        [url] if isinstance(url, str) else url, "fault-teacher", "sk-test", retry=retry, sleep=sleep, **kw
    )
    try:
        return await c.complete(MSGS, None, args or {}, want=want), c
    finally:
        await c.close()


def test_success_parses_choices_usage_and_request_id():
    with FaultServer(reasoning=True) as s:
        resp, c = run(_complete(s.base_url, {"n": 3, "max_tokens": 50}, want=3))
    assert [ch.index for ch in resp.choices] == [0, 1, 2]
    assert resp.choices[1].message["content"].startswith("sample1 ")
    assert resp.choices[0].message["reasoning_content"] == "thinking about sample 0"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage["completion_tokens"] == sum(len(ch.message["content"].split()) for ch in resp.choices)
    assert resp.model == "fault-teacher" and resp.request_id == "req-1"
    assert resp.sent == {"n": 3, "max_tokens": 50}
    # the key went out as a bearer token (and only there)
    assert s.log.entries[0]["auth"] == "Bearer sk-test"


def test_retry_after_is_honoured():
    waits: list[float] = []

    async def fake_sleep(t):
        waits.append(t)

    # every request is a 429 with Retry-After: 2.5 -> all waits are exactly 2.5 s, then it gives up
    with FaultServer(Faults(rate_429=1.0, retry_after=2.5)) as s:
        with pytest.raises(TeacherError) as ei:
            run(
                _complete(
                    s.base_url,
                    retry=RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02),
                    sleep=fake_sleep,
                )
            )
    assert ei.value.reason == "http_429" and "gave up after 4 attempts" in str(ei.value)
    assert waits == [2.5, 2.5, 2.5]
    assert s.log.outcomes()["http429"] == 4


def test_backoff_is_exponential_with_jitter_and_capped():
    p = RetryPolicy(max_attempts=10, initial_backoff=1.0, max_backoff=8.0)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        d = [p.delay(attempt, None) for _ in range(200)]
        assert all(base / 2 <= x <= base for x in d)
        assert max(d) - min(d) > base / 10  # jittered, not constant
    assert p.delay(3, 0.25) == 0.25


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None


def test_non_retryable_400_fails_fast_with_server_message():
    with FaultServer() as s:
        t0 = time.monotonic()
        with pytest.raises(NonRetryableError) as ei:
            run(_complete(s.base_url, {"max_tokens": 10**6}))
        assert time.monotonic() - t0 < 5
    assert ei.value.status == 400
    assert "max_tokens=1000000 is greater than this model's context length" in str(ei.value)
    assert len(s.log.entries) == 1  # not retried


def test_unknown_model_404_is_not_retried():
    with FaultServer(model="other") as s:
        with pytest.raises(NonRetryableError) as ei:
            run(_complete(s.base_url))
    assert ei.value.status == 404 and "does not exist" in str(ei.value)
    assert len(s.log.entries) == 1


@pytest.mark.parametrize("fault", ["rate_500", "rate_drop", "rate_malformed", "rate_empty"])
def test_each_fault_kind_is_retried_until_success(fault):
    # fault at rate 1.0 would never succeed: use a seeded 60% rate and plenty of attempts
    with FaultServer(Faults(**{fault: 0.6}), seed=7) as s:
        resp, c = run(
            _complete(s.base_url, retry=RetryPolicy(max_attempts=30, initial_backoff=0.001, max_backoff=0.002))
        )
    assert resp.choices and resp.choices[0].message["content"]
    kinds = s.log.outcomes()
    assert kinds["ok"] == 1 and sum(kinds.values()) == resp.attempts
    assert sum(c.stats.retries.values()) == resp.attempts - 1


def test_malformed_forever_gives_up_with_reason():
    with FaultServer(Faults(rate_malformed=1.0)) as s:
        with pytest.raises(TeacherError) as ei:
            run(_complete(s.base_url, retry=RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)))
    assert ei.value.reason == "malformed_response"
    assert len(s.log.entries) == 3


def test_timeout_is_retried():
    with FaultServer(Faults(rate_slow=0.5, slow_s=1.0), seed=1) as s:
        resp, c = run(
            _complete(
                s.base_url, retry=RetryPolicy(max_attempts=20, initial_backoff=0.001, max_backoff=0.001), timeout=0.3
            )
        )
    assert resp.choices
    assert c.stats.retries.get("timeout", 0) == resp.attempts - 1


def test_ignored_n_returns_fewer_choices():
    with FaultServer(Faults(ignore_n=True)) as s:
        resp, _ = run(_complete(s.base_url, {"n": 4}, want=4))
    assert len(resp.choices) == 1


def test_parse_completion_variants():
    body = (
        b'{"choices":[{"index":0,"message":{"role":"assistant","content":null,"reasoning":"r",'
        b'"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},'
        b'"finish_reason":"tool_calls"}],"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4}}'
    )
    choices, usage, model, _ = parse_completion(body, 1)
    assert choices[0].message["reasoning_content"] == "r"  # "reasoning" is read as reasoning_content
    assert choices[0].message["tool_calls"][0]["function"]["name"] == "f"
    assert choices[0].finish_reason == "tool_calls" and usage == {"prompt_tokens": 3, "completion_tokens": 4}
    for bad, reason in [
        (b"{", "malformed_response"),
        (b"[]", "malformed_response"),
        (b'{"choices":[]}', "empty_response"),
        (b'{"choices":[{"message":{"role":"assistant","content":""}}]}', "empty_content"),
        (b'{"choices":[{"message":{"role":"assistant","content":null,"refusal":"I cannot help."}}]}', "refusal"),
        (b'{"choices":[{"message":{"content":"","reasoning":"r"},"finish_reason":"stop"}]}', "empty_content"),
        (b'{"choices":[{"text":"x"}]}', "null_message"),
        (b'{"choices":["x"]}', "malformed_choice"),
    ]:
        with pytest.raises(TeacherError) as ei:
            parse_completion(bad, 1)
        assert ei.value.reason == reason, bad


def test_an_answer_cut_off_while_reasoning_is_kept_for_the_record():
    """max_tokens spent thinking: a paid answer with reasoning and no content. It is recorded (reconstruction
    rejects it as truncated, naming max_tokens), not asked again at the same cost."""
    body = b'{"choices":[{"index":0,"message":{"content":null,"reasoning_content":"hmm"},"finish_reason":"length"}]}'
    choices, _, _, _ = parse_completion(body, 1)
    assert choices[0].message["reasoning_content"] == "hmm" and choices[0].finish_reason == "length"


def test_least_loaded_endpoint_spreads_requests():
    async def go(urls):
        c = TeacherClient(urls, "fault-teacher", "k", concurrency=8)
        try:
            await asyncio.gather(*(c.complete(MSGS, None, {}) for _ in range(16)))
            return [e.sent for e in c.endpoints]
        finally:
            await c.close()

    with FaultServer(Faults(latency_s=0.05)) as a, FaultServer(Faults(latency_s=0.05)) as b:
        sent = run(go([a.base_url, b.base_url]))
    assert sent == [8, 8]
    assert len(a.log.entries) == 8 and len(b.log.entries) == 8


def test_concurrency_bound_holds():
    async def go(url):
        c = TeacherClient([url], "fault-teacher", "k", concurrency=3)
        peak = 0

        async def one():
            nonlocal peak
            task = asyncio.ensure_future(c.complete(MSGS, None, {}))
            while not task.done():
                peak = max(peak, c.endpoints[0].in_flight)
                await asyncio.sleep(0.005)
            return await task

        try:
            await asyncio.gather(*(one() for _ in range(9)))
        finally:
            await c.close()
        return peak

    with FaultServer(Faults(latency_s=0.05)) as s:
        assert run(go(s.base_url)) == 3


def test_token_bucket_rate():
    t = [0.0]
    waits = []

    async def go():
        b = TokenBucket(per_minute=120, clock=lambda: t[0])  # 2/s, capacity 2
        orig = asyncio.sleep

        async def fake(dt):
            waits.append(dt)
            t[0] += dt
            await orig(0)

        asyncio.sleep = fake
        try:
            for _ in range(6):
                await b.acquire(1)
        finally:
            asyncio.sleep = orig

    run(go())
    # 2 immediately (full bucket), then one every 0.5 s
    assert t[0] == pytest.approx(2.0)
    assert all(w == pytest.approx(0.5) for w in waits)


def test_requests_per_minute_limits_real_requests():
    async def go(url):
        c = TeacherClient([url], "fault-teacher", "k", requests_per_minute=600)  # 10/s, burst 10
        t0 = time.monotonic()
        try:
            await asyncio.gather(*(c.complete(MSGS, None, {}) for _ in range(15)))
        finally:
            await c.close()
        return time.monotonic() - t0

    with FaultServer() as s:
        took = run(go(s.base_url))
    assert took >= 0.45  # 10 from the burst, 5 more at 10/s


# --- review fixes: Retry-After cap, interruptible waits, malformed shapes, insufficient quota, probe ---


def test_retry_after_is_capped_and_non_finite_is_ignored():
    import math

    p = RetryPolicy(max_attempts=3, initial_backoff=1.0, max_backoff=8.0)
    assert p.delay(1, 86400.0) == 300.0  # a day-long Retry-After is not waited on
    assert RetryPolicy(max_backoff=600.0).delay(1, 86400.0) == 600.0  # a longer max_backoff raises the cap
    assert 0.5 <= p.delay(1, math.inf) <= 1.0 and 0.5 <= p.delay(1, math.nan) <= 1.0  # plain backoff
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None
    assert parse_retry_after("1e400") is None


def test_retry_wait_ends_early_when_the_gate_stops():
    from orchestrator.client import StopRequested

    class StoppingGate:
        def __init__(self):
            self.stop_at = None
            self.reserves = 0

        async def reserve(self, est_p, est_c):
            self.reserves += 1
            if self.stopped():
                raise StopRequested("stopped")

        def settle(self, est_p, est_c, usage):
            if self.stop_at is None:
                self.stop_at = time.monotonic() + 0.2  # a stop arrives 0.2 s into the 60 s Retry-After

        def stopped(self):
            return self.stop_at is not None and time.monotonic() >= self.stop_at

    async def go(url):
        c = TeacherClient([url], "fault-teacher", "k", retry=RetryPolicy(max_attempts=5))
        g = StoppingGate()
        try:
            await c.complete(MSGS, None, {}, gate=g)
        finally:
            await c.close()

    with FaultServer(Faults(rate_429=1.0, retry_after=60)) as s:
        t0 = time.monotonic()
        with pytest.raises(StopRequested):
            run(go(s.base_url))
        assert time.monotonic() - t0 < 5
    assert len(s.log.entries) == 1


@pytest.mark.parametrize(
    "body, says",
    [
        (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n', "server-sent event stream"),
        (b"\n<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
        (b"<html><body>502 Bad Gateway</body></html>", "HTML page"),
        (b"", "empty"),
        (b"Internal error: upstream timed out", "starts 'Internal error: upstream"),
    ],
)
def test_a_body_that_is_not_json_is_named_for_what_it_is(body, says):
    """A 200 that is not JSON says what it is (a stream, a web page) so the user knows what to fix."""
    with pytest.raises(TeacherError) as ei:
        parse_completion(body, 1)
    assert ei.value.reason == "malformed_response"
    assert "not JSON" in str(ei.value) and says in str(ei.value)


@pytest.mark.parametrize(
    "thinking",
    [[{"type": "text", "text": "Add "}, {"type": "text", "text": "them."}], "Add them."],
    ids=["mistral", "anthropic"],
)
def test_reasoning_as_thinking_content_parts_is_recorded_as_reasoning(thinking):
    """Mistral's API answers its reasoning models (Magistral) with the reasoning in a content part of type
    "thinking" (a list of text parts; Anthropic's thinking blocks hold a string): recorded as
    reasoning_content, the text parts as content. Before, only the text parts were kept, so the
    reasoning paid for was never recorded."""

    def body(message, finish="stop"):
        return json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": finish}]}).encode()

    parts = [{"type": "thinking", "thinking": thinking}, {"type": "text", "text": "4"}]
    choices, _, _, _ = parse_completion(body({"role": "assistant", "content": parts}), 1)
    assert choices[0].message["content"] == "4" and choices[0].message["reasoning_content"] == "Add them."
    fielded = {"role": "assistant", "content": parts, "reasoning_content": "Field."}  # a reasoning field wins
    assert parse_completion(body(fielded), 1)[0][0].message["reasoning_content"] == "Field."
    cut = {"role": "assistant", "content": parts[:1]}  # cut off while thinking: kept for the record
    choices, _, _, _ = parse_completion(body(cut, "length"), 1)
    assert choices[0].message["reasoning_content"] == "Add them." and choices[0].finish_reason == "length"


def test_content_parts_of_the_wrong_type_are_a_malformed_choice():
    body = b'{"choices":[{"message":{"role":"assistant","content":[{"type":"text","text":7}]}}]}'
    with pytest.raises(TeacherError) as ei:
        parse_completion(body, 1)
    assert ei.value.reason == "malformed_choice"


def test_unusable_choices_are_reported_by_slot_and_the_good_ones_kept():
    ok = {"role": "assistant", "content": "fine"}
    body = json.dumps(
        {
            "choices": [
                {"index": 0, "message": ok},
                {"index": 1, "message": {"role": "assistant", "content": ""}},
                {"index": 2, "message": None},
                {"index": 4, "message": ok},
                "junk",
            ]
        }
    )
    choices, bad, _, _, _ = parse_choices(body, 5)
    # "junk" has no index: the slots are positions then
    assert [c.index for c in choices] == [0, 3] and bad == {
        1: "empty_content",
        2: "null_message",
        4: "malformed_choice",
    }
    body = json.dumps({"choices": [{"index": 2, "message": ok}, {"index": 0, "message": {"content": None}}]})
    choices, bad, _, _, _ = parse_choices(body, 3)  # slot 1 left out: in neither
    assert [c.index for c in choices] == [2] and bad == {0: "empty_content"}


def test_429_insufficient_quota_is_not_retried():
    with FaultServer(Faults(error_status=429, error_code="insufficient_quota")) as s:
        with pytest.raises(NonRetryableError) as ei:
            run(_complete(s.base_url, retry=RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.01)))
    assert ei.value.reason == "insufficient_quota" and ei.value.status == 429
    assert "insufficient_quota" in ei.value.detail and len(s.log.entries) == 1


def test_probe_check_survives_odd_answers():
    from orchestrator.probe import _Probe

    p = _Probe("http://127.0.0.1:9/v1", "m", None, 1.0)

    def raiser(e):
        def f():
            raise e

        return f

    p.check("a", raiser(ValueError("bad number")))
    p.check("b", raiser(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")))
    p.check("c", raiser(AttributeError("'str' object has no attribute 'get'")))
    p.check("d", lambda: ("yes", "fine"))
    assert [r[:2] for r in p.rows] == [("a", "error"), ("b", "error"), ("c", "error"), ("d", "yes")]
