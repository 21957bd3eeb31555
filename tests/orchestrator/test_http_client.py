"""Hostile answers the HTTP library alone would not stop (orchestrator/http_client.py and the
transport's attempt deadline): a 200 whose body arrives a byte at a time (each read is within the
HTTP timeout, the whole never ends) and a body that never ends. A project-owned raw socket server on
loopback: no real server answers like this on purpose."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib

import pytest

import orchestrator.http_client as http_client
from orchestrator.kinds.chat import ChatKind, ChatRequest
from orchestrator.endpoint_check import _get_models
from orchestrator.transport import NonRetryableError, RetryPolicy, TeacherError, Transport


async def _hostile(mode: str):
    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            if mode == "trickle":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                for _ in range(100000):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b" " * (1 << 16)
                while True:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _ask(mode: str, timeout: float, attempts: int = 1):
    server = await _hostile(mode)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    t = Transport([url], "m", "k", timeout=timeout, retry=RetryPolicy(max_attempts=attempts, initial_backoff=0.01))
    t0 = time.monotonic()
    try:
        await t.request(ChatKind(), ChatRequest(messages=[{"role": "user", "content": "hi"}]))
    except TeacherError as e:
        return e, time.monotonic() - t0, t.stats.attempts
    finally:
        await t.close()
        server.close()
    raise AssertionError("a hostile answer was accepted")


def test_a_body_sent_a_byte_at_a_time_times_out_at_the_configured_timeout():
    err, took, attempts = asyncio.run(_ask("trickle", timeout=1.0, attempts=2))
    assert err.reason == "timeout" and "timeout = 1 s" in err.detail and attempts == 2  # retried, then given up
    assert took < 2 * (1.0 + 1.0) + 2  # each attempt ends at the timeout plus its grace second


def test_a_body_without_end_stops_at_the_size_limit_and_is_not_retried(monkeypatch):
    monkeypatch.setattr(http_client, "MAX_RESPONSE_BYTES", 4 << 20)
    err, took, attempts = asyncio.run(_ask("endless", timeout=60.0, attempts=3))
    assert isinstance(err, NonRetryableError) and err.reason == "response_too_large"
    assert "4 MiB" in err.detail and attempts == 1 and took < 30


def test_unrepeatable_finds_the_cause_the_sdk_wrapped():
    inner = http_client.ResponseTooLarge(1 << 20)
    try:
        try:
            raise inner
        except http_client.ResponseTooLarge as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as outer:
        assert http_client.unrepeatable(outer) is inner
    assert http_client.unrepeatable(ValueError("x")) is None


@pytest.mark.parametrize("limit", [None, 123])
def test_the_client_keeps_the_sdk_defaults_and_the_proxy_from_the_environment(limit, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # users behind a proxy must still get through it
    client = http_client.capped_http_client(limit)
    try:
        assert client.follow_redirects and client.timeout is not None
        assert any(t is not None for t in client._mounts.values())  # the proxy's mount (httpx's own table)
    finally:
        asyncio.run(client.aclose())


ANSWER = json.dumps(
    {"id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi " * 3000}}]}
).encode()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _bomb(mib: int) -> bytes:
    """gzip of `mib` MiB of spaces: about 1 KiB per MiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join([c.compress(b" " * (1 << 20)) for _ in range(mib)] + [c.flush()])


async def _encoded_server(encoding: str, body: bytes, seen: list):
    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.extend(h for h in head.split(b"\r\n") if h.lower().startswith(b"accept-encoding:"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (encoding.encode(), len(body), body)
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _ask_server(server, seen: list, attempts: int = 1):
    """(the delivery or the TeacherError, `seen`) of one chat request to `server` through a Transport;
    the server is closed after it."""
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    t = Transport([url], "m", "k", timeout=30, retry=RetryPolicy(max_attempts=attempts, initial_backoff=0.01))
    try:
        return await t.request(ChatKind(), ChatRequest(messages=[{"role": "user", "content": "hi"}])), seen
    except TeacherError as e:
        return e, seen
    finally:
        await t.close()
        server.close()


async def _ask_encoded(encoding: str, body: bytes, attempts: int = 1):
    seen: list = []  # the Accept-Encoding header of each request the server answered
    return await _ask_server(await _encoded_server(encoding, body, seen), seen, attempts)


@pytest.mark.parametrize(
    "encoding, body",
    [("gzip", gzip.compress(ANSWER)), ("deflate", zlib.compress(ANSWER)), ("deflate", _raw_deflate(ANSWER))],
)
def test_compressed_answers_are_decoded(encoding, body):
    out, seen = asyncio.run(_ask_encoded(encoding, body))
    assert not isinstance(out, Exception), out
    assert out.answer.choices[0].message["content"] == "Hi " * 3000
    assert seen == [b"Accept-Encoding: gzip, deflate"]  # only what the client decodes itself


def test_a_compression_bomb_stops_at_the_limit_counted_after_decoding(monkeypatch):
    """64 MiB of spaces in 64 KiB of gzip: the limit (4 MiB) applies to the decoded bytes."""
    monkeypatch.setattr(http_client, "MAX_RESPONSE_BYTES", 4 << 20)
    bomb = _bomb(64)
    assert len(bomb) < 4 << 20
    err, _ = asyncio.run(_ask_encoded("gzip", bomb))
    assert isinstance(err, NonRetryableError) and err.reason == "response_too_large" and "4 MiB" in err.detail


@pytest.mark.parametrize(
    "encoding, body, says, reason, sent",
    [  # an encoding not asked for comes back the same way: not retried; a corrupt body may be a bad read
        ("br", ANSWER, "encoded 'br' although distill asks for gzip, deflate only", "unsupported_encoding", 1),
        ("gzip, gzip", gzip.compress(gzip.compress(ANSWER)), "encoded 'gzip, gzip'", "unsupported_encoding", 1),
        ("gzip", b"\x1f\x8bnot gzip at all", "gzip response body is corrupt", "connection_error", 3),
    ],
)
def test_other_or_corrupt_encodings_are_refused_by_name(encoding, body, says, reason, sent):
    err, seen = asyncio.run(_ask_encoded(encoding, body, attempts=3))
    assert isinstance(err, TeacherError) and says in err.detail and err.reason == reason
    assert len(seen) == sent


def test_the_endpoint_check_reads_a_bomb_without_a_traceback(monkeypatch):
    """The synchronous client (the endpoint check, distill probe) has the same limit."""
    monkeypatch.setattr(http_client, "MAX_RESPONSE_BYTES", 4 << 20)

    async def serve():
        server = await _encoded_server("gzip", _bomb(64), [])
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        try:
            return await asyncio.to_thread(_get_models, url, "k", {}, 30.0)
        finally:
            server.close()

    assert asyncio.run(serve()) == (0, None)  # no list to check: the chat requests decide


async def _redirecting(status: int, where: str, seen: list):
    """A server whose /v1/chat/completions answers `status` to `where` (a path here, or a URL elsewhere),
    and whose /v2/chat/completions answers the chat; `seen`: the request lines it got."""

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n")[0].decode()
        seen.append(line)
        n = int(next((h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0))
        if n:
            await reader.readexactly(n)
        if "/v1/" in line:
            to = where.format(port=writer.get_extra_info("sockname")[1]).encode()
            writer.write(b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (status, to))
        else:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(ANSWER), ANSWER)
            )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _ask_redirected(status: int, where: str):
    seen: list = []  # the request lines the server got
    return await _ask_server(await _redirecting(status, where, seen), seen, attempts=3)


@pytest.mark.parametrize(
    "status, where, says",
    [
        (307, "http://127.0.0.1:9/v2/chat/completions", "to another origin"),  # the prompt would go elsewhere
        (308, "http://localhost:{port}/v2/chat/completions", "to another origin"),  # another host name
        (301, "/v2/chat/completions", "would turn the POST into a GET"),  # the answer would be to no prompt
        (303, "/v2/chat/completions", "would turn the POST into a GET"),
    ],
)
def test_a_redirect_elsewhere_or_to_a_get_is_refused_not_followed(status, where, says):
    err, seen = asyncio.run(_ask_redirected(status, where))
    assert isinstance(err, NonRetryableError) and err.reason == "redirect_refused", err
    assert says in err.detail and f"HTTP {status}" in err.detail and "Fix: set the base_url" in err.detail
    assert seen == ["POST /v1/chat/completions HTTP/1.1"]  # asked once, the redirect not followed


def test_a_refused_redirect_shows_its_target_without_credentials():
    err, _ = asyncio.run(_ask_redirected(307, "http://user:sk-loc-SECRET123456789@127.0.0.2:9/v2?sig=SECRET987654321"))
    assert isinstance(err, NonRetryableError) and err.reason == "redirect_refused", err
    assert "SECRET" not in err.detail and "http://user:***@127.0.0.2:9/v2?sig=***" in err.detail, err.detail


def test_a_same_origin_redirect_that_keeps_the_post_is_followed():
    out, seen = asyncio.run(_ask_redirected(307, "/v2/chat/completions"))
    assert not isinstance(out, Exception), out
    assert seen == ["POST /v1/chat/completions HTTP/1.1", "POST /v2/chat/completions HTTP/1.1"]


def test_a_connection_closed_mid_answer_says_what_failed():
    """A server that closes the connection before the body it announced: the failure's detail names what
    failed, not an empty message ("connection_error: URL: ")."""

    async def go():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"cho')
            await writer.drain()
            writer.close()

        return await _ask_server(await asyncio.start_server(handle, "127.0.0.1", 0), [])

    err, _ = asyncio.run(go())
    assert isinstance(err, TeacherError) and err.reason == "connection_error", err
    said = err.detail.split("/v1: ", 1)[1]
    assert said.strip() and not said.startswith("(gave up"), err.detail
