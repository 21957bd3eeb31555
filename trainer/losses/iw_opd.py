"""`trainer.loss.type = "iw_opd"`: importance-weighted on-policy distillation (TRL #6191, "IW-OPD").

On the student's samples, with mu_t = `sampling_logprobs` (the sampling policy's logprob of y_t):

    A_t  = sg(log pT(y_t) - mu_t)
    S_t  = sum of |A_s| over the trained positions s before t in the same sample (exclusive prefix sum)
    Z    = max(sum of |A_s| over the sample's trained positions, epsilon)
    w_t  = sg(1 + gamma (1 - S_t / Z))
    loss = sum_t m_t (-w_t A_t log pS(y_t)) / N

w_t falls from 1 + gamma at a sample's first trained token towards 1 as the accumulated
teacher-student discrepancy grows: early tokens, whose supervision is still on the teacher's
distribution, weigh more. Packed rows hold several samples; the sums restart at each sample
(a sample starts where its position id is 0; see trainer/data.py).
"""

from __future__ import annotations

import torch

from trainer.losses.logprob import at, chunked_label_logprobs, nothing_trained, trained_positions


def position_weights(advantage: torch.Tensor, sample: torch.Tensor, gamma: float, epsilon: float) -> torch.Tensor:
    """w_t for trained positions in order; `sample[i]` is the (non-decreasing) sample index of position i."""
    a = advantage.abs().double()
    n = int(sample.max()) + 1 if sample.numel() else 0
    total = torch.zeros(n, dtype=torch.float64, device=a.device).index_add_(0, sample, a)
    before = torch.cumsum(total, 0) - total  # |A| of the samples before each sample
    prefix = torch.cumsum(a, 0) - a - before[sample]  # exclusive, restarting per sample
    z = total.clamp_min(epsilon)[sample]
    return (1.0 + gamma * (1.0 - prefix / z)).float()


def iw_opd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    position_ids: torch.Tensor,
    normalizer: float | torch.Tensor,
    gamma: float = 1.0,
    epsilon: float = 1e-8,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The IW-OPD loss of a micro-batch, divided by `normalizer`.

    labels, teacher_logprobs, sampling_logprobs, position_ids: [...] aligned (trainer/data.py).
    """
    keep = trained_positions(labels)
    if keep.numel() == 0:
        return nothing_trained(hidden, weight)
    # A sample starts at each position id 0 (rows too: every row starts with one).
    sample = (torch.cumsum((position_ids.reshape(-1) == 0).long(), 0) - 1).index_select(0, keep)
    advantage = at(teacher_logprobs, keep) - at(sampling_logprobs, keep)
    w = position_weights(advantage, sample, gamma, epsilon)
    logp = chunked_label_logprobs(hidden, weight, labels, keep, chunk_size)
    return -(w * advantage * logp).sum() / normalizer
