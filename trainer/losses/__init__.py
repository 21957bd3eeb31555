"""The loss registry: `trainer.loss.type` -> the pure loss function and the inputs it needs.

Add a loss (docs/training.md, "Add a loss"): one module here with the pure function, a naive
reference test of its values and gradients (tests/trainer/test_losses.py), one line in LOSSES,
and its config model in the loss union of distill/core/config/schema_run.py (`LOSS_CONFIGS` and `Loss`).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.losses import iw_opd, kd_rl, reverse_kl, sft
from trainer.losses.base import IGNORE, LossSpec

LOSSES: dict[str, LossSpec] = {
    "sft": LossSpec(sft.chunked_nll, needs=("labels",)),
    "reverse_kl": LossSpec(reverse_kl.reverse_kl, needs=("labels", "teacher_logprobs")),
    "iw_opd": LossSpec(iw_opd.iw_opd, needs=("labels", "teacher_logprobs", "sampling_logprobs", "position_ids")),
    "kd_rl": LossSpec(kd_rl.kd_rl, needs=("labels", "teacher_logprobs", "sampling_logprobs", "advantages")),
}

__all__ = ["IGNORE", "LOSSES", "LossSpec", "check_inputs", "compute_loss", "get_loss"]


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
    """Refuse, naming the first sample, samples lacking a per-token field the loss `name` needs."""
    for field in (f for need in get_loss(name).needs for f in _SAMPLE_FIELDS.get(need, (need,))):
        for s in samples:
            if getattr(s, field, None) is None:
                raise ValueError(
                    f"sample {s.sample_id} has no {field}, which trainer.loss.type = {name!r} needs. "
                    f"Fix: produce samples with {field}, or train another loss"
                )
