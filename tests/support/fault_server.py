"""FaultServer: a small OpenAI-compatible chat server for tests and benchmarks.

It listens on 127.0.0.1 only, answers `GET /v1/models` and
`POST /v1/chat/completions` with deterministic fake completions, and injects
faults at configurable, seeded rates: 429 with Retry-After, 500, slow replies,
dropped connections, malformed JSON, empty choices, (optionally) ignoring
`n`, unusable or missing choices inside a 200 (`bad_choices`), and a 401 for
any other API key (`api_key`); `list_models=False` leaves out `/v1/models`.
`echo_auth=True` makes it hostile to secrets: it echoes the request's credentials (the
Authorization and X-Api-Key headers) into every error message and every answer's content.
Like OpenAI's, it refuses (400) a message holding a key its schema does not
know (MESSAGE_KEYS).
It is bounded: it stops itself after `max_requests` requests or `max_seconds`
seconds, whichever comes first.

A completion is derived from the prompt: the words of the last user message
(plus the sample index), cut at `max_tokens` words; usage counts words, so
`completion_tokens` equals the number of words returned.

Run standalone (used by bench/bench_orchestrator.py to keep the server in its
own process): `python -m support.fault_server --port 0` prints the base URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_REASONS = {
    200: "OK",
    400: "Bad Request",
    402: "Payment Required",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


@dataclass
class Faults:
    """Per-request fault probabilities (drawn once per request, in this order)."""

    rate_429: float = 0.0
    retry_after: float = 0.05  # seconds, sent as the Retry-After header
    rate_500: float = 0.0
    rate_drop: float = 0.0  # close the connection without answering
    rate_malformed: float = 0.0  # 200 with a body that is not JSON
    rate_empty: float = 0.0  # 200 with "choices": []
    rate_slow: float = 0.0
    slow_s: float = 0.2
    ignore_n: bool = False  # answer with one choice whatever `n` is
    latency_s: float = 0.0  # added to every answered request
    # answer every chat request after the first `error_after` with HTTP `error_status` (error.code `error_code`)
    error_status: int | None = None
    error_code: str | None = None
    error_after: int = 0
    # partial answers: {choice position: kind} applied to the first `bad_choice_requests` answered chat
    # requests; kind "empty" (content ""), "null_message" (message null), "malformed" (the choice is a
    # string) or "missing" (the choice is left out)
    bad_choices: dict[int, str] = field(default_factory=dict)
    bad_choice_requests: int = 1

    @classmethod
    def uniform(cls, total: float, **kw) -> "Faults":
        """Spread a total fault rate evenly over the five failure kinds."""
        each = total / 5
        return cls(rate_429=each, rate_500=each, rate_drop=each, rate_malformed=each, rate_empty=each, **kw)


#: Message keys the server takes: OpenAI's chat message fields, and the reasoning fields that
#: OpenAI-compatible servers (vLLM, DeepSeek) accept; any other key is a 400, as on OpenAI.
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio"}
    | {"reasoning_content", "reasoning"}
)


@dataclass
class RequestLog:
    """What the server saw: one entry per chat request (fault or not)."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def ok(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["outcome"] == "ok"]

    def outcomes(self) -> Counter:
        return Counter(e["outcome"] for e in self.entries)


def fake_completion(messages: list[dict], index: int, max_tokens: int | None, seed: int) -> tuple[str, str]:
    """Deterministic text for (prompt, sample index); returns (text, finish_reason)."""
    user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if not isinstance(user, str):
        user = json.dumps(user)
    h = hashlib.sha256(f"{seed}|{index}|{user}".encode()).hexdigest()[:8]
    words = [f"sample{index}", f"h{h}", "echo:"] + user.split()[:40] + ["done."]
    finish = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    return " ".join(words), finish


class FaultServer:
    """Context manager running the server on a background thread; `.base_url` ends in /v1."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        model: str = "fault-teacher",
        seed: int = 0,
        port: int = 0,
        max_requests: int = 100_000,
        max_seconds: float = 600.0,
        max_context_tokens: int = 4096,
        reasoning: bool | str = False,
        logprobs: bool = False,
        tool_calls: bool = False,
        log_requests: bool = True,
        api_key: str | None = None,
        list_models: bool = True,
        echo_auth: bool = False,
    ):
        self.faults = faults or Faults()
        self.model = model
        self.seed = seed
        self.port = port
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.max_context_tokens = max_context_tokens
        # add reasoning_content to every message; "parts": as Mistral's API does for its reasoning models,
        # a content part of type "thinking" before the text part
        self.reasoning = reasoning
        self.logprobs = logprobs  # answer `logprobs: true` with (fake) token logprobs
        self.tool_calls = tool_calls  # answer requests that carry `tools` with a call to the first tool
        self.log = RequestLog()
        self.log_requests = log_requests
        self.api_key = api_key  # when set, any other bearer token gets a 401 (models list included)
        self.model_requests = 0  # GET /v1/models answered
        self.list_models = list_models  # False: GET /v1/models is a 404 (as on some hosted providers)
        self.echo_auth = echo_auth  # echo the request's credentials into errors and answers
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._start_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "FaultServer":
        self._thread = threading.Thread(target=self._run, name="FaultServer", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FaultServer did not start within 10 s")
        if self._start_error:
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._loop and self._stop and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=512)
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._start_error = e
            self._ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=self.max_seconds)
        except asyncio.TimeoutError:
            pass
        self._server.close()
        await self._server.wait_closed()

    # -- HTTP ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                parts = line.decode("latin-1").split()
                if len(parts) < 2:
                    return
                method, path = parts[0], parts[1]
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                keep = await self._dispatch(method, path, headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    def _send(
        self, writer, status: int, payload: Any, extra_headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> None:
        if self.echo_auth and raw is None:
            payload = _with_echo(payload, _CREDENTIALS.get())
        body = raw if raw is not None else json.dumps(payload).encode()
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: keep-alive",
        ]
        for k, v in (extra_headers or {}).items():
            head.append(f"{k}: {v}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def _dispatch(self, method, path, headers, body, writer) -> bool:
        _CREDENTIALS.set(" ".join(headers.get(h, "") for h in ("authorization", "x-api-key")).strip())
        with self._lock:
            self.requests += 1
            over = self.requests > self.max_requests
        if over:
            self._send(writer, 500, _err("FaultServer request limit reached", "server_error"))
            await writer.drain()
            self._stop.set()
            return False
        path = path.split("?")[0].rstrip("/")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            self._send(writer, 401, _err("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            await writer.drain()
            return True
        if method == "GET" and path == "/v1/models" and self.list_models:
            self.model_requests += 1
            self._send(
                writer,
                200,
                {
                    "object": "list",
                    "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "distill-faultserver"}],
                },
            )
        elif path == "/v1/chat/completions":
            if method != "POST":
                self._send(writer, 405, _err("use POST", "invalid_request_error"))
            else:
                return await self._chat(headers, body, writer)
        else:
            self._send(writer, 404, _err(f"no route {method} {path}", "invalid_request_error"))
        await writer.drain()
        return True

    async def _chat(self, headers, body, writer) -> bool:
        try:
            req = json.loads(body)
        except json.JSONDecodeError:
            self._send(writer, 400, _err("request body is not JSON", "invalid_request_error"))
            await writer.drain()
            return True
        entry = {
            "messages": req.get("messages"),
            "n": req.get("n"),
            "t": time.time(),
            "outcome": "ok",
            "body": {k: v for k, v in req.items() if k != "messages"},
            "auth": headers.get("authorization"),
        }
        if self.log_requests:
            self.log.entries.append(entry)
        problem = self._validate(req)
        if problem:
            status, msg = problem
            entry["outcome"] = f"http{status}"
            self._send(writer, status, _err(msg, "invalid_request_error"))
            await writer.drain()
            return True
        f = self.faults
        with self._lock:
            r = [self._rng.random() for _ in range(6)]
            self._chats = getattr(self, "_chats", 0) + 1
            chats = self._chats
        if f.error_status is not None and chats > f.error_after:
            entry["outcome"] = f"http{f.error_status}"
            self._send(
                writer,
                f.error_status,
                _err(f"error {f.error_status} (fault injection: {f.error_code})", "fault_injection", f.error_code),
            )
        elif r[0] < f.rate_429:
            entry["outcome"] = "http429"
            self._send(
                writer,
                429,
                _err("rate limited (fault injection)", "rate_limit_exceeded"),
                {"Retry-After": f"{f.retry_after:g}"},
            )
        elif r[1] < f.rate_500:
            entry["outcome"] = "http500"
            self._send(writer, 500, _err("internal error (fault injection)", "server_error"))
        elif r[2] < f.rate_drop:
            entry["outcome"] = "drop"
            writer.transport.abort()
            return False
        else:
            if r[5] < f.rate_slow:
                await asyncio.sleep(f.slow_s)
            if f.latency_s:
                await asyncio.sleep(f.latency_s)
            if r[3] < f.rate_malformed:
                entry["outcome"] = "malformed"
                self._send(writer, 200, None, raw=b'{"id": "chatcmpl-broken", "choices": [{"mess')
            elif r[4] < f.rate_empty:
                entry["outcome"] = "empty"
                self._send(writer, 200, self._completion(req, 0))
            else:
                n = 1 if f.ignore_n else int(req.get("n") or 1)
                entry["choices"] = n
                self._send(writer, 200, self._answer(req, n, entry), {"x-request-id": f"req-{self.requests}"})
        await writer.drain()
        return True

    def _answer(self, req: dict, n: int, entry: dict) -> dict:
        """The completion of n choices, some spoilt while Faults.bad_choices applies (logged in entry["bad"])."""
        out = self._completion(req, n)
        f = self.faults
        with self._lock:
            self._answered = getattr(self, "_answered", 0) + 1
            spoil = bool(f.bad_choices) and self._answered <= f.bad_choice_requests
        if spoil:
            entry["bad"] = _spoil(out, f.bad_choices)
        return out

    def _validate(self, req: dict) -> tuple[int, str] | None:
        if req.get("model") != self.model:
            return 404, f"The model `{req.get('model')}` does not exist (this server serves `{self.model}`)."
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return 400, "'messages' must be a non-empty list"
        mt = req.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or mt > self.max_context_tokens):
            return 400, (
                f"max_tokens={mt} is greater than this model's context length ({self.max_context_tokens} tokens)"
            )
        words = sum(len(str(m.get("content") or "").split()) for m in msgs if isinstance(m, dict))
        if words > self.max_context_tokens:
            return 400, (
                f"This model's maximum context length is {self.max_context_tokens} tokens, "
                f"but the messages have {words}"
            )
        for i, m in enumerate(msgs):  # as OpenAI's schema refuses unknown message keys
            extra = sorted(set(m) - MESSAGE_KEYS) if isinstance(m, dict) else []
            if extra:
                return 400, f"Additional properties are not allowed ('{extra[0]}' was unexpected) - 'messages.{i}'"
        n = req.get("n", 1)
        if not isinstance(n, int) or n < 1 or n > 128:
            return 400, f"n={n!r} must be an integer between 1 and 128"
        return None

    def _completion(self, req: dict, n: int) -> dict:
        msgs = req["messages"]
        prompt_tokens = sum(len(str(m.get("content") or "").split()) + 4 for m in msgs)
        choices, completion_tokens = [], 0
        base = int(req.get("seed") or 0) + self.seed
        for i in range(n):
            text, finish = fake_completion(msgs, i, req.get("max_tokens"), base)
            completion_tokens += len(text.split())
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if self.reasoning == "parts":
                thought = [{"type": "text", "text": f"thinking about sample {i}"}]
                msg["content"] = [{"type": "thinking", "thinking": thought}, {"type": "text", "text": text}]
            elif self.reasoning:
                msg["reasoning_content"] = f"thinking about sample {i}"
            if self.tool_calls and req.get("tools"):
                fn = req["tools"][0].get("function", {})
                msg = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": fn.get("name", "f"), "arguments": json.dumps({"city": "Paris"})},
                        }
                    ],
                }
                finish = "tool_calls"
            logprobs = None
            if self.logprobs and req.get("logprobs"):
                k = int(req.get("top_logprobs") or 0)
                logprobs = {
                    "content": [
                        {
                            "token": w,
                            "logprob": -0.5,
                            "top_logprobs": [{"token": w, "logprob": -0.5 - j} for j in range(k)],
                        }
                        for w in text.split()
                    ]
                }
            choices.append({"index": i, "message": msg, "finish_reason": finish, "logprobs": logprobs})
        return {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _spoil(completion: dict, bad: dict[int, str]) -> dict[int, str]:
    """Makes the choices at the positions in `bad` unusable (see Faults.bad_choices); returns those spoilt."""
    done, kept = {}, []
    for pos, c in enumerate(completion["choices"]):
        kind = bad.get(pos)
        if kind == "empty":
            c["message"]["content"] = ""
        elif kind == "null_message":
            c["message"] = None
        elif kind == "malformed":
            c = f"choice {pos} (fault injection)"
        if kind is not None:
            done[pos] = kind
        if kind != "missing":
            kept.append(c)
    completion["choices"] = kept
    return done


#: The credentials of the request being answered (one asyncio task per connection: its own value).
_CREDENTIALS: contextvars.ContextVar[str] = contextvars.ContextVar("credentials", default="")


def _with_echo(payload: Any, creds: str) -> Any:
    """`payload` with `creds` echoed into its error message or into every choice's content."""
    if not isinstance(payload, dict):
        return payload
    if isinstance(payload.get("error"), dict):
        err = dict(payload["error"], message=f"{payload['error'].get('message')} (you sent: {creds})")
        return dict(payload, error=err)
    choices = []
    for c in payload.get("choices") or []:
        m = c.get("message") if isinstance(c, dict) else None
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            c = dict(c, message=dict(m, content=f"{m['content']} (you sent: {creds})"))
        choices.append(c)
    return dict(payload, choices=choices) if "choices" in payload else payload


def _err(message: str, typ: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": typ, "code": code}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="fault-teacher")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    a = ap.parse_args(argv)
    srv = FaultServer(
        Faults.uniform(a.fault_rate),
        model=a.model,
        port=a.port,
        max_requests=a.max_requests,
        max_seconds=a.max_seconds,
        log_requests=False,
    )
    srv.start()
    print(srv.base_url, flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        srv.stop()


def write_prompts(path, count: int, prefix: str = "p") -> list[str]:
    """A JSONL prompt file of `count` distinct prompts (ids prefix0..); returns the ids."""
    ids = [f"{prefix}{i}" for i in range(count)]
    with open(path, "w", encoding="utf-8") as f:
        for i, pid in enumerate(ids):
            f.write(json.dumps({"id": pid, "prompt": f"Question number {i}: what is {i} plus {i}?"}) + "\n")
    return ids


if __name__ == "__main__":
    main()
