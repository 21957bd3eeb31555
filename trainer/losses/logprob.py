"""The student's log-probability of each trained label, chunked: what the on-policy losses share.

The on-policy losses (reverse_kl, iw_opd, kd_rl) are all of the form

    loss = sum over trained positions t of f_t(log pS(y_t)) / N

with per-token coefficients built from the teacher's and the sampler's logprobs. So they need
log pS(y_t) as a differentiable vector over the trained positions, never the fp32
[tokens x vocab] logits of all positions at once. `chunked_label_logprobs` gives that vector:
its forward computes the logits `chunk_size` positions at a time and keeps only the label's
logprob; its backward recomputes each chunk's logits and applies d log p(y)/d logits =
onehot(y) - softmax, scaled by the incoming gradient of each position. That costs one more
[chunk x vocab] matmul per chunk than sft.py's forward-computed gradients, in exchange for any
loss of the vector being plain torch (and the gradient coefficients depending on log pS itself,
as reverse_kl's do).
"""

from __future__ import annotations

import torch

from trainer.losses.base import IGNORE


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Indices, into the flattened labels, of the trained positions (in order)."""
    return (labels.reshape(-1) != IGNORE).nonzero(as_tuple=True)[0]


def nothing_trained(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A zero that still depends on every input, so a backward pass reaches every parameter (FSDP needs that)."""
    return (hidden.sum() + weight.sum()) * 0.0


def at(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A per-token input ([..] aligned with the labels) at the trained positions, as float32."""
    return values.reshape(-1).index_select(0, keep).float()


class _LabelLogprobs(torch.autograd.Function):
    """log softmax(h @ W.T)[y] for each row of `h`, chunk by chunk; backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size: int):
        with torch.autocast(device_type=h.device.type, enabled=False):  # logits stay fp32
            w32 = weight.float()
            out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], chunk_size):
                end = start + chunk_size
                logits = h[start:end].float() @ w32.t()  # [c, V] fp32, this chunk only
                out[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - torch.logsumexp(logits, -1)
                del logits
        ctx.save_for_backward(h, weight, targets)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, targets = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type=h.device.type, enabled=False):
            w32 = weight.float()
            grad_h = torch.empty_like(h) if want_h else None
            grad_w = torch.zeros_like(w32) if want_w else None
            g = grad_out.float()
            for start in range(0, h.shape[0], ctx.chunk_size):
                end = start + ctx.chunk_size
                hc, gc, tc = h[start:end].float(), g[start:end], targets[start:end]
                logits = hc @ w32.t()
                # d(g * log p(y))/d logits = g * (onehot(y) - softmax), built in place
                logits.sub_(torch.logsumexp(logits, -1, keepdim=True)).exp_().mul_(-gc[:, None])
                logits[torch.arange(tc.shape[0], device=tc.device), tc] += gc
                if grad_h is not None:
                    grad_h[start:end] = (logits @ w32).to(h.dtype)
                if grad_w is not None:
                    grad_w.addmm_(logits.t(), hc)
                del logits
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None


def chunked_label_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """[len(keep)] float32: log pS(label) at the trained positions `keep` (from `trained_positions`).

    hidden: [..., H] final hidden states; weight: [V, H] lm_head weight; labels: [...] shifted targets.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    return _LabelLogprobs.apply(h, weight, labels.reshape(-1).index_select(0, keep), chunk_size)
