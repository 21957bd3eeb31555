"""How often `distill train` will show each sample: a note before training on a finished folder
(and, on a folder still unfinished, that training waits for its producer).

With `trainer.repeat` (the default) training always runs `max_steps` steps, going over a finished
samples folder again and again. That is what a user wants for multi-epoch SFT, but a folder smaller
than one step (3 samples, `samples_per_step = 8`) puts the same sample into one step several times,
and 2 steps over 10 000 samples see a fraction of them: both are worth a line before the first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.core import contract
from distill.run_lock import held_elsewhere, lock_file


def count_samples(samples_dir: Path) -> int:
    """Samples in a folder's shards: one JSON line each (blank lines are not samples)."""
    n = 0
    for shard in contract.list_shards(samples_dir):
        with open(shard, "rb") as f:
            n += sum(1 for line in f if line.strip())
    return n


def epochs_note(t: Any, samples_dir: Path) -> str | None:
    """A line on how `trainer` (config section) `t` will go over the finished folder `samples_dir`,
    or None when there is nothing worth saying (folder still being written, about one epoch)."""
    if not contract.is_done(samples_dir):
        return None  # samples still coming: their number is not known yet
    held = t.eval_samples if t.eval_samples and t.eval_every else 0
    n = count_samples(samples_dir) - held
    if n <= 0:
        return None  # the trainer itself says there is nothing to train on
    seen = t.max_steps * t.samples_per_step
    epochs = seen / n
    if not t.repeat:
        if seen > n:
            steps = -(-n // t.samples_per_step)
            return (
                f"trainer: {n} training samples end the stream after about {steps} of "
                f"max_steps = {t.max_steps} steps (trainer.repeat = false)"
            )
        return None
    if n < t.samples_per_step:
        return (
            f"trainer: warning: {n} training samples, fewer than trainer.samples_per_step = {t.samples_per_step}: "
            f"every step holds the same samples more than once ({epochs:.1f} epochs in max_steps = {t.max_steps}). "
            "Fix: lower trainer.samples_per_step, or produce more samples"
        )
    steps = f"{t.max_steps} step{'s' if t.max_steps > 1 else ''} of {t.samples_per_step}"
    if epochs >= 1.5:
        return f"trainer: {n} training samples, {steps}: about {epochs:.1f} epochs"
    if epochs < 0.5:
        return (
            f"trainer: {n} training samples, {steps}: {seen} of them ({100 * epochs:.0f}%) "
            "will be trained on; raise trainer.max_steps to use them all"
        )
    return None


def waiting_note(samples_dir: Path, timeout_s: float) -> str | None:
    """A line saying that `distill train` waits for samples (no DONE marker yet), else None."""
    if contract.is_done(samples_dir):
        return None
    have = count_samples(samples_dir) if samples_dir.is_dir() else 0
    role = "score" if samples_dir.name == "scored" else "sample"
    if held_elsewhere(samples_dir.parent, role):
        now = ""
    else:  # a rollout that failed or was killed: say so now, not after the whole timeout
        now = (
            f"; no producer is running on it now (none holds {lock_file(samples_dir.parent, role)}): if the "
            f"{'distill score' if role == 'score' else 'rollout or replay'} that writes it stopped, rerun it "
            "(it resumes, and ends the folder with DONE)"
        )
    return (
        f"trainer: {samples_dir} has {have} sample(s) and no {contract.DONE_FILE} marker yet: training takes "
        f"them as a producer (distill rollout / replay) writes them, and gives up after "
        f"trainer.sample_timeout = {timeout_s:.0f}s without a new one{now}"
    )
