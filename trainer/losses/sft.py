"""SFT loss (`trainer.loss.type = "sft"`): masked next-token NLL at temperature 1, as pure functions.

Labels are already shifted (see `trainer.data`): `labels[t]` is the token the model
should emit after position `t`, or `IGNORE` where nothing is trained. The loss of an
optimizer step is

    sum over every trained position of every micro-batch on every rank of -log p(label)
    ---------------------------------------------------------------------------------
                     global count of trained positions of that step

so each micro-batch returns its *sum* divided by that global count (`normalizer`),
and the micro-batch losses add up to the step's mean.

`chunked_nll` never builds the fp32 [tokens x vocab] logits: it keeps only the
trained positions, and for `chunk_size` of them at a time computes the logits,
the loss and the gradients with respect to the hidden states and the lm_head
weight, then drops the logits. `naive_nll` is the full-logits reference it is
tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses.base import IGNORE


def naive_nll(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, normalizer: float | torch.Tensor
) -> torch.Tensor:
    """Reference: full fp32 logits over every position, then masked cross-entropy."""
    logits = hidden.reshape(-1, hidden.shape[-1]).float() @ weight.float().t()
    nll = F.cross_entropy(logits, labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return nll / normalizer


class _ChunkedNLL(torch.autograd.Function):
    """Sum of NLL over rows of `h` (trained positions only), chunk by chunk.

    The gradients are computed in the forward pass, one chunk at a time, so no
    chunk's logits outlive its iteration; backward only scales them.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size: int):
        with torch.autocast(device_type=h.device.type, enabled=False):  # logits stay fp32
            return _ChunkedNLL._forward(ctx, h, weight, targets, chunk_size)

    @staticmethod
    def _forward(ctx, h, weight, targets, chunk_size: int):
        need_grad = h.requires_grad or weight.requires_grad
        w32 = weight.float()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if h.requires_grad else None
        grad_w = torch.zeros_like(w32) if weight.requires_grad else None
        for start in range(0, h.shape[0], chunk_size):
            hc = h[start : start + chunk_size].float()
            tc = targets[start : start + chunk_size]
            logits = hc @ w32.t()  # [c, V] fp32, this chunk only
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if need_grad:
                # d/dlogits of sum(lse - logit[target]) = softmax - onehot
                logits.sub_(lse[:, None]).exp_()
                logits[torch.arange(tc.shape[0], device=tc.device), tc] -= 1.0
                if grad_h is not None:
                    grad_h[start : start + chunk_size] = (logits @ w32).to(h.dtype)
                if grad_w is not None:
                    grad_w.addmm_(logits.t(), hc)
            del logits
        ctx.save_for_backward(
            grad_h if grad_h is not None else torch.empty(0), grad_w if grad_w is not None else torch.empty(0)
        )
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.w_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_out.to(grad_h.dtype)) if ctx.has[0] else None
        gw = (grad_w * grad_out).to(ctx.w_dtype) if ctx.has[1] else None
        return gh, gw, None, None


# fp32 logits per chunk. Measured on CPU (bench/bench_trainer.py, docs/training.md), SmolLM2-135M's
# loss head (hidden 576, vocab 49152, 2048 trained positions), every variant interleaved in one process:
# 256 to 2048 rows per chunk within 5% of each other and of the full logits (the three GEMMs dominate),
# while the memory grows with the chunk (+331 MiB at 512 rows vs +1173 MiB for the full logits). So the
# chunk is sized for memory: about 96 MiB of logits, large enough to keep the GEMMs efficient (>= 128 rows).
LOGITS_BYTES_PER_CHUNK = 96 * 2**20


def auto_chunk_size(vocab: int) -> int:
    """Rows per chunk when `trainer.loss.chunk_size` is unset: the largest power of two whose fp32
    logits fit in LOGITS_BYTES_PER_CHUNK, within [128, 4096] (512 at vocab 49152, 128 at 151936)."""
    rows = max(1, LOGITS_BYTES_PER_CHUNK // (4 * vocab))
    return min(4096, max(128, 1 << (rows.bit_length() - 1)))


def chunked_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    normalizer: float | torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Masked NLL summed over trained positions, divided by `normalizer`; `chunk_size` trained
    positions at a time (None: `auto_chunk_size` of the vocabulary).

    hidden: [..., H] final hidden states (after the last norm); weight: [V, H] lm_head
    weight; labels: [...] shifted targets with IGNORE where nothing is trained.
    With no trained position it returns a zero that still depends on every input,
    so a backward pass through it reaches every parameter (FSDP needs that).
    """
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h = hidden.reshape(-1, hidden.shape[-1])
    flat = labels.reshape(-1)
    keep = (flat != IGNORE).nonzero(as_tuple=True)[0]
    if keep.numel() == 0:
        return (hidden.sum() + weight.sum()) * 0.0
    total = _ChunkedNLL.apply(h.index_select(0, keep), weight, flat.index_select(0, keep), chunk_size)
    return total / normalizer
