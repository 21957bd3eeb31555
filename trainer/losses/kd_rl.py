"""`trainer.loss.type = "kd_rl"`: group-relative policy gradient plus on-policy distillation (AReaL #964, KDRL).

On the student's samples, n per prompt (`group_id`), each with a `reward`; `advantages` is the
sample's reward minus its group's mean reward (trainer/data.py `group_advantages`, taken over the
whole step), the same at each of its trained tokens; mu_t = `sampling_logprobs`:

    r_t  = exp(log pS(y_t) - mu_t)      (importance_ratio = true; 1 in value when exactly on-policy)
    RL   = -sum_t m_t Adv r_t                    (importance_ratio = false: -sum_t m_t Adv log pS(y_t))
    KD   = -sum_t m_t sg(log pT(y_t) - log pS(y_t)) log pS(y_t)             (kd = "reverse_kl")
         = -sum_t m_t sg(log pT(y_t) - mu_t) r_t                              (kd = "sampled_reverse_kl")
    loss = (w_rl RL + w_kd KD) / N

Both KD forms have a gradient that depends on the teacher: d loss / d log pS(y_t) contains
-w_kd (log pT(y_t) - log pS(y_t)) / N (or its mu_t form). The anchor's KD term is the sampled
reverse-KL estimate log pS(y_t) - log pT(y_t) back-propagated as is: log pT is a constant there,
so its gradient is sum_t grad log pS(y_t) whatever the teacher says (docs/training.md, "kd_rl").
"""

from __future__ import annotations

import torch

from trainer.losses.logprob import at, chunked_label_logprobs, nothing_trained, trained_positions


def kd_rl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    normalizer: float | torch.Tensor,
    w_rl: float = 1.0,
    w_kd: float = 1.0,
    kd: str = "reverse_kl",
    importance_ratio: bool = True,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The KD+RL loss of a micro-batch, divided by `normalizer`; every per-token input aligned with `labels`."""
    if kd not in ("reverse_kl", "sampled_reverse_kl"):
        raise ValueError(f'kd must be "reverse_kl" or "sampled_reverse_kl", got {kd!r}')
    keep = trained_positions(labels)
    if keep.numel() == 0:
        return nothing_trained(hidden, weight)
    logp = chunked_label_logprobs(hidden, weight, labels, keep, chunk_size)
    mu, teacher = at(sampling_logprobs, keep), at(teacher_logprobs, keep)
    # The surrogate whose gradient is r_t grad log pS (or grad log pS without the ratio).
    surrogate = torch.exp(logp - mu) if importance_ratio else logp
    rl = -(at(advantages, keep) * surrogate).sum()
    if kd == "reverse_kl":
        distill = -((teacher - logp).detach() * logp).sum()
    else:
        distill = -((teacher - mu) * surrogate).sum()
    return (w_rl * rl + w_kd * distill) / normalizer
