"""One optimizer step and the held-out eval, on this rank's slice of a step's samples.

    train_step(model, optimizer, scheduler, samples, t, ctx, pad_id)   what trainer.train's loop calls
    accumulate_gradients(...)                                          forward/backward only
    evaluate(...)                                                      held-out mean loss per trained token

trainer.train re-exports these names; its loop calls train_step through trainer.train, so a patch there applies.
"""

from __future__ import annotations

import contextlib

import torch

from distill.core.config import Trainer
from distill.core import contract
from trainer import dist
from trainer.data import empty_micro_batch, group_advantages, make_micro_batches
from trainer.losses import check_inputs, get_loss
from trainer.model import is_sharded
from trainer.timing import StepTimes, maybe_section


def _autocast(t: Trainer, model, device: torch.device):
    # Under FSDP, MixedPrecisionPolicy casts the parameters; one process uses autocast.
    if t.dtype == "bfloat16" and not is_sharded(model):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rank_batches(samples: list[contract.Sample], t: Trainer, ctx: dist.DistContext, pad_id: int):
    """This rank's slice of `samples` as micro-batches, padded with empty ones to the busiest
    rank's count (FSDP collectives need every rank to run as many passes), and the global
    (trained tokens, tokens, slots) counts."""
    check_inputs(t.loss.type, samples)
    # Group-relative advantages are taken over the whole step, before the split over ranks and micro-batches.
    advantages = group_advantages(samples) if "advantages" in get_loss(t.loss.type).needs else None
    mine = samples[ctx.rank :: ctx.world]
    mbs = make_micro_batches(mine, t.seq_len, t.micro_batch_rows, t.packing, pad_id, advantages)
    counts = dist.all_reduce(
        [sum(m.num_trained for m in mbs), sum(m.num_tokens for m in mbs), sum(m.slots for m in mbs)], ctx
    )
    (n_passes,) = dist.all_reduce([len(mbs)], ctx, op="max")
    mbs += [empty_micro_batch(pad_id) for _ in range(int(n_passes) - len(mbs))]
    return mbs, counts


def backward_passes(
    model,
    mbs: list,
    normalizer: float,
    t: Trainer,
    ctx: dist.DistContext,
    sync_last: bool = True,
    times: StepTimes | None = None,
) -> float:
    """Forward/backward over micro-batches with the model's current loss, each loss divided by
    `normalizer`; gradients add up in .grad. Under FSDP the gradients are reduce-scattered after the
    last micro-batch only if `sync_last` (a step made of several groups syncs after its last group).
    Returns this rank's loss sum; `times` (if given) gets the seconds of each part (trainer/timing.py)."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    sharded = is_sharded(model)
    for i, mb in enumerate(mbs):
        if sharded:  # reduce-scatter gradients once, after the last micro-batch
            model.set_requires_gradient_sync(sync_last and i == len(mbs) - 1)
        with maybe_section(times, "data"):
            mb = mb.to(ctx.device)
        with _autocast(t, model, ctx.device):
            loss = model.micro_batch_loss(mb, normalizer, times)
        with maybe_section(times, "backward"):
            # FSDP averages gradients over ranks; the loss is already a global mean.
            (loss * ctx.world).backward()
        loss_sum += loss.detach().double()
    return float(loss_sum.item())


def accumulate_gradients(
    model,
    samples: list[contract.Sample],
    t: Trainer,
    ctx: dist.DistContext,
    pad_id: int,
    times: StepTimes | None = None,
) -> dict:
    """Forward/backward over this rank's slice of the step's samples; gradients are left in
    the parameters' .grad. Returns the step's global loss and token counts; `times` (if given)
    gets the seconds of each part (trainer/timing.py)."""
    with maybe_section(times, "data"):
        mbs, (trained, tokens, slots) = _rank_batches(samples, t, ctx, pad_id)
    # The global count of trained tokens, known before any backward: the loss normaliser.
    normalizer = max(trained, 1.0)
    (loss_value,) = dist.all_reduce([backward_passes(model, mbs, normalizer, t, ctx, times=times)], ctx)
    return {
        "loss": loss_value,  # the step's mean loss per trained token, of the loss trainer.loss.type names
        "loss_type": t.loss.type,
        "trained_tokens": int(trained),
        "tokens": int(tokens),
        "packing_efficiency": tokens / max(slots, 1.0),
        "samples": len(samples),
    }


@torch.no_grad()
def evaluate(model, samples: list[contract.Sample], t: Trainer, ctx: dist.DistContext, pad_id: int) -> float:
    """Mean loss (trainer.loss.type's: NLL for sft, KL for topk_kl) per trained token of `samples`
    (held out), over all ranks."""
    mbs, (trained, _, _) = _rank_batches(samples, t, ctx, pad_id)
    total = 0.0
    model.eval()
    try:
        for mb in mbs:
            with _autocast(t, model, ctx.device):
                total += model.micro_batch_loss(mb.to(ctx.device), 1.0).item()
    finally:
        model.train()
    (total,) = dist.all_reduce([total], ctx)
    return total / max(trained, 1.0)


def train_step(
    model, optimizer, scheduler, samples: list[contract.Sample], t: Trainer, ctx: dist.DistContext, pad_id: int
) -> dict:
    """One optimizer step on `samples` (the whole step's samples; this rank takes its slice).
    Its metrics carry the step's time breakdown (`time_<section>_s`, trainer/timing.py; `wait` is
    the caller's, 0 here)."""
    times = StepTimes(ctx.device)
    m = accumulate_gradients(model, samples, t, ctx, pad_id, times)
    with times.section("optimizer"):
        m = optimizer_step(model, optimizer, scheduler, t, m)
    return {**m, **times.metrics()}


def optimizer_step(model, optimizer, scheduler, t: Trainer, m: dict) -> dict:
    """Clip the accumulated gradients, step the optimizer and the schedule, zero the gradients;
    adds lr and grad_norm to the metrics `m` and returns it."""
    max_norm = t.optim.max_grad_norm if t.optim.max_grad_norm is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    m["lr"] = optimizer.param_groups[0]["lr"]
    m["grad_norm"] = float(grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return m
