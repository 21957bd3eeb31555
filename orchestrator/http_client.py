"""The HTTP client under every teacher endpoint's SDK client: a response body has a size limit.

A server that streams without end (a broken proxy, a hostile endpoint) would otherwise be read
into memory until the machine runs out of it: the SDK reads a whole non-streamed body before it
returns. Each response's byte stream is counted as it arrives, and past `MAX_RESPONSE_BYTES` the
read stops with `ResponseTooLarge` (the transport makes it a `response_too_large` failure that is
not retried). The limit is far above any real answer: a scoring batch of 64 sequences x 4096
tokens with 20 alternatives per token is about 0.3 GiB of JSON.

The other half of a hostile answer, a body sent a byte at a time, is the transport's: the HTTP
library's timeout is per read, so the transport bounds the whole attempt (send and read) by the
configured timeout.
"""

from __future__ import annotations

from typing import Any

try:  # the HTTP library under the SDK: httpx2 in openai 3.x, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older openai
    import httpx  # type: ignore[no-redef]

#: The most bytes one response body may have.
MAX_RESPONSE_BYTES = 1 << 30


class ResponseTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"the response body passed {limit / (1 << 20):.0f} MiB and was cut off")


class _Counted(httpx.AsyncByteStream):
    def __init__(self, stream: Any, limit: int):
        self._stream, self._limit = stream, limit

    async def __aiter__(self):
        n = 0
        async for chunk in self._stream:
            n += len(chunk)
            if n > self._limit:
                raise ResponseTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def capped_http_client(limit: int | None = None) -> Any:
    """The SDK's default async HTTP client (its timeouts, connection limits, redirects, proxies from
    the environment), whose response bodies stop at `limit` bytes (default MAX_RESPONSE_BYTES).

    A response hook wraps each response's byte stream before the body is read. (Not a transport of
    our own: a client given a transport ignores HTTP(S)_PROXY, which users behind a proxy need.)"""
    from openai import DefaultAsyncHttpxClient

    cap = MAX_RESPONSE_BYTES if limit is None else limit

    async def count(response: Any) -> None:
        response.stream = _Counted(response.stream, cap)

    return DefaultAsyncHttpxClient(event_hooks={"response": [count]})


def too_large(e: BaseException) -> ResponseTooLarge | None:
    """The ResponseTooLarge behind an exception the SDK may have wrapped (APIConnectionError)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, ResponseTooLarge):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None
