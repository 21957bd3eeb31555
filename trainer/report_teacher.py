"""The teacher panel of `distill report`: what the orchestrator wrote in the run dir, read back.

RUN_DIR/orchestrator_metrics.jsonl (orchestrator/rollout_metrics.py: a line every 5 s and a `"final"` one per
run; a resumed run appends its own lines, with cumulative `requests`, `samples`, tokens and `cost` and
per-run `retries`, `rejections` and `samples_per_s`) and RUN_DIR/rejects.jsonl (one line per pair or turn that
produced no sample, with its reason; exact across resumes). The trainer imports no orchestrator code: these
are files of a documented format (docs/orchestrator.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distill.core.jsonl import log_values, read_jsonl

METRICS = "orchestrator_metrics.jsonl"
REJECTS = "rejects.jsonl"


@dataclass
class TeacherRun:
    """The orchestrator's lines (in file order) and totals over its runs (a resume starts a new one)."""

    lines: list[dict]
    segments: list[dict]  # the last line of each run of the orchestrator
    rejects: Counter = field(default_factory=Counter)  # by reason, from rejects.jsonl (exact)

    @property
    def last(self) -> dict:
        return self.lines[-1]

    def summed(self, key: str) -> Counter:
        """A per-run counter (retries, rejections, failed_pairs) added up over the runs."""
        out: Counter = Counter()
        for s in self.segments:
            out.update(s.get(key) or {})
        return out

    def clock(self) -> tuple[list[float], str]:
        """Time of each line since the first (minutes, or seconds for a run under two minutes) and its unit."""
        t0 = self.lines[0].get("time", 0.0)
        secs = [ln.get("time", t0) - t0 for ln in self.lines]
        return ([s / 60 for s in secs], "minutes") if secs[-1] >= 120 else (secs, "seconds")


def _segments(lines: list[dict]) -> list[dict]:
    """The last line of each orchestrator run: a run ends at its final line, or (killed) where elapsed_s drops."""
    out, prev = [], None
    for ln in lines:
        if prev is not None and not prev.get("final") and ln.get("elapsed_s", 0) < prev.get("elapsed_s", 0):
            out.append(prev)  # killed: its last periodic line is all it left
        if ln.get("final"):
            out.append(ln)
        prev = ln
    if prev is not None and not prev.get("final"):
        out.append(prev)
    return out


def read_teacher(run_dir: Path) -> TeacherRun | None:
    """The teacher side of run_dir, or None when it holds no orchestrator metrics (a replay or train-only run)."""
    path = Path(run_dir) / METRICS
    lines = [x for x in log_values(path) if isinstance(x, dict)] if path.is_file() else []
    if not lines:
        return None
    rejects: Counter = Counter()
    rpath = Path(run_dir) / REJECTS
    if rpath.is_file():
        for ln in read_jsonl(rpath):  # a torn last line after a crash is skipped
            if ln.ok and isinstance(ln.value, dict) and "reason" in ln.value:
                rejects[str(ln.value["reason"])] += 1
    return TeacherRun(lines, _segments(lines), rejects)


def _fmt(c: Counter) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.most_common()) or "none"


def teacher_rows(t: TeacherRun) -> list[tuple[str, str]]:
    """(what, value) rows of the teacher summary (the text summary and the HTML table)."""
    last = t.last
    rates = [ln["samples_per_s"] for ln in t.segments if ln.get("samples_per_s") is not None]
    rejections = t.rejects or t.summed("rejections")
    rows = [
        ("orchestrator runs", f"{len(t.segments)} (stop: {', '.join(str(s.get('stop_reason')) for s in t.segments)})"),
        ("requests (attempts, retries included)", str(last.get("requests", "?"))),
        ("retries by reason", _fmt(t.summed("retries"))),
        ("samples published", str(last.get("samples", "?"))),
        ("rejections by reason" + (" (rejects.jsonl)" if t.rejects else ""), _fmt(rejections)),
        ("failed pairs by reason", _fmt(t.summed("failed_pairs"))),
        ("tokens", f"prompt {last.get('prompt_tokens', 0)}, completion {last.get('completion_tokens', 0)}"),
        ("cost (estimate, configured prices)", f"{last.get('cost', 0.0):.4f}"),
    ]
    if rates:
        rows.append(("samples/s (per run)", ", ".join(f"{r:.2f}" for r in rates)))
    return rows


def plot_teacher(axes, t: TeacherRun) -> None:
    """Four panels: requests and samples, cost (or tokens), samples/s over time; retries and rejections."""
    x, unit = t.clock()
    ax = axes[0]
    ax.plot(x, [ln.get("requests", 0) for ln in t.lines], marker=".", label="requests")
    ax.plot(x, [ln.get("samples", 0) for ln in t.lines], marker=".", label="samples")
    ax.set_title("teacher: requests and samples")
    ax.legend()
    if any(ln.get("cost") for ln in t.lines):
        axes[1].plot(x, [ln.get("cost", 0.0) for ln in t.lines], color="tab:red", marker=".")
        axes[1].set_title("teacher: cost (estimate)")
    else:
        axes[1].plot(x, [ln.get("completion_tokens", 0) for ln in t.lines], color="tab:red", marker=".")
        axes[1].set_title("teacher: completion tokens (no prices set)")
    axes[2].plot(x, [ln.get("samples_per_s") or 0.0 for ln in t.lines], color="tab:green", marker=".")
    axes[2].set_title("teacher: samples/s")
    axes[2].set_ylim(bottom=0)
    for a in axes[:3]:
        a.set_xlabel(f"{unit} since the first metrics line")
        a.grid(alpha=0.3)
    bars = [(f"retry {k}", v, "tab:orange") for k, v in t.summed("retries").most_common()]
    bars += [(f"reject {k}", v, "tab:purple") for k, v in (t.rejects or t.summed("rejections")).most_common()]
    bars += [(f"failed {k}", v, "tab:red") for k, v in t.summed("failed_pairs").most_common()]
    ax = axes[3]
    if bars:
        ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no retries, rejections or failed pairs", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("teacher: retries, rejections, failed pairs by reason")
