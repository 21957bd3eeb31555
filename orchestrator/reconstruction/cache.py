"""The bounded caches reconstruction keeps (prompt renders, prompt ids, verified
prompts, token-bytes tables): plain dicts trimmed in insertion order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def put_bounded(cache: dict, key: Any, value: Any, size: int) -> None:
    """cache[key] = value, then the oldest entries (insertion order) dropped beyond `size`."""
    cache[key] = value
    while len(cache) > size:
        cache.pop(next(iter(cache)))


def per_tokenizer(cache: dict, backend: Any, extra: tuple, build: Callable[[], T]) -> T:
    """build(), kept per process for each distinct tokenizer and `extra` (the key is the
    tokenizer's full serialisation, so an edited tokenizer is a different one; one that
    cannot be serialised is not cached)."""
    try:
        key = (type(backend), hashlib.sha256(backend.to_str().encode("utf-8")).digest(), *extra)
    except Exception:  # noqa: BLE001 - cannot serialise it: no caching
        return build()
    if key not in cache:
        put_bounded(cache, key, build(), 4)
    return cache[key]
