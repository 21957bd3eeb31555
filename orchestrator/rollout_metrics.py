"""A rollout's counters, its metrics lines (run_dir/orchestrator_metrics.jsonl) and the one-line summary.

A line is written every 5 s and a final one (`"final": true`, with the stop reason) when the run ends;
the final one is also the dict run_rollouts returns, and format_summary(line) is what it prints.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.sink import format_notes


@dataclass
class RunCounters:
    """What this run did, beside what the gate, the publisher and the transport count."""

    t_begin: float = field(default_factory=time.time)
    requests_ok: int = 0  # logical requests answered (retries not counted)
    recorded_this_run: int = 0
    n_ignored_responses: int = 0  # answers with fewer choices than n asked for
    rebuilt: int = 0  # samples rebuilt from the recording (recorded, never published)
    completion_mean: float = 0.0  # completion tokens per choice so far (the estimate when max_tokens is unset)
    unusable: Counter = field(default_factory=Counter)  # choices asked again, by reason (empty_content, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # resume counts and the like, copied into each line

    def answered(self, completion_tokens: int, choices: int) -> None:
        self.requests_ok += 1
        self.completion_mean += (completion_tokens / max(1, choices) - self.completion_mean) / self.requests_ok


def metrics_line(
    c: RunCounters, gate, pub, stats, tally, recorded: int, backpressure_wait_s: float, final: bool = False
) -> dict:
    """One metrics line: `gate` (budget.BudgetGate), `pub` (the Publisher), `stats` (transport.ClientStats),
    `tally` (failures.FailureTally), `recorded`: answers in the recording now."""
    elapsed = time.time() - c.t_begin
    d = {
        "time": time.time(),
        "elapsed_s": round(elapsed, 3),
        "stop_reason": gate.stop_reason if final else None,
        "requests": gate.requests,
        "requests_ok_this_run": c.requests_ok,
        "attempts_this_run": stats.attempts,
        "retries": dict(stats.retries),
        "retry_after_waits": stats.retry_after_waits,
        "recorded": recorded,
        "recorded_this_run": c.recorded_this_run,
        "samples": pub.writer.published + pub.buffered,
        "samples_this_run": pub.samples,
        "rejections": dict(pub.rejections),
        "reconstruction_notes": pub.notes(),
        "failed_pairs": dict(tally.by_reason),
        "unusable_choices": dict(c.unusable),
        "prompt_tokens": round(gate.prompt_tokens),
        "completion_tokens": round(gate.completion_tokens),
        "cost": round(gate.cost(), 6),
        "usage_estimated": stats.usage_estimated,
        "extra_choices": stats.extra_choices,
        "n_ignored_responses": c.n_ignored_responses,
        "reward_pass_rate": (pub.passed / pub.scored) if pub.scored else None,
        "samples_per_s": round(pub.samples / elapsed, 2) if elapsed > 0 else None,
        "backpressure_wait_s": round(backpressure_wait_s, 3),
        "in_flight_requests": gate.in_flight,
        **c.extra,
    }
    if final:
        d["final"] = True
    return d


class MetricsFile:
    """run_dir/orchestrator_metrics.jsonl, appended to (a resumed run adds its lines after the earlier ones)."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run, closed by close()

    def write(self, line: dict) -> dict:
        self._f.write(json.dumps(line) + "\n")
        self._f.flush()
        return line

    def close(self) -> None:
        self._f.close()


def format_summary(s: dict) -> str:
    rej = ", ".join(f"{k}={v}" for k, v in sorted(s["rejections"].items())) or "none"
    retries = ", ".join(f"{k}={v}" for k, v in sorted(s.get("retries", {}).items())) or "none"
    if s.get("extra_choices"):
        rej += f"; extra choices paid for, not recorded: {s['extra_choices']}"
    if s.get("unusable_choices"):
        rej += "; choices asked again: " + ", ".join(f"{k}={v}" for k, v in sorted(s["unusable_choices"].items()))
    pr = s.get("reward_pass_rate")
    return (
        f"orchestrator: stop={s['stop_reason']} requests={s['requests']} samples={s['samples']} "
        f"(+{s['samples_this_run']} this run) retries: {retries}; rejections: {rej}; "
        f"tokens prompt={s['prompt_tokens']} "
        f"completion={s['completion_tokens']} cost={s['cost']:.4f}"
        + (
            f" (including estimates for {s['usage_estimated']} answers that reported no usable usage)"
            if s.get("usage_estimated")
            else ""
        )
        + (f" reward_pass_rate={pr:.2f}" if pr is not None else "")
        + (
            f"; pairs done={s['pairs_done']} (published {s['pairs_published']}, rejected {s['pairs_rejected']})"
            if "pairs_done" in s
            else ""
        )
        + (
            f"; cache hits={s['cache_hits']} misses={s['cache_misses']}"
            + (f" corrupt={s['cache_corrupt']}" if s.get("cache_corrupt") else "")
            if "cache_hits" in s
            else ""
        )
        + format_notes(s.get("reconstruction_notes") or {})
        + f" in {s['elapsed_s']:.1f}s"
    )
