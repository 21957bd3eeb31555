"""The loss registry: `trainer.loss.type` -> the pure loss function and the inputs it needs.

Add a loss (docs/training.md, "Add a loss"): one module here with the pure function, a naive
reference test of its values and gradients (tests/trainer/test_losses.py), one line in LOSSES,
and its config model in the loss union of distill/core/config/schema_run.py (`LOSS_CONFIGS` and `Loss`).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.losses import iw_opd, kd_rl, reverse_kl, sft, topk_kl
from trainer.losses.base import IGNORE, LossInputError, LossSpec

LOSSES: dict[str, LossSpec] = {
    "sft": LossSpec(sft.chunked_nll, needs=("labels",)),
    "topk_kl": LossSpec(topk_kl.topk_kl, needs=("labels", "teacher_topk_ids", "teacher_topk_logprobs")),
    "reverse_kl": LossSpec(reverse_kl.reverse_kl, needs=("labels", "teacher_logprobs")),
    "iw_opd": LossSpec(iw_opd.iw_opd, needs=("labels", "teacher_logprobs", "sampling_logprobs", "position_ids")),
    "kd_rl": LossSpec(kd_rl.kd_rl, needs=("labels", "teacher_logprobs", "sampling_logprobs", "advantages")),
}

__all__ = ["IGNORE", "LOSSES", "LossInputError", "LossSpec", "check_inputs", "compute_loss", "get_loss"]


def get_loss(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"trainer.loss.type: unknown loss type {name!r}; registered: {', '.join(LOSSES)}. "
            'Fix: set trainer.loss.type = "sft"'
        ) from None


def options(cfg: Any) -> dict[str, Any]:
    """The loss function's keyword options: every field of its config model but `type`."""
    return {k: v for k, v in cfg.model_dump().items() if k != "type"}


def compute_loss(
    cfg: Any,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    normalizer: float | torch.Tensor,
) -> torch.Tensor:
    """The loss of `cfg.type` (a `[trainer.loss]` config model) on one micro-batch's inputs."""
    spec = get_loss(cfg.type)
    return spec.fn(
        hidden=hidden, weight=weight, normalizer=normalizer, **{n: inputs[n] for n in spec.needs}, **options(cfg)
    )


# The Sample fields behind a micro-batch input that is not a Sample field of its own name.
_SAMPLE_FIELDS = {"labels": (), "position_ids": (), "advantages": ("reward", "group_id")}


def check_inputs(name: str, samples: list) -> None:
    """Refuse, naming the first one and counting them, samples lacking a per-token field the loss
    `name` needs, or (top-k) lacking its values at a trained token."""
    for field in (f for need in get_loss(name).needs for f in _SAMPLE_FIELDS.get(need, (need,))):
        lacking = [s for s in samples if getattr(s, field, None) is None]
        if lacking:
            raise LossInputError(
                f"sample {lacking[0].sample_id} has no {field}, which trainer.loss.type = {name!r} needs "
                f"({len(lacking)} of this step's {len(samples)} samples lack it). Fix: " + _fix_for(field)
            )
        if field == "teacher_topk_ids":
            _check_topk_at_trained_tokens(name, samples)


def _fix_for(field: str) -> str:
    if field.startswith("teacher_"):
        return (
            "add the teacher's scores to the samples (distill score CFG, with a [scorer]) and train on the scored "
            "folder (distill train CFG --samples DIR), or train another loss"
        )
    return f"train on the student's own samples, which carry {field} (on-policy mode), or train another loss"


def _first_empty_topk(sample) -> int | None:
    """The first trained completion token of `sample` whose teacher top-k is empty, or None."""
    for j, (trained, row) in enumerate(zip(sample.completion_mask, sample.teacher_topk_ids)):
        if trained and not row:
            return j
    return None


def _check_topk_at_trained_tokens(name: str, samples: list) -> None:
    empty = [(s, j) for s in samples if (j := _first_empty_topk(s)) is not None]
    if empty:
        s, j = empty[0]
        raise LossInputError(
            f"sample {s.sample_id}: teacher_topk_ids[{j}] is empty at a trained token, and trainer.loss.type = "
            f"{name!r} needs the teacher's top-k at every trained token ({len(empty)} of this step's "
            f"{len(samples)} samples have such a token). Fix: score the samples again (distill score CFG, "
            "scorer.top_k >= 1), or train another loss"
        )
