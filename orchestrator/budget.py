"""The budget gate: counts teacher spend and refuses requests past orchestrator.budget (or after a stop).

The transport awaits `reserve(est_prompt, est_completion)` before every HTTP attempt and calls
`settle(est_prompt, est_completion, usage_or_None)` after it (transport.Gate); a refusal is
StopRequested carrying the stop reason (budget:max_requests, budget:max_completion_tokens,
budget:max_cost, stopped).
"""

from __future__ import annotations

import asyncio
import math
import sys

from orchestrator.transport import StopRequested


#: A spend total above this (or not finite) is not believed: only absurd usage recorded by an older
#: distill (which stored whatever an endpoint reported) gets there.
MAX_PRIOR_TOKENS = float(2**53)


def _prior(what: str, v: float) -> float:
    """A total restored from an earlier run; one that is not finite, negative or absurd counts as 0, warned."""
    if math.isfinite(v) and 0 <= v <= MAX_PRIOR_TOKENS:
        return v
    print(
        f"distill: warning: the {what} spent before this run add up to {v:g}, which is not a plausible "
        "count (the recording holds absurd usage an endpoint reported to an older distill); they are "
        "counted as 0 against the budget",
        file=sys.stderr,
    )
    return 0.0


class BudgetGate:
    """Counts spend and refuses requests past a budget (or after a stop).

    Every HTTP attempt reserves its estimated tokens; a request is refused only
    when the estimate would not fit even after all in-flight requests have
    settled, so with `max_tokens` set the completion-token and cost budgets are
    never exceeded, and max_requests is exact.
    """

    def __init__(
        self,
        budget,
        prior_requests: int = 0,
        prior_prompt: float = 0.0,
        prior_completion: float = 0.0,
        stop_event: asyncio.Event | None = None,
    ):
        self.b = budget
        self.requests = prior_requests
        self.prompt_tokens = _prior("prompt_tokens", prior_prompt)
        self.completion_tokens = _prior("completion_tokens", prior_completion)
        self.res_prompt = 0.0
        self.res_completion = 0.0
        self.in_flight = 0
        self.stop_reason: str | None = None
        self.stop_event = stop_event
        self._settled = asyncio.Condition()

    def cost(self, prompt: float | None = None, completion: float | None = None) -> float:
        p = self.prompt_tokens if prompt is None else prompt
        c = self.completion_tokens if completion is None else completion
        return (p * self.b.cost_per_1k_prompt + c * self.b.cost_per_1k_completion) / 1000.0

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def stopped(self) -> bool:
        """A stop reason is set or the stop event fired (the client ends retry waits early on it)."""
        return self.stop_reason is not None or (self.stop_event is not None and self.stop_event.is_set())

    def _over(self, est_p: float, est_c: float) -> str | None:
        b = self.b
        if b.max_requests is not None and self.requests >= b.max_requests:
            return "budget:max_requests"
        c = self.completion_tokens + self.res_completion
        if b.max_completion_tokens is not None and (
            c >= b.max_completion_tokens or c + est_c > b.max_completion_tokens
        ):
            return "budget:max_completion_tokens"
        if b.max_cost is not None:
            cost = self.cost(self.prompt_tokens + self.res_prompt + est_p, c + est_c)
            if cost > b.max_cost or self.cost(self.prompt_tokens + self.res_prompt, c) >= b.max_cost:
                return "budget:max_cost"
        return None

    async def reserve(self, est_p: float, est_c: float) -> None:
        async with self._settled:
            while True:
                if self.stop_event is not None and self.stop_event.is_set():
                    self.stop("stopped")
                if self.stop_reason:
                    raise StopRequested(self.stop_reason)
                over = self._over(est_p, est_c)
                if over is None:
                    break
                if self.in_flight == 0:
                    self.stop(over)
                    raise StopRequested(over)
                await self._settled.wait()  # in-flight estimates may free room
            self.requests += 1
            self.in_flight += 1
            self.res_prompt += est_p
            self.res_completion += est_c

    def settle(self, est_p: float, est_c: float, usage: dict[str, int] | None) -> None:
        self.in_flight -= 1
        self.res_prompt -= est_p
        self.res_completion -= est_c
        if usage:
            self.prompt_tokens += usage.get("prompt_tokens", 0)
            self.completion_tokens += usage.get("completion_tokens", 0)
        asyncio.get_running_loop().create_task(self._notify())

    def unsent(self) -> None:
        """The attempt just settled was stopped before it was sent: it is no request."""
        self.requests -= 1

    async def _notify(self) -> None:
        async with self._settled:
            self._settled.notify_all()
