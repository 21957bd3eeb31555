"""The transport's pacing: token buckets (requests and tokens per minute) and the retry policy.

TokenBucket(per_minute)          acquire(k) waits until k units are free; adjust(delta) corrects a debit
RetryPolicy(max_attempts, ...)   delay(attempt, retry_after): exponential backoff with jitter, or Retry-After
parse_retry_after(header)        seconds from a Retry-After header (delta-seconds or an HTTP date)
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from dataclasses import dataclass, field


class TokenBucket:
    """Refills at `rate` units/s up to `capacity`; `acquire(k)` waits until k units are free.

    A debit larger than the capacity is allowed once the bucket is full (it goes
    negative), so one large request cannot block forever.
    """

    def __init__(self, per_minute: float, capacity: float | None = None, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, per_minute / 60.0)
        self.level = self.capacity
        self.clock = clock
        self.t = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            while True:
                self._refill()
                need = min(amount, self.capacity)
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def adjust(self, delta: float) -> None:
        """Debit (delta > 0) or credit the bucket after the real cost is known."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


MAX_RETRY_AFTER = 300.0  # seconds: the longest Retry-After honoured (unless max_backoff is longer)


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1).

        A Retry-After replaces the backoff, capped at max(max_backoff, 300) s (a server asking for an hour is
        not waited on; the attempt count still bounds the retries); a non-finite one is ignored."""
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(0.0, retry_after), max(self.max_backoff, MAX_RETRY_AFTER))
        base = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return base * (0.5 + 0.5 * self.rng.random())  # "equal jitter": [base/2, base]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        v = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, v) if math.isfinite(v) else None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - (now if now is not None else time.time()))
