"""Helpers for the on-policy loss tests: random micro-batch tensors, the plain full-softmax
log-probabilities the chunked losses are checked against, and real samples carrying on-policy fields."""

from __future__ import annotations

import dataclasses
import random

import torch
from support.trainer_helpers import make_samples

from trainer.losses import IGNORE


def tensors(b=2, n=23, h=16, v=97, ignore_frac=0.3, seed=0):
    """hidden [b, n, h] and weight [v, h] (leaves needing grad), labels [b, n], and per-token
    teacher/sampling logprobs and advantages aligned with them (NaN where not trained)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).requires_grad_()
    labels = torch.randint(0, v, (b, n), generator=g)
    labels[torch.rand(b, n, generator=g) < ignore_frac] = IGNORE
    trained = labels != IGNORE

    def per_token(lo, hi):
        x = lo + (hi - lo) * torch.rand(b, n, generator=g)
        return torch.where(trained, x, torch.full_like(x, float("nan")))

    return (
        hidden,
        weight,
        labels,
        {
            "teacher_logprobs": per_token(-8.0, -0.1),
            "sampling_logprobs": per_token(-8.0, -0.1),
            "advantages": per_token(-1.0, 1.0),
        },
    )


def naive_logp(hidden, weight, labels):
    """log pS(label) at the trained positions (flattened order), from the full fp32 log-softmax, and their mask."""
    logits = hidden.reshape(-1, hidden.shape[-1]).float() @ weight.float().t()
    flat = labels.reshape(-1)
    keep = flat != IGNORE
    return logits.log_softmax(-1)[keep].gather(1, flat[keep][:, None]).squeeze(1), keep


def value_and_grads(fn, hidden, weight, **kw):
    """(loss, d loss/d hidden, d loss/d weight) of fn(hidden=, weight=, **kw)."""
    hidden.grad = weight.grad = None
    loss = fn(hidden=hidden, weight=weight, **kw)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


def on_policy_samples(tokenizer, n: int, groups: int = 2, seed: int = 0):
    """Real chat samples with teacher/sampling logprobs at every completion token, a reward, and
    `groups` group ids assigned round-robin (so a group spans micro-batches)."""
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(make_samples(tokenizer, n, seed=seed)):
        k = len(s.completion_ids)
        out.append(
            dataclasses.replace(
                s,
                teacher_logprobs=[-rng.uniform(0.05, 6.0) for _ in range(k)],
                sampling_logprobs=[-rng.uniform(0.05, 6.0) for _ in range(k)],
                reward=float(rng.choice([0.0, 1.0, 0.5])),
                group_id=f"g{i % groups}",
            )
        )
    return out
