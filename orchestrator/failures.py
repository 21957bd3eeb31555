"""When a rollout that lost requests has failed: counts of failed (prompt, sample) pairs, by reason.

A pair fails for good when its request spent every retry (connection errors, timeouts, 5xx, malformed
or unusable answers) or was refused with a 4xx. Failed pairs are never recorded, so a rerun asks for
them again. The run fails (no DONE, non-zero exit):

- early, when the failures already exceed `max_failed_fraction` of every pair the source can give
  (so the end of the run could not bring the fraction back under it), or when the last `streak_limit`
  requests all failed for good after their retries (the endpoint went away);
- at the end, when failures / (failures + recorded pairs) of this run exceed `max_failed_fraction`,
  or when the rollout had prompts and produced no sample at all (whatever the reason).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from distill.core.verbosity import quoted

KEY = "orchestrator.max_failed_fraction"


class RolloutError(RuntimeError):
    """The run stopped on an error it cannot work around (bad key, unknown model, ...)."""


class FailureTally:
    def __init__(self, max_fraction: float, planned_pairs: int | None, streak_limit: int, base_url: str):
        self.max_fraction = max_fraction
        self.planned = planned_pairs  # every pair the source can give (an upper bound), None when unknown
        self.streak_limit = streak_limit
        self.base_url = base_url
        self.by_reason: Counter = Counter()  # failed pairs by reason
        self.first: dict[str, str] = {}  # reason -> the first detail seen
        self.failed = self.ok = self.streak = 0
        self.stopped_by: str | None = None  # "streak" or "fraction": the rule that stopped the run early

    def succeeded(self, pairs: int) -> None:
        self.ok += pairs
        self.streak = 0

    def fail(self, reason: str, pairs: int, detail: str, transient: bool) -> str | None:
        """Counts `pairs` failed for good; the message to stop the run with, if it must stop now.
        `transient`: the request spent its retries (a 4xx refusal of one prompt does not extend the streak)."""
        self.by_reason[reason] += pairs
        self.first.setdefault(reason, detail)
        self.failed += pairs
        if transient:
            self.streak += 1
            if self.streak >= self.streak_limit:
                self.stopped_by = self.stopped_by or "streak"
        if self.planned and self.failed > self.max_fraction * self.planned:
            self.stopped_by = self.stopped_by or "fraction"
        return self.early_message()

    def early_message(self) -> str | None:
        """The message of the early stop, with the counts as they are now (call it again at the end of the
        run: requests in flight when it stopped may have failed since), or None when it did not stop."""
        if self.stopped_by == "streak":
            return (
                f"{self.streak_limit} teacher requests in a row all failed after every retry, so the endpoint "
                f"({self.base_url}) looks unusable now; {self.describe()}. {self._fix()}"
            )
        if self.stopped_by == "fraction":
            return (
                f"the teacher failed for good on {self.failed} (prompt, sample) pairs, more than {KEY} = "
                f"{self.max_fraction:g} of the {self.planned} the prompts ask for; {self.describe()}. "
                f"{self._fix()}"
            )
        return None

    def verdict(self) -> str | None:
        """At the end of the run: the message to fail it with, or None."""
        decided = self.failed + self.ok
        if not self.failed or self.failed <= self.max_fraction * decided:
            return None
        return (
            f"the teacher failed for good on {self.failed} of the {decided} (prompt, sample) pairs of this run "
            f"({self.failed / decided:.0%}, more than {KEY} = {self.max_fraction:g}); {self.describe()}. "
            f"{self._fix()}"
        )

    def describe(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in self.by_reason.most_common())
        first = self.by_reason.most_common(1)[0][0]
        return f"failed by reason: {reasons} (first {first}: {self.first[first][:300]})"

    def _fix(self) -> str:
        return (
            "Answers already received are recorded and kept; the failed pairs are asked again when you rerun "
            f"the same command. Fix the endpoint (orchestrator.rollout_model.base_url = {self.base_url!r}), "
            f"or raise {KEY} to accept the failures (they are listed in rejects.jsonl)"
        )


def nothing_published(
    prompts: int, samples: int, rejections: Counter, rejects_path: Path, stop_reason: str | None
) -> str | None:
    """The message for a rollout that had prompts and ended with no sample at all, else None."""
    if not prompts or samples > 0:
        return None
    rej = ", ".join(f"{k}={v}" for k, v in rejections.most_common()) or "none"
    budget = (stop_reason or "").removeprefix("budget:") if (stop_reason or "").startswith("budget:") else None
    fix = (
        f"the budget orchestrator.budget.{budget} stopped the run before any sample (a request is let through "
        "only when its estimate, max_tokens x n completion tokens, fits). Fix: raise that budget, or lower "
        "orchestrator.sampling.max_tokens or n; then rerun the same command"
        if budget
        else f"fix the cause{reason_fix(rejections)} and rerun the same command"
    )
    return (
        f"no sample was produced from the {prompts} prompt(s) started (stop: {stop_reason}; rejections: {rej}; "
        f"see {rejects_path}{last_rejection(rejects_path) if rejections else ''}). Nothing was marked done; {fix}"
    )


def last_rejection(rejects_path: Path) -> str:
    """`; the last: REASON: detail` from the rejects file's last line (this run's latest rejection), shortened,
    or "": the counts by reason alone do not say what to fix, where the detail often does."""
    try:
        with open(rejects_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))  # the file's end is enough for its last line
            line = f.read().decode("utf-8", "replace").rstrip("\n").rsplit("\n", 1)[-1]
        row = json.loads(line)
        detail = row.get("detail") or ""
        text = f"{row['reason']}: {detail}" if detail else str(row["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"; the last: {quoted(text)}"


def reason_fix(rejections: Counter) -> str:
    """`: <the setting>` for the most common rejection reason, where one lets it through."""
    from orchestrator.reconstruction.reasons import REJECTION_FIXES

    top = next((r for r, _ in rejections.most_common(1)), None)
    return f" ({top}: {REJECTION_FIXES[top]})" if top in REJECTION_FIXES else ""
