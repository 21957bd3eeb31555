"""What the transport says about an answer it delivers (usage it had to estimate, choices beyond the
n asked for) and about a long wait a server asked for. Each is counted in the client stats; the first
of each kind is told once per run."""

from __future__ import annotations

import sys
from typing import Any


def note_answer(stats: Any, answer: Any, shown: str) -> None:
    """Counts an answer's optional `usage_estimated` (why) and `extra_choices` in `stats` (ClientStats);
    the first of each warns, naming the endpoint `shown`."""
    why, extra = getattr(answer, "usage_estimated", None), getattr(answer, "extra_choices", 0)
    warn = []
    if why and not stats.usage_estimated:
        warn.append(
            f"{shown} reported no usable token usage ({why}); such answers are counted against the "
            "budget at the request's estimate (completion: max_tokens x n, an upper bound, or without "
            "max_tokens the answer's characters / 4; prompt: characters / 4), and the tokens and cost "
            "reported include these estimates"
        )
    if extra and not stats.extra_choices:
        warn.append(
            f"{shown} answered with {extra} more choice(s) than were asked for (it does not honour n); "
            "the first n are kept, the others are paid for but not recorded (extra_choices in the metrics)"
        )
    for w in warn:
        print(f"distill: warning: {w}", file=sys.stderr)
    stats.usage_estimated += bool(why)
    stats.extra_choices += extra


#: A wait asked for by the server (Retry-After) at least this long is told: the run looks stuck otherwise.
LONG_WAIT_S = 30.0


def note_wait(stats: Any, delay: float, retry_after: float | None, detail: str) -> None:
    """Counts a wait the server asked for (Retry-After) in `stats`; the first long one is told."""
    if retry_after is None:
        return
    stats.retry_after_waits += 1
    if delay >= LONG_WAIT_S and not stats.long_waits:
        print(
            f"distill: note: the teacher asked to wait {retry_after:g} s before retrying ({detail[:160]}); waiting "
            f"{delay:g} s (a Retry-After is honoured up to 300 s, or orchestrator.retry.max_backoff when larger). "
            "Ctrl-C stops; the same command resumes",
            file=sys.stderr,
        )
    stats.long_waits += delay >= LONG_WAIT_S
