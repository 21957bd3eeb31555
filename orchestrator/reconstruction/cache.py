"""The bounded caches reconstruction keeps (prompt renders, prompt ids, verified
prompts, token-bytes tables): plain dicts trimmed in insertion order."""

from __future__ import annotations

from typing import Any


def put_bounded(cache: dict, key: Any, value: Any, size: int) -> None:
    """cache[key] = value, then the oldest entries (insertion order) dropped beyond `size`."""
    cache[key] = value
    while len(cache) > size:
        cache.pop(next(iter(cache)))
