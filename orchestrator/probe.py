"""Probe a teacher endpoint before a long run: what it supports, and how fast it answers.

    rows = probe("http://host:8000/v1", "model-name", api_key=None)
    print(format_probe(rows))

Each row is (feature, result, detail). Results are "yes", "no", "error" or a
value (latency, model name). Every check is one small request; a failing check
does not stop the others.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import openai

from distill.core.redact import redact_url

from orchestrator.client import error_message
from orchestrator.content_parts import joined_thinking, text_of
from orchestrator.http_client import UNREADABLE, endpoint_client, unrepeatable

_PROMPT = [{"role": "user", "content": "Reply with one short sentence about the sea."}]
_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class _Probe:
    def __init__(self, base_url: str, model: str | None, api_key: str | None, timeout: float):
        self.base_url = base_url
        self.client = endpoint_client(base_url, api_key or "EMPTY", timeout=timeout, sync=True)
        self.model = model
        self.rows: list[tuple[str, str, str]] = []

    def chat(self, **kw) -> tuple[dict, float]:
        extra = kw.pop("extra_body", None)
        t0 = time.perf_counter()
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model, messages=kw.pop("messages", _PROMPT), extra_body=extra, **kw
        )
        dt = time.perf_counter() - t0
        return json.loads(raw.http_response.content), dt

    def check(self, feature: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            result, detail = fn()
        except openai.APIStatusError as e:
            result, detail = "error", f"HTTP {e.status_code}: {_message(e)}"
        except (openai.APIError, *UNREADABLE) as e:
            result, detail = "error", f"{type(e).__name__}: {unrepeatable(e) or e}"
        except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError) as e:
            # ValueError covers json.JSONDecodeError; one odd answer must not stop the other checks
            result, detail = "error", f"unexpected response ({type(e).__name__}: {e})"
        self.rows.append((feature, result, detail))

    # -- checks --------------------------------------------------------------

    def models(self) -> tuple[str, str]:
        ids = [m.id for m in self.client.models.list().data]
        if self.model is None:
            if not ids:
                return "error", "no models listed; pass --model"
            self.model = ids[0]
            return "yes", f"{len(ids)} listed; using {self.model!r}"
        listed = self.model in ids
        return ("yes" if listed else "no"), (
            f"{self.model!r} is listed" if listed else f"{self.model!r} not among {ids[:5]}"
        )

    def basic(self) -> tuple[str, str]:
        d, dt = self.chat(max_tokens=32)
        c = d["choices"][0]
        text = text_of(c["message"].get("content")).strip().replace("\n", " ")
        usage = d.get("usage") or {}
        self.rows.append(("reported model", str(d.get("model")), "model name the endpoint reports"))
        self.rows.append(
            (
                "usage",
                "yes" if usage.get("completion_tokens") is not None else "no",
                json.dumps({k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}),
            )
        )
        return "yes", f"{dt * 1000:.0f} ms, finish_reason={c.get('finish_reason')!r}, text={text[:60]!r}"

    def latency(self) -> tuple[str, str]:
        times = []
        for _ in range(3):
            _, dt = self.chat(max_tokens=8)
            times.append(dt)
        times.sort()
        return f"{times[1] * 1000:.0f} ms", f"median of 3 requests with max_tokens=8 (min {times[0] * 1000:.0f} ms)"

    def n(self) -> tuple[str, str]:
        d, _ = self.chat(max_tokens=16, n=2, temperature=1.0)
        k = len(d["choices"])
        if k == 2:
            return "yes", "n=2 returned 2 choices"
        return "no", f"n=2 returned {k} choice(s); distill falls back to one request per sample"

    def logprobs(self) -> tuple[str, str]:
        d, _ = self.chat(max_tokens=8, logprobs=True, top_logprobs=3)
        lp = d["choices"][0].get("logprobs") or {}
        content = lp.get("content") or []
        if not content:
            return "no", "logprobs requested, none returned"
        top = len(content[0].get("top_logprobs") or [])
        return "yes", f"{len(content)} token logprobs, top_logprobs={top} (teacher vocabulary, not the student's)"

    def token_ids(self) -> tuple[str, str]:
        d, _ = self.chat(max_tokens=8, extra_body={"return_token_ids": True})
        c = d["choices"][0]
        found = [k for k in ("token_ids",) if c.get(k)] + [k for k in ("prompt_token_ids",) if d.get(k)]
        if found:
            return "yes", f"return_token_ids gives {', '.join(found)} (teacher tokenizer ids)"
        return "no", "return_token_ids (vLLM) not honoured"

    def reasoning(self) -> tuple[str, str]:
        d, _ = self.chat(max_tokens=64, messages=[{"role": "user", "content": "What is 17 * 3? Think first."}])
        m = d["choices"][0]["message"]
        for key in ("reasoning_content", "reasoning"):
            if m.get(key):
                return "yes", f"field {key!r} ({len(m[key])} chars)"
        parts = m.get("content")
        if isinstance(parts, list) and joined_thinking(parts):
            return "yes", "content parts of type 'thinking' (Mistral's shape), recorded as reasoning_content"
        if "<think>" in text_of(m.get("content")):
            return "inline", "reasoning arrives as <think>...</think> inside content"
        return "no", "no reasoning_content / reasoning field"

    def tools(self) -> tuple[str, str]:
        d, _ = self.chat(
            max_tokens=64,
            tools=[_TOOL],
            tool_choice="auto",
            messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        )
        c = d["choices"][0]
        calls = c["message"].get("tool_calls") or []
        if calls:
            f = calls[0].get("function", {})
            return "yes", f"{f.get('name')}({f.get('arguments')}), finish_reason={c.get('finish_reason')!r}"
        return "no", "tools accepted but no tool call came back"


def _message(e: openai.APIStatusError) -> str:
    try:
        return error_message(e.response.json())[:200]
    except Exception:  # noqa: BLE001
        return (e.response.text or str(e))[:200]


def probe(
    base_url: str, model: str | None, api_key: str | None = None, timeout: float = 30
) -> list[tuple[str, str, str]]:
    """Check an OpenAI-compatible endpoint; rows of (feature, result, detail)."""
    p = _Probe(base_url, model, api_key, timeout)
    try:
        p.check("models list", p.models)
        if p.model is None:
            return p.rows
        p.check("chat completions", p.basic)
        if p.rows[-1][1] == "error":
            return p.rows  # nothing else can work
        p.check("latency", p.latency)
        p.check("n > 1 honoured", p.n)
        p.check("logprobs", p.logprobs)
        p.check("token ids", p.token_ids)
        p.check("reasoning field", p.reasoning)
        p.check("tool calls", p.tools)
        return p.rows
    finally:
        p.client.close()


def probe_verdict(rows: list[tuple[str, str, str]], base_url: str) -> str | None:
    """Why a run could not use this endpoint (model not listed, chat completions failing), or None."""
    d = {f: (r, detail) for f, r, detail in rows}
    models = d.get("models list")
    if models and models[0] == "no":
        return f"the model is not served: {models[1]}. Fix: pass --model with one of the listed names"
    chat = d.get("chat completions")
    if chat is None:
        return f"models list: {models[1] if models else 'no answer'}"
    if chat[0] != "error":
        return None
    hint = ""
    if "HTTP 404" in chat[1] and not base_url.rstrip("/").endswith("/v1"):
        hint = f" (did you mean {redact_url(base_url).rstrip('/')}/v1?)"
    elif "HTTP 401" in chat[1] or "HTTP 403" in chat[1]:
        hint = " (the API key was refused: pass --api-key-var NAME of the variable holding a valid key)"
    return f"chat completions failed: {chat[1]}{hint}"


def format_probe(rows: list[tuple[str, str, str]]) -> str:
    w0 = max([len("feature")] + [len(r[0]) for r in rows])
    w1 = max([len("result")] + [len(r[1]) for r in rows])
    lines = [f"{'feature':<{w0}}  {'result':<{w1}}  detail", f"{'-' * w0}  {'-' * w1}  {'-' * 6}"]
    lines += [f"{f:<{w0}}  {r:<{w1}}  {d}" for f, r, d in rows]
    return "\n".join(lines)
