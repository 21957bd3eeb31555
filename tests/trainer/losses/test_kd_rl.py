"""kd_rl: values and gradients equal the full-softmax reference at every chunk size and option; its
gradient depends on the teacher, by exactly the analytic amount (the anchor's KD form does not)."""

from __future__ import annotations

import pytest
import torch
from support.on_policy_helpers import naive_logp, tensors, value_and_grads

from trainer.losses import IGNORE
from trainer.losses.kd_rl import kd_rl


def naive_kd_rl(
    hidden,
    weight,
    labels,
    teacher_logprobs,
    sampling_logprobs,
    advantages,
    normalizer,
    w_rl,
    w_kd,
    kd,
    importance_ratio,
):
    logp, keep = naive_logp(hidden, weight, labels)
    t, mu, adv = (x.reshape(-1)[keep] for x in (teacher_logprobs, sampling_logprobs, advantages))
    surrogate = torch.exp(logp - mu) if importance_ratio else logp
    rl = -(adv * surrogate).sum()
    distill = -((t - logp).detach() * logp).sum() if kd == "reverse_kl" else -((t - mu) * surrogate).sum()
    return (w_rl * rl + w_kd * distill) / normalizer


@pytest.mark.parametrize("chunk_size", [1, 6, 1000])
@pytest.mark.parametrize("kd", ["reverse_kl", "sampled_reverse_kl"])
@pytest.mark.parametrize("importance_ratio", [True, False])
def test_kd_rl_equals_the_naive_reference_in_value_and_gradients(chunk_size, kd, importance_ratio):
    hidden, weight, labels, f = tensors(b=2, n=17)
    kw = dict(f, labels=labels, normalizer=40.0, w_rl=0.7, w_kd=1.3, kd=kd, importance_ratio=importance_ratio)
    ref = value_and_grads(naive_kd_rl, hidden, weight, **kw)
    got = value_and_grads(kd_rl, hidden, weight, chunk_size=chunk_size, **kw)
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)


def _analytic_grad_hidden(hidden, weight, labels, f, normalizer, w_rl, w_kd):
    """d loss / d hidden by hand (kd = "reverse_kl", importance ratio on), in float64:
    c_t = -(w_rl Adv_t r_t + w_kd (log pT - log pS)(y_t)) / N, times d log pS(y_t)/d h_t = W[y_t] - sum_v p_v W[v]."""
    h, w = hidden.detach().double().reshape(-1, hidden.shape[-1]), weight.detach().double()
    flat = labels.reshape(-1)
    logits = h @ w.t()
    p = torch.exp(logits - logits.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)
    out = torch.zeros_like(h)
    for i in (flat != IGNORE).nonzero().squeeze(1).tolist():
        y = int(flat[i])
        logp = torch.log(p[i, y])
        ratio = torch.exp(logp - float(f["sampling_logprobs"].reshape(-1)[i]))
        c = -(
            w_rl * float(f["advantages"].reshape(-1)[i]) * ratio
            + w_kd * (float(f["teacher_logprobs"].reshape(-1)[i]) - logp)
        )
        out[i] = c / normalizer * (w[y] - p[i] @ w)
    return out.reshape(hidden.shape)


FP32 = {"rtol": 1e-5, "atol": 1e-6}  # fp32 loss against the float64 hand computation


def test_the_gradient_depends_on_the_teacher_and_equals_the_analytic_value():
    hidden, weight, labels, f = tensors(b=2, n=15)
    kw = {"labels": labels, "normalizer": 25.0, "w_rl": 0.5, "w_kd": 2.0, "chunk_size": 4}
    _, gh, _ = value_and_grads(kd_rl, hidden, weight, **f, **kw)
    torch.testing.assert_close(gh.double(), _analytic_grad_hidden(hidden, weight, labels, f, 25.0, 0.5, 2.0), **FP32)
    # another teacher: the gradient moves, by -w_kd * delta / N * d log pS/d h at each token
    moved = dict(f, teacher_logprobs=f["teacher_logprobs"] - 1.5)
    _, gh2, _ = value_and_grads(kd_rl, hidden, weight, **moved, **kw)
    torch.testing.assert_close(
        gh2.double(), _analytic_grad_hidden(hidden, weight, labels, moved, 25.0, 0.5, 2.0), **FP32
    )
    assert (gh2 - gh).abs().max() > 1e-3
    # the anchor's KD term, sum (log pS - log pT) back-propagated as is, has the same gradient for both teachers
    logp = lambda h, w: naive_logp(h, w, labels)[0]  # noqa: E731
    keep = labels.reshape(-1) != IGNORE

    def anchor(hidden, weight, teacher_logprobs):
        return (logp(hidden, weight) - teacher_logprobs.reshape(-1)[keep]).sum()

    _, a1, _ = value_and_grads(anchor, hidden, weight, teacher_logprobs=f["teacher_logprobs"])
    _, a2, _ = value_and_grads(anchor, hidden, weight, teacher_logprobs=moved["teacher_logprobs"])
    assert torch.equal(a1, a2)


def test_w_kd_zero_leaves_the_group_policy_gradient_only():
    hidden, weight, labels, f = tensors()
    kw = {"labels": labels, "normalizer": 9.0, "w_kd": 0.0, "importance_ratio": False}
    _, g1, _ = value_and_grads(kd_rl, hidden, weight, **f, **kw)
    _, g2, _ = value_and_grads(kd_rl, hidden, weight, **dict(f, teacher_logprobs=f["teacher_logprobs"] * 2), **kw)
    torch.testing.assert_close(g1, g2)
    zero_adv = dict(f, advantages=torch.where(labels != IGNORE, 0.0, float("nan")))
    loss, g3, _ = value_and_grads(kd_rl, hidden, weight, **zero_adv, **kw)
    assert loss == 0 and torch.all(g3 == 0)  # a group whose samples all scored the same teaches nothing


def test_an_unknown_kd_form_is_refused():
    hidden, weight, labels, f = tensors()
    with pytest.raises(ValueError, match='kd must be "reverse_kl" or "sampled_reverse_kl"'):
        kd_rl(hidden, weight, labels, normalizer=1.0, kd="forward", **f)
