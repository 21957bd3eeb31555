"""Top-k forward KL (`trainer.loss.type = "topk_kl"`): the student learns the teacher's top-k
distribution plus one tail bucket holding the rest of the teacher's mass, as pure functions.

At a trained position (labels != IGNORE; the inputs are packed by `trainer.data`) the teacher
gives k token ids with their log-probabilities t_i. The teacher distribution over k + 1 buckets is

    p_i = exp(t_i)                          for each id i of the top-k
    p_tail = max(0, 1 - sum_i p_i)          the mass of every other token, as one bucket

and the student's over the same buckets, from its logits z (q = softmax(z)):

    q_i = exp(z_i - logsumexp(z))           q_tail = sum of q_j over the ids j not in the top-k

The loss of the position is the forward KL(p || q) over these buckets,

    sum_i p_i (t_i - log q_i) + p_tail (log p_tail - log q_tail)

and, as for SFT, the micro-batch returns its sum over trained positions divided by `normalizer`
(the step's global count of trained positions): the step's loss is the mean KL per trained token.

Details, each tested against `naive_topk_kl` (the obvious full-softmax reference):
- `log q_tail` is the logsumexp of the logits with the top-k ids masked out, minus logsumexp(z):
  exact however small the tail is (no `log(1 - sum q_i)` cancellation).
- Entries with logprob -inf are padding (`trainer.data` pads rows to the widest k with id 0 and
  logprob -inf) and count for nothing. An id repeated within a row counts once: its first entry
  (the scorer sorts by logprob, so the largest); later ones are ignored like padding.
- A teacher tail of 0 (its top-k sums to 1 or, by rounding, more) contributes 0. When the top-k
  ids cover the student's whole vocabulary there is no tail token: the bucket is dropped (the
  loss is then the full forward KL).
- An id >= the student's vocabulary size (V = lm_head rows) is refused with `LossInputError`
  naming it: the samples were scored with another tokenizer.

`topk_kl` never builds the fp32 [tokens x vocab] logits: like `sft.chunked_nll` it keeps only
the trained positions and, `chunk_size` of them at a time, computes the logits, the loss and
its gradients w.r.t. the hidden states and the lm_head weight in the forward pass, then frees
the chunk's logits; backward only scales the stored gradients.
"""

from __future__ import annotations

import torch

from trainer.losses.base import IGNORE, LossInputError


def _entries(ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """[N, K] bool: the top-k entries that count: not padding (finite logprob) and the first
    entry of their id in the row (found by a stable sort, so O(N K) memory for any k)."""
    valid = torch.isfinite(logprobs)
    k = ids.shape[-1]
    # padding gets keys of its own (negative, distinct), so it never hides a real entry
    keys = torch.where(valid, ids, -1 - torch.arange(k, device=ids.device))
    sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
    repeat = torch.zeros_like(valid)
    repeat[:, 1:] = sorted_keys[:, 1:] == sorted_keys[:, :-1]  # equal to the one before: a later entry
    return valid & ~torch.zeros_like(valid).scatter(1, order, repeat)


def _chunk(z: torch.Tensor, ids: torch.Tensor, lps: torch.Tensor, need_grad: bool):
    """Loss sum of one chunk and, when `need_grad`, its gradient w.r.t. the logits `z` [c, V]
    (written into `z`, which is consumed either way)."""
    keep = _entries(ids, lps)
    t = torch.where(keep, lps, float("-inf"))
    p = t.exp()  # [c, K], 0 where the entry does not count
    p_tail = (-torch.expm1(torch.logsumexp(t, dim=-1))).clamp_(min=0.0)  # 1 - sum p, >= 0
    lse = torch.logsumexp(z, dim=-1)
    log_q = z.gather(1, ids) - lse[:, None]  # [c, K]
    # the tail: every logit but the top-k's (min with +inf leaves the ids of entries that do not count)
    z.scatter_reduce_(1, ids, torch.where(keep, float("-inf"), float("inf")), reduce="amin")
    tail_lse = torch.logsumexp(z, dim=-1)
    has_tail = torch.isfinite(tail_lse)  # False when the top-k cover the vocabulary
    p_tail = torch.where(has_tail, p_tail, 0.0)
    log_q_tail = torch.where(has_tail, tail_lse - lse, 0.0)
    head = (p * (torch.where(keep, lps, 0.0) - log_q)).sum(-1)
    loss = head.sum() + (torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail).sum()
    if not need_grad:
        return loss, None
    # d loss / d z_j = P q_j - p_j on the top-k ids and P q_j - p_tail q_j / q_tail on the tail
    # (P = sum p + p_tail); on the tail written as exp(z_j - tail_lse) (P q_tail - p_tail), which
    # stays finite however small q_tail is.
    total_p = p.sum(-1) + p_tail
    coef = total_p * log_q_tail.exp() - p_tail
    z.sub_(torch.where(has_tail, tail_lse, 0.0)[:, None]).exp_().mul_(coef[:, None])  # top-k ids: exp(-inf) = 0
    z.scatter_add_(1, ids, torch.where(keep, total_p[:, None] * log_q.exp() - p, 0.0))  # each counted id once
    return loss, z


class _ChunkedTopKKL(torch.autograd.Function):
    """Sum of the top-k KL over rows of `h` (trained positions only), chunk by chunk; the
    gradients are computed in the forward pass (see sft._ChunkedNLL), backward scales them."""

    @staticmethod
    def forward(ctx, h, weight, ids, lps, chunk_size: int):
        with torch.autocast(device_type=h.device.type, enabled=False):  # logits stay fp32
            return _ChunkedTopKKL._forward(ctx, h, weight, ids, lps, chunk_size)

    @staticmethod
    def _forward(ctx, h, weight, ids, lps, chunk_size: int):
        need_grad = h.requires_grad or weight.requires_grad
        w32 = weight.float()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if h.requires_grad else None
        grad_w = torch.zeros_like(w32) if weight.requires_grad else None
        for start in range(0, h.shape[0], chunk_size):
            hc = h[start : start + chunk_size].float()
            sl = slice(start, start + chunk_size)
            loss, g = _chunk(hc @ w32.t(), ids[sl], lps[sl].float(), need_grad)  # [c, V] fp32, this chunk only
            total += loss
            if g is not None:
                if grad_h is not None:
                    grad_h[sl] = (g @ w32).to(h.dtype)
                if grad_w is not None:
                    grad_w.addmm_(g.t(), hc)
            del g
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
        return gh, gw, None, None, None


def check_vocab(ids: torch.Tensor, logprobs: torch.Tensor, vocab: int) -> None:
    """Refuse a top-k id the student's vocabulary does not have (padding aside)."""
    bad = (ids >= vocab) & torch.isfinite(logprobs)
    if bool(bad.any()):
        worst = int(ids[bad].max())
        raise LossInputError(
            f"teacher_topk_ids holds token id {worst}, but the student's vocabulary has {vocab} tokens "
            f"(ids 0..{vocab - 1}): the samples were scored for another student, or by a scorer that answered "
            "ids its tokenizer does not have. Fix: train the student they were scored for, or score them again "
            "with a teacher that shares this student's tokenizer: delete the scored folder and rerun distill "
            "score (it refuses such ids, and answers recorded in OUTPUT_DIR/scores.jsonl that hold them are "
            "asked for again, not reused)"
        )


def topk_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    normalizer: float | torch.Tensor,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Top-k + tail forward KL summed over trained positions, divided by `normalizer` (module doc).

    hidden: [..., H] final hidden states; weight: [V, H] lm_head weight; labels: [...] shifted,
    IGNORE where nothing is trained; teacher_topk_ids / teacher_topk_logprobs: [..., K] aligned
    with labels (padding: id 0, logprob -inf). With no trained position it returns a zero that
    still depends on every input (FSDP needs a backward reaching every parameter).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h = hidden.reshape(-1, hidden.shape[-1])
    keep = (labels.reshape(-1) != IGNORE).nonzero(as_tuple=True)[0]
    if keep.numel() == 0:
        return (hidden.sum() + weight.sum()) * 0.0
    k = teacher_topk_ids.shape[-1]
    ids = teacher_topk_ids.reshape(-1, k).index_select(0, keep)
    lps = teacher_topk_logprobs.reshape(-1, k).index_select(0, keep)
    check_vocab(ids, lps, weight.shape[0])
    ids = torch.where(torch.isfinite(lps), ids, 0)  # padding may hold any id; gather needs a real one
    total = _ChunkedTopKKL.apply(h.index_select(0, keep), weight, ids, lps, chunk_size)
    return total / normalizer


def naive_topk_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    normalizer: float | torch.Tensor,
) -> torch.Tensor:
    """Reference: full fp64 softmax over every position, the k + 1 buckets built one position at a time."""
    v = weight.shape[0]
    logq = torch.log_softmax(hidden.reshape(-1, hidden.shape[-1]).double() @ weight.double().t(), dim=-1)
    k = teacher_topk_ids.shape[-1]
    ids, lps = teacher_topk_ids.reshape(-1, k).tolist(), teacher_topk_logprobs.reshape(-1, k).double()
    total = logq.new_zeros(())
    for n, label in enumerate(labels.reshape(-1).tolist()):
        if label == IGNORE:
            continue
        seen: dict[int, int] = {}  # id -> its first counted entry
        for j, i in enumerate(ids[n]):
            if torch.isfinite(lps[n, j]) and i not in seen:
                seen[i] = j
        in_topk = torch.zeros(v, dtype=torch.bool)
        for i, j in seen.items():
            p = lps[n, j].exp()
            total = total + p * (lps[n, j] - logq[n, i])
            in_topk[i] = True
        p_tail = 1.0 - sum(float(lps[n, j].exp()) for j in seen.values())
        if p_tail > 0 and not in_topk.all():
            q_tail = logq[n][~in_topk].exp().sum()
            total = total + p_tail * (torch.log(torch.tensor(p_tail, dtype=torch.float64)) - torch.log(q_tail))
    return total / normalizer
