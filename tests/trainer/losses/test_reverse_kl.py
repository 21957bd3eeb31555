"""reverse_kl and the chunked label logprobs it shares: values and gradients equal the plain
full-softmax reference at every chunk size; zero gradient where the teacher agrees with the student."""

from __future__ import annotations

import pytest
import torch
from support.on_policy_helpers import naive_logp, tensors, value_and_grads

from trainer.losses import IGNORE
from trainer.losses.logprob import chunked_label_logprobs, trained_positions
from trainer.losses.reverse_kl import reverse_kl


def naive_reverse_kl(hidden, weight, labels, teacher_logprobs, normalizer):
    logp, keep = naive_logp(hidden, weight, labels)
    a = (teacher_logprobs.reshape(-1)[keep] - logp).detach()
    return -(a * logp).sum() / normalizer


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
def test_chunked_label_logprobs_equal_the_full_softmax_with_their_gradients(chunk_size):
    hidden, weight, labels, _ = tensors()
    keep = trained_positions(labels)
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(keep.numel(), generator=g)  # an arbitrary downstream use of the vector
    ref_lp, _ = naive_logp(hidden, weight, labels)
    ref = value_and_grads(
        lambda hidden, weight: (naive_logp(hidden, weight, labels)[0] * upstream).sum(), hidden, weight
    )
    got_lp = chunked_label_logprobs(hidden, weight, labels, keep, chunk_size)
    got = value_and_grads(
        lambda hidden, weight: (chunked_label_logprobs(hidden, weight, labels, keep, chunk_size) * upstream).sum(),
        hidden,
        weight,
    )
    torch.testing.assert_close(got_lp, ref_lp.detach())
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)
    assert torch.all(got[1].reshape(-1, hidden.shape[-1])[labels.reshape(-1) == IGNORE] == 0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
def test_reverse_kl_equals_the_naive_reference_in_value_and_gradients(chunk_size):
    hidden, weight, labels, f = tensors(b=3, n=19)
    norm = float((labels != IGNORE).sum()) + 5.0  # the global count: larger than this micro-batch's
    kw = {"labels": labels, "teacher_logprobs": f["teacher_logprobs"], "normalizer": norm}
    ref = value_and_grads(naive_reverse_kl, hidden, weight, **kw)
    got = value_and_grads(reverse_kl, hidden, weight, chunk_size=chunk_size, **kw)
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)
    assert got[1].abs().sum() > 0 and got[2].abs().sum() > 0


def test_reverse_kl_gradient_is_zero_where_the_teacher_equals_the_student():
    hidden, weight, labels, _ = tensors()
    keep = trained_positions(labels)
    with torch.no_grad():
        student = chunked_label_logprobs(hidden, weight, labels, keep, 8)
    teacher = torch.full(labels.shape, float("nan"))
    teacher.reshape(-1)[keep] = student
    kw = {"labels": labels, "normalizer": 10.0, "chunk_size": 8}
    loss, gh, gw = value_and_grads(reverse_kl, hidden, weight, teacher_logprobs=teacher, **kw)
    assert loss == 0 and torch.all(gh == 0) and torch.all(gw == 0)
    # ...and a teacher that disagrees at one token moves the student at exactly that position
    teacher.reshape(-1)[keep[3]] += 1.0
    _, gh, _ = value_and_grads(reverse_kl, hidden, weight, teacher_logprobs=teacher, **kw)
    moved = gh.reshape(-1, gh.shape[-1]).abs().sum(-1).nonzero().squeeze(1)
    assert moved.tolist() == [int(keep[3])]


def test_nothing_trained_gives_a_zero_that_reaches_every_input():
    hidden, weight, labels, f = tensors()
    labels[:] = IGNORE
    loss, gh, gw = value_and_grads(
        reverse_kl, hidden, weight, labels=labels, teacher_logprobs=f["teacher_logprobs"], normalizer=1.0
    )
    assert loss == 0 and torch.all(gh == 0) and torch.all(gw == 0)


def test_chunk_size_must_be_positive():
    hidden, weight, labels, f = tensors()
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        reverse_kl(hidden, weight, labels, f["teacher_logprobs"], 1.0, chunk_size=0)


def test_bf16_autocast_hidden_matches_the_fp32_reference():
    hidden, weight, labels, f = tensors()
    kw = {"labels": labels, "teacher_logprobs": f["teacher_logprobs"], "normalizer": 30.0}
    ref = value_and_grads(naive_reverse_kl, hidden, weight, **kw)
    h16 = hidden.detach().bfloat16().requires_grad_()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = value_and_grads(reverse_kl, h16, weight, chunk_size=5, **kw)
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[2], ref[2], rtol=5e-2, atol=5e-2)
