"""What every loss shares: the ignored-label value and the registry entry type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


class LossInputError(ValueError):
    """Samples that the configured loss cannot train on (a missing teacher field, a token id outside
    the student's vocabulary); the message names the field and the fix."""


#: Label of a position that is not trained (shifted labels; see trainer/data.py).
IGNORE = -100


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    `fn(hidden=, weight=, normalizer=, <each of needs>=, <each option of its config model>=)` is a
    pure function returning the micro-batch's loss *sum* divided by `normalizer` (the global count
    of trained positions of the step): hidden [..., H] final hidden states, weight [V, H] the
    lm_head weight. `needs` names the per-token inputs it takes from the micro-batch (fields of
    `trainer.data.MicroBatch`, all aligned with `labels`); every input other than `labels`,
    `position_ids` and `advantages` (from `reward` and `group_id`) is an optional `Sample` field of
    the same name, which every sample must then carry (`check_inputs`).
    """

    fn: Callable[..., torch.Tensor]
    needs: tuple[str, ...] = ("labels",)
