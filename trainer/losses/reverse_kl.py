"""`trainer.loss.type = "reverse_kl"`: on-policy reverse KL as a per-token policy gradient (Tinker, ArcticTraining).

On the student's own samples y, scored by the teacher (`teacher_logprobs` = log pT(y_t)):

    A_t  = sg(log pT(y_t) - log pS(y_t))          sg = stop-gradient
    loss = -sum_t m_t A_t log pS(y_t) / N          N = global count of trained tokens (`normalizer`)

Its gradient, sum_t m_t (log pS - log pT)(y_t) grad log pS(y_t) / N, is the sampled estimate of
the gradient of KL(pS || pT) on the student's own samples (the score-function term's
expectation is zero); it vanishes where the teacher agrees with the student.
"""

from __future__ import annotations

import torch

from trainer.losses.logprob import at, chunked_label_logprobs, nothing_trained, trained_positions


def reverse_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    normalizer: float | torch.Tensor,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The reverse-KL policy-gradient loss of a micro-batch, divided by `normalizer`.

    labels: [...] shifted targets, IGNORE where not trained; teacher_logprobs: [...] aligned with them.
    """
    keep = trained_positions(labels)
    if keep.numel() == 0:
        return nothing_trained(hidden, weight)
    logp = chunked_label_logprobs(hidden, weight, labels, keep, chunk_size)
    advantage = (at(teacher_logprobs, keep) - logp).detach()
    return -(advantage * logp).sum() / normalizer
