"""Mixing teacher samples into an on-policy step (`on_policy.teacher_fraction`; docs/on_policy.md,
"Mixing teacher samples").

A mixed step trains on two kinds of rows: T, the teacher's samples (its own completions), and S, the
student's own samples graded by the teacher. Each kind has its loss: on T the teacher loss (masked
NLL, `sft`; or `topk_kl` when `trainer.loss.type = "topk_kl"`), on S `trainer.loss.type`. With
l_T(t) and l_S(t) the per-token loss terms and m_t the trained-token mask,

    loss = ( sum_{t in T} m_t l_T(t) + sum_{t in S} m_t l_S(t) ) / N,     N = sum_{t in T u S} m_t

N is the global count of trained tokens of the whole step (both kinds, all micro-batches, all ranks),
so the step's loss is a mean per trained token, and a token weighs the same whichever kind it is:
a teacher row of 300 tokens counts 300 times a one-token student row. The two terms
(`loss_teacher`, `loss_student`, each already divided by N) add up to `loss`.

`mixed_loss` is the formula as a pure function of one batch of each kind (tested against a naive
full-softmax reference, values and gradients); `mixed_train_step` computes the same sum over
micro-batches: each kind's micro-batches with its own loss and the shared normaliser N, the
gradients accumulated, then one optimizer step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from distill.core import contract
from distill.core.config import SFTLoss, Trainer
from trainer import dist
from trainer.losses import compute_loss, get_loss
from trainer.losses.base import IGNORE
from trainer.step import _rank_batches, backward_passes, optimizer_step


def teacher_loss_config(student_loss: Any) -> Any:
    """The loss of the teacher rows: `topk_kl` (the same options) when the student's is `topk_kl`,
    else masked NLL (`sft`, with the student loss's chunk size)."""
    if student_loss.type == "topk_kl":
        return student_loss
    return SFTLoss(chunk_size=getattr(student_loss, "chunk_size", 1024))


def mixed_loss(
    teacher_cfg: Any,
    student_cfg: Any,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_inputs: dict[str, torch.Tensor],
    student_hidden: torch.Tensor,
    student_inputs: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, teacher term, student term) of the module docstring's formula, for one batch of each
    kind: hidden [..., H] final hidden states, inputs the loss's per-token tensors by name (`labels`
    shifted, IGNORE where not trained), weight [V, H] the lm_head weight shared by both."""
    n = int((teacher_inputs["labels"] != IGNORE).sum()) + int((student_inputs["labels"] != IGNORE).sum())
    normalizer = float(max(n, 1))
    lt = compute_loss(teacher_cfg, teacher_hidden, weight, teacher_inputs, normalizer)
    ls = compute_loss(student_cfg, student_hidden, weight, student_inputs, normalizer)
    return lt + ls, lt, ls


@contextlib.contextmanager
def _with_loss(model, loss_cfg):
    """The LossModel computing `loss_cfg` for the duration (its loss head swapped, then restored)."""
    old = model.loss_cfg, model.loss_spec
    model.loss_cfg, model.loss_spec = loss_cfg, get_loss(loss_cfg.type)
    try:
        yield model
    finally:
        model.loss_cfg, model.loss_spec = old


def mixed_train_step(
    model,
    optimizer,
    scheduler,
    teacher: list[contract.Sample],
    student: list[contract.Sample],
    t: Trainer,
    ctx: dist.DistContext,
    pad_id: int,
) -> dict:
    """One optimizer step on the teacher rows (teacher loss) and the student rows (t.loss), with the
    shared normaliser N (module docstring). Metrics: the train_step ones plus per kind its rows,
    trained tokens and loss term."""
    t_teacher = t.model_copy(update={"loss": teacher_loss_config(t.loss)})
    mbs_t, (trained_t, tokens_t, slots_t) = _rank_batches(teacher, t_teacher, ctx, pad_id)
    mbs_s, (trained_s, tokens_s, slots_s) = _rank_batches(student, t, ctx, pad_id)
    normalizer = max(trained_t + trained_s, 1.0)
    with _with_loss(model, t_teacher.loss):
        sum_t = backward_passes(model, mbs_t, normalizer, t, ctx, sync_last=False)
    sum_s = backward_passes(model, mbs_s, normalizer, t, ctx, sync_last=True)
    loss_t, loss_s = dist.all_reduce([sum_t, sum_s], ctx)
    m = {
        "loss": loss_t + loss_s,
        "loss_type": t.loss.type,
        "trained_tokens": int(trained_t + trained_s),
        "tokens": int(tokens_t + tokens_s),
        "packing_efficiency": (tokens_t + tokens_s) / max(slots_t + slots_s, 1.0),
        "samples": len(teacher) + len(student),
        "teacher_rows": len(teacher),
        "student_rows": len(student),
        "teacher_trained_tokens": int(trained_t),
        "student_trained_tokens": int(trained_s),
        "teacher_loss_type": t_teacher.loss.type,
        "loss_teacher": loss_t,
        "loss_student": loss_s,
    }
    return optimizer_step(model, optimizer, scheduler, t, m)
