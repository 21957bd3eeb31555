"""The transport with request kinds other than chat: a kind is send + parse + estimate, and gets the
endpoints, retries, rate limits and budget gate for free (real FaultServer on loopback)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from orchestrator.kinds import KINDS, get_kind
from orchestrator.kinds.chat import ChatKind
from support.fault_server import Faults, FaultServer
from orchestrator.transport import (
    NonRetryableError,
    ResponseError,
    RetryPolicy,
    TeacherError,
    Transport,
    post_json,
)

FAST = RetryPolicy(max_attempts=30, initial_backoff=0.001, max_backoff=0.002)


@dataclass
class WordsAnswer:
    words: list[str]
    usage: dict[str, int]
    response_id: str | None


class WordsKind:
    """A made-up kind: a plain JSON POST (no SDK call), the answer read as the first choice's words."""

    name = "words"

    def __init__(self, refuse: bool = False):
        self.refuse = refuse

    def estimate(self, req: str) -> tuple[float, float]:
        return 3.0, 7.0

    async def send(self, client, model, req: str):
        return await post_json(
            client, "/chat/completions", {"model": model, "messages": [{"role": "user", "content": req}]}
        )

    def parse(self, body: bytes, req: str) -> WordsAnswer:
        if self.refuse:
            raise ResponseError("not_words", "this kind refuses every body", retryable=False)
        d = json.loads(body)
        return WordsAnswer(d["choices"][0]["message"]["content"].split(), d["usage"], d.get("id"))


class CountingGate:
    def __init__(self):
        self.reserved: list[tuple[float, float]] = []
        self.settled: list[dict | None] = []

    async def reserve(self, est_p, est_c):
        self.reserved.append((est_p, est_c))

    def settle(self, est_p, est_c, usage):
        self.settled.append(usage)


async def _request(url, kind, req, **kw):
    t = Transport([url], "fault-teacher", "k", **kw)
    gate = CountingGate()
    try:
        return await t.request(kind, req, gate=gate), t, gate
    finally:
        await t.close()


def test_a_new_kind_gets_retries_and_the_budget_gate_from_the_transport():
    with FaultServer(Faults(rate_500=0.6), seed=3) as s:
        d, t, gate = asyncio.run(_request(s.base_url, WordsKind(), "two plus two", retry=FAST))
    assert d.answer.words and d.endpoint == s.base_url and d.attempts == len(s.log.entries) > 1
    assert s.log.outcomes()["ok"] == 1 and t.stats.retries == {"http_500": d.attempts - 1}
    # every attempt reserved the kind's estimate; the successful one settled with the answer's usage
    assert gate.reserved == [(3.0, 7.0)] * d.attempts
    assert gate.settled[:-1] == [None] * (d.attempts - 1) and gate.settled[-1] == d.answer.usage
    assert d.request_id == f"req-{s.requests}"  # the x-request-id header (over the body's id)


def test_a_kind_can_refuse_a_body_for_good():
    with FaultServer() as s, pytest.raises(NonRetryableError) as ei:
        asyncio.run(_request(s.base_url, WordsKind(refuse=True), "x", retry=FAST))
    assert ei.value.reason == "not_words" and s.base_url in ei.value.detail
    assert len(s.log.entries) == 1  # not retried


def test_http_errors_of_a_plain_post_are_classified_like_chat_ones():
    with FaultServer(model="other") as s, pytest.raises(NonRetryableError) as ei:  # unknown model: 404
        asyncio.run(_request(s.base_url, WordsKind(), "x", retry=FAST))
    assert ei.value.reason == "http_404" and ei.value.status == 404 and len(s.log.entries) == 1
    with FaultServer(Faults(rate_429=1.0, retry_after=0.001)) as s, pytest.raises(TeacherError) as ei:
        asyncio.run(_request(s.base_url, WordsKind(), "x", retry=RetryPolicy(3, 0.001, 0.001)))
    assert ei.value.reason == "http_429" and "gave up after 3 attempts" in str(ei.value)


def test_a_body_the_parser_did_not_foresee_is_a_retried_malformed_response_not_a_crash():
    """WordsKind indexes the first choice's message: a null message raises TypeError inside its parse."""
    with FaultServer(Faults(bad_choices={0: "null_message"}, bad_choice_requests=1)) as s:
        d, t, _ = asyncio.run(_request(s.base_url, WordsKind(), "x", retry=FAST))
    assert d.attempts == 2 and t.stats.retries == {"malformed_response": 1}


def test_registry_names_the_kinds():
    assert isinstance(get_kind("chat"), ChatKind) and KINDS["chat"].name == "chat"
    with pytest.raises(ValueError, match=r"unknown teacher request kind 'scores'; known: chat"):
        get_kind("scores")


def test_a_long_wait_the_server_asks_for_is_told_once(capfd):
    """A Retry-After of a minute is honoured, and said (the run would look stuck); a short one is not."""
    waited: list[float] = []

    async def sleep(s: float) -> None:  # the waits, without waiting
        waited.append(s)

    with FaultServer(Faults(rate_429=1.0, retry_after=60)) as s, pytest.raises(TeacherError):
        asyncio.run(_request(s.base_url, WordsKind(), "x", retry=RetryPolicy(3, 0.001, 0.001), sleep=sleep))
    err = capfd.readouterr().err
    assert waited == [60.0, 60.0] and err.count("the teacher asked to wait 60 s before retrying") == 1, err
    with FaultServer(Faults(rate_429=1.0, retry_after=2)) as s, pytest.raises(TeacherError):
        asyncio.run(_request(s.base_url, WordsKind(), "x", retry=RetryPolicy(2, 0.001, 0.001), sleep=sleep))
    assert "asked to wait" not in capfd.readouterr().err
