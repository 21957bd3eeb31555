"""The HTTP client under every teacher endpoint's SDK client: a response body has a size limit.

A server that streams without end (a broken proxy, a hostile endpoint) would otherwise be read
into memory until the machine runs out of it: the SDK reads a whole non-streamed body before it
returns. Each response's byte stream is counted as it arrives, and past `MAX_RESPONSE_BYTES` the
read stops with `ResponseTooLarge` (the transport makes it a `response_too_large` failure that is
not retried). The bytes counted are the decoded ones: a compressed body (a 2 MB gzip "bomb" holds
2 GiB of spaces) is decompressed here, in steps of at most 1 MiB, and counted as it grows; the
client asks for gzip or deflate only, and refuses another content-encoding. The limit is far
above any real answer: a scoring batch of 64 sequences x 4096 tokens with 20 alternatives per
token is about 0.3 GiB of JSON.

The other half of a hostile answer, a body sent a byte at a time, is the transport's: the HTTP
library's timeout is per read, so the transport bounds the whole attempt (send and read) by the
configured timeout.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

from distill.core.redact import redact_url, remember_headers, remember_secret

try:  # the HTTP library under the SDK: httpx2 in openai 3.x, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older openai
    import httpx  # type: ignore[no-redef]

#: The most bytes one response body may have (decoded).
MAX_RESPONSE_BYTES = 1 << 30
#: The content-encodings the client asks for and decodes itself (counting the decoded bytes).
ACCEPT_ENCODING = "gzip, deflate"
_STEP = 1 << 20  # the most bytes one decompression step may produce


class ResponseTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"the response body passed {limit / (1 << 20):.0f} MiB and was cut off")


class UnsupportedEncoding(httpx.DecodingError):
    """A body in a content-encoding distill did not ask for (br, zstd, stacked codings): the same
    server answers the same request the same way, so it is not retried."""


class RedirectRefused(Exception):
    """A redirect to another origin (the prompt would go where the config does not say, and the
    recording would name the wrong endpoint), or one that turns a POST into a GET (the answer would
    be to no prompt): not followed, not retried."""


def check_redirect(response: Any) -> None:
    """Raises RedirectRefused for a redirect the clients do not follow (see RedirectRefused); a
    same-origin redirect that keeps the method (307/308, a path moved) is followed."""
    if not response.has_redirect_location:
        return
    request = response.request
    target = request.url.join(response.headers["location"])
    why = None
    if (target.scheme, target.host, target.port) != (request.url.scheme, request.url.host, request.url.port):
        why = "to another origin"
    elif response.status_code in (301, 302, 303) and request.method not in ("GET", "HEAD"):
        why = f"that would turn the {request.method} into a GET"
    if why:
        raise RedirectRefused(
            f"the server redirected {request.method} {request.url.path} to {redact_url(str(target))} "
            f"(HTTP {response.status_code}), "
            f"{why}; distill does not follow it. Fix: set the base_url to where the teacher answers"
        )


#: What reading a body through these clients may raise besides the SDK's errors (the SDK wraps them
#: in APIConnectionError inside its calls, but not when a body is read afterwards).
UNREADABLE: tuple[type[Exception], ...] = (ResponseTooLarge, httpx.DecodingError)


class _Meter:
    """Counts a body's bytes after decoding it (gzip, deflate or none) and stops past the limit."""

    def __init__(self, limit: int, encoding: str | None):
        self.limit, self.encoding, self.n = limit, encoding, 0
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next raw chunk, in steps of at most _STEP bytes."""
        if self.encoding is None:
            yield self._count(data)
            return
        while data:
            try:
                out = self._d.decompress(data, _STEP)
            except zlib.error as e:
                if self.encoding == "deflate" and not self._started:  # raw deflate, without the zlib header
                    self._d, self._started = zlib.decompressobj(-zlib.MAX_WBITS), True
                    continue
                raise httpx.DecodingError(f"the {self.encoding} response body is corrupt ({e})") from None
            self._started = True
            data = self._d.unconsumed_tail
            if out:
                yield self._count(out)

    def end(self) -> bytes:
        return self._count(self._d.flush()) if self.encoding is not None else b""

    def _count(self, out: bytes) -> bytes:
        self.n += len(out)
        if self.n > self.limit:
            raise ResponseTooLarge(self.limit)
        return out


class _Counted(httpx.AsyncByteStream):
    def __init__(self, stream: Any, meter: _Meter):
        self._stream, self._meter = stream, meter

    async def __aiter__(self):
        async for chunk in self._stream:
            for out in self._meter.feed(chunk):
                yield out
        yield self._meter.end()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _CountedSync(httpx.SyncByteStream):
    def __init__(self, stream: Any, meter: _Meter):
        self._stream, self._meter = stream, meter

    def __iter__(self):
        for chunk in self._stream:
            yield from self._meter.feed(chunk)
        yield self._meter.end()

    def close(self) -> None:
        self._stream.close()


def _meter(response: Any, limit: int) -> _Meter:
    """The meter for a response: decoding its body here when it is gzip or deflate (the header is
    dropped, so the HTTP library does not decode it again); another content-encoding is refused."""
    codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return _Meter(limit, None)
    if len(codings) == 1 and codings[0] in ("gzip", "deflate"):
        del response.headers["content-encoding"]
        return _Meter(limit, codings[0])
    raise UnsupportedEncoding(
        f"the response body is encoded {', '.join(codings)!r} although distill asks for {ACCEPT_ENCODING} "
        "only (Accept-Encoding); make the server or proxy honour it"
    )


def capped_http_client(limit: int | None = None) -> Any:
    """The SDK's default async HTTP client (its timeouts, connection limits, redirects, proxies from
    the environment), whose response bodies stop at `limit` decoded bytes (default MAX_RESPONSE_BYTES).

    A response hook wraps each response's byte stream before the body is read. (Not a transport of
    our own: a client given a transport ignores HTTP(S)_PROXY, which users behind a proxy need.)"""
    from openai import DefaultAsyncHttpxClient

    cap = MAX_RESPONSE_BYTES if limit is None else limit

    async def count(response: Any) -> None:
        check_redirect(response)
        response.stream = _Counted(response.stream, _meter(response, cap))

    return DefaultAsyncHttpxClient(event_hooks={"response": [count]}, headers={"Accept-Encoding": ACCEPT_ENCODING})


def capped_sync_http_client(limit: int | None = None) -> Any:
    """capped_http_client for the SDK's synchronous client (the endpoint check, `distill probe`)."""
    from openai import DefaultHttpxClient

    cap = MAX_RESPONSE_BYTES if limit is None else limit

    def count(response: Any) -> None:
        check_redirect(response)
        response.stream = _CountedSync(response.stream, _meter(response, cap))

    return DefaultHttpxClient(event_hooks={"response": [count]}, headers={"Accept-Encoding": ACCEPT_ENCODING})


def endpoint_client(
    base_url: str, api_key: str, *, headers: dict | None = None, timeout: float, sync: bool = False
) -> Any:
    """The SDK client for one teacher endpoint (transport, endpoint check, `distill probe`): no retries
    of its own (the transport's are counted and logged), response bodies capped, and the key and
    credential headers remembered, so that a server echoing them back has them masked
    (distill.core.redact.mask_known)."""
    from openai import AsyncOpenAI, OpenAI

    remember_secret(api_key)
    remember_headers(headers)
    cls, http = (OpenAI, capped_sync_http_client()) if sync else (AsyncOpenAI, capped_http_client())
    return cls(
        base_url=base_url,
        api_key=api_key,
        default_headers=headers or None,
        timeout=timeout,
        max_retries=0,
        http_client=http,
    )


#: The most bytes a control answer of a local server (a model list, a tokenizer probe, a
#: weight-reload reply) may have: they are a few KiB; anything near this is not the server we expect.
MAX_CONTROL_BYTES = 64 << 20


def read_capped(response: Any, limit: int | None = None) -> bytes:
    """The body of a urllib response (the local servers' control calls), refused past `limit` bytes
    (default MAX_CONTROL_BYTES; urllib asks for no compression and decodes none, so the bytes read
    are the body's)."""
    limit = MAX_CONTROL_BYTES if limit is None else limit
    raw = response.read(limit + 1)
    if len(raw) > limit:
        raise ResponseTooLarge(limit)
    return raw


def unrepeatable(e: BaseException) -> ResponseTooLarge | UnsupportedEncoding | RedirectRefused | None:
    """The ResponseTooLarge, UnsupportedEncoding or RedirectRefused behind an exception the SDK may have
    wrapped (APIConnectionError): a failure that sending the same request again would meet again."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, (ResponseTooLarge, UnsupportedEncoding, RedirectRefused)):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def failure_words(e: BaseException) -> str:
    """What a failed connection says: its cause's message, or the cause's type where that has none
    (a connection reset mid-answer: "RemoteProtocolError, no message")."""
    cause = e.__cause__ or e
    return str(cause) or f"{type(cause).__name__}, no message"
