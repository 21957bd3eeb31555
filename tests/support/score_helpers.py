"""Sending scoring kinds through the real Transport in tests, and the sequences they score."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from orchestrator.transport import RetryPolicy, TeacherError, Transport

MODEL = "score-teacher"  # ScoreServer's default model name


def fast_retry(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.002)


def ask(base_url: str, kind, req, *, attempts: int = 3, model: str = MODEL):
    """One request of `kind` through a Transport on `base_url`: its Delivery (raises TeacherError)."""

    async def go():
        t = Transport([base_url], model, "sk-test", retry=fast_retry(attempts), timeout=120)
        try:
            return await t.request(kind, req)
        finally:
            await t.close()

    return asyncio.run(go())


def ask_error(base_url: str, kind, req, *, attempts: int = 2, model: str = MODEL) -> TeacherError:
    """The TeacherError a request of `kind` ends with (fails the test if it succeeds)."""
    try:
        d = ask(base_url, kind, req, attempts=attempts, model=model)
    except TeacherError as e:
        return e
    raise AssertionError(f"expected a TeacherError, got an answer: {d.answer}")


def post(url: str, body: dict) -> dict:
    """A raw JSON POST (golden bodies, hand-made variations)."""
    r = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=120) as f:
        return json.loads(f.read())


def chat_ids(tokenizer, turns: int = 2) -> list[int]:
    """A multi-turn chat rendered with the student's template: the positions a suffix-only scorer gets wrong."""
    msgs = [{"role": "system", "content": "You are a careful assistant."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"What is {i + 2} times {i + 3}?"})
        msgs.append({"role": "assistant", "content": f"{i + 2} times {i + 3} is {(i + 2) * (i + 3)}."})
    return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False))
