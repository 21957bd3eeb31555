"""Steps with nothing to train: a samples folder whose completion masks are all 0 (or whose completions
are empty) makes steps of loss 0 that teach nothing. The first such step is warned about; a run made only
of them fails (NothingTrained, a user error) instead of ending "done" with an unchanged student. And the
message for a samples folder that leaves nothing to train on at all (nothing_to_train)."""

from __future__ import annotations

import sys
from pathlib import Path


class NothingTrained(Exception):
    """Every step of this run had 0 trained tokens (a user error: the samples' masks train nothing)."""


class Untrained:
    """Steps with no trained token: the first is warned about; a run made only of them fails."""

    def __init__(self) -> None:
        self.steps = self.empty = 0

    def note(self, metrics: dict, step: int) -> None:
        self.steps += 1
        if metrics.get("trained_tokens", 1) == 0:
            self.empty += 1
            if self.empty == 1:
                print(
                    f"trainer: warning: step {step} had no trained token (every sample's completion_mask is 0, "
                    "or its completion is empty); such samples teach nothing",
                    file=sys.stderr,
                )

    def check(self) -> None:
        """Raises NothingTrained when every step had nothing to train."""
        if self.steps and self.empty == self.steps:
            raise NothingTrained(
                f"all {self.steps} step(s) of this run had 0 trained tokens: no sample has a completion_mask "
                "with a 1. Fix: check how the samples were made (distill inspect shows a sample's trained "
                "tokens); a loss over nothing leaves the student as it was"
            )


def nothing_to_train(samples_dir: Path, seen: int, eval_samples: int) -> str:
    if not seen:
        return (
            f"{samples_dir} is marked done and holds no sample to train on. Fix: produce samples first "
            "(distill rollout / distill replay with the same output_dir: their summary says why none was made), "
            "or pass --samples DIR"
        )
    return (
        f"all {seen} sample(s) in {samples_dir} went to the held-out evaluation slice (trainer.eval_samples = "
        f"{eval_samples}): none was left to train on. Fix: lower trainer.eval_samples (or set trainer.eval_every "
        "= 0), or produce more samples"
    )
