"""The chunked top-k KL equals the naive full-softmax reference, in values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.losses import IGNORE, LossInputError
from trainer.losses.topk_kl import naive_topk_kl, topk_kl

NEG = float("-inf")


def _student(n=13, h=8, v=29, ignore_frac=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, n, h, generator=g).requires_grad_()
    weight = torch.randn(v, h, generator=g).requires_grad_()
    labels = torch.randint(0, v, (2, n), generator=g)
    labels[torch.rand(2, n, generator=g) < ignore_frac] = IGNORE
    return hidden, weight, labels


def _teacher(shape, v, k, seed=1, scale=2.0):
    """A random teacher's top-k (sorted desc) of a full softmax, as the scorer sends it."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(*shape, v, generator=g) * scale, dim=-1)
    lps, ids = logp.topk(k, dim=-1)
    return ids.clone(), lps.clone()


def _grads(fn, hidden, weight, labels, ids, lps, norm, **kw):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, labels, ids, lps, norm, **kw)
    loss.backward()
    return loss.detach().float(), hidden.grad.clone(), weight.grad.clone()


def _assert_matches_reference(hidden, weight, labels, ids, lps, norm, chunk_size, rtol=1e-5, atol=1e-6):
    ref = _grads(naive_topk_kl, hidden, weight, labels, ids, lps, norm)
    got = _grads(topk_kl, hidden, weight, labels, ids, lps, norm, chunk_size=chunk_size)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
    assert torch.all(got[1][labels == IGNORE] == 0)  # untrained positions get no gradient
    return got


def _messy(ids, lps):
    """Padding (id 0 / another id with logprob -inf) and repeated ids in some rows."""
    ids, lps = ids.clone(), lps.clone()
    ids[0, 1, -1], lps[0, 1, -1] = 0, NEG  # padding as trainer.data writes it
    ids[0, 2, -2:], lps[0, 2, -2:] = 7, NEG  # padding with another id: still nothing
    if ids.shape[-1] > 1:
        ids[1, 3, -1] = ids[1, 3, 0]  # a repeated id: its first entry counts, the second is ignored
        ids[1, 4, 1], lps[1, 4, 1] = ids[1, 4, 0], lps[1, 4, 0]  # repeated with the same logprob
    lps[1, 5, :] = NEG  # a position with no top-k at all: the tail is everything, loss 0
    return ids, lps


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_chunked_equals_naive_with_padding_and_repeated_ids(chunk_size, k):
    hidden, weight, labels = _student()
    ids, lps = _messy(*_teacher(labels.shape, weight.shape[0], k))
    norm = float((labels != IGNORE).sum()) + 3.0  # a global count larger than the local one
    loss, _, _ = _assert_matches_reference(hidden, weight, labels, ids, lps, norm, chunk_size)
    assert loss > 0


def test_repeated_ids_count_once_and_padding_counts_for_nothing():
    hidden, weight, labels = _student(n=5)
    labels[:] = 1
    ids, lps = _teacher(labels.shape, weight.shape[0], 3)
    clean = topk_kl(hidden, weight, labels, ids, lps, 1.0, chunk_size=3)
    # the same top-k with an extra repeat of the first id (another logprob) and extra padding entries
    ids2 = torch.cat([ids, ids[..., :1], torch.full_like(ids[..., :2], 5)], dim=-1)
    lps2 = torch.cat([lps, lps[..., :1] - 1.0, torch.full_like(lps[..., :2], NEG)], dim=-1)
    torch.testing.assert_close(topk_kl(hidden, weight, labels, ids2, lps2, 1.0, chunk_size=3), clean)


@pytest.mark.parametrize("chunk_size", [2, 1000])
def test_k_equal_to_the_vocabulary_is_the_full_forward_kl(chunk_size):
    hidden, weight, labels = _student(v=17)
    v = weight.shape[0]
    ids, lps = _teacher(labels.shape, v, v)  # every id: the tail is empty
    norm = float((labels != IGNORE).sum())
    loss, gh, gw = _assert_matches_reference(hidden, weight, labels, ids, lps, norm, chunk_size)
    # the full forward KL written the obvious way, teacher rebuilt from its top-k
    p = torch.zeros(*labels.shape, v).scatter(-1, ids, lps.exp())
    logq = torch.log_softmax(hidden.detach() @ weight.detach().t(), dim=-1)
    kl = (p * (p.log() - logq)).nan_to_num().sum(-1)
    torch.testing.assert_close(loss, kl[labels != IGNORE].sum() / norm, rtol=1e-5, atol=1e-6)


def test_a_teacher_equal_to_the_student_gives_zero_loss_and_gradient():
    hidden, weight, labels = _student()
    logq = torch.log_softmax(hidden.detach() @ weight.detach().t(), dim=-1)
    lps, ids = logq.topk(6, dim=-1)  # the student's own top-6; its tail is the teacher's tail
    loss, gh, gw = _grads(topk_kl, hidden, weight, labels, ids, lps, 10.0, chunk_size=5)
    assert abs(loss.item()) < 1e-6
    assert gh.abs().max() < 1e-6 and gw.abs().max() < 1e-6


def test_a_teacher_tail_of_zero_contributes_nothing():
    hidden, weight, labels = _student(n=4, v=11)
    labels[:] = 2
    ids = torch.tensor([3, 5, 8]).expand(*labels.shape, 3).clone()
    half = math.log(0.5)
    # the top-k hold all the mass (tail 0); and, as rounding may give, a little more than all of it
    for lp in ([half, half, NEG], [half + 1e-6, half + 1e-6, -30.0]):
        lps = torch.tensor(lp).expand(*labels.shape, 3).clone()
        loss, gh, gw = _assert_matches_reference(hidden, weight, labels, ids, lps, 8.0, 3)
        assert torch.isfinite(gh).all() and torch.isfinite(gw).all()
        # head only: sum p (log p - log q)
        logq = torch.log_softmax(hidden.detach() @ weight.detach().t(), dim=-1).gather(-1, ids)
        head = (lps.exp() * (lps - logq)).nan_to_num().sum()
        torch.testing.assert_close(loss, head / 8.0)


def test_a_student_with_almost_no_tail_mass_stays_finite_and_exact():
    hidden, weight, labels = _student(n=3, h=4, v=9)
    labels[:] = 0
    with torch.no_grad():
        weight[:2] *= 60.0  # ids 0 and 1 take all but ~e-200 of the student's mass
        hidden.copy_(weight[0].expand_as(hidden) / 60.0 + weight[1].expand_as(hidden) / 60.0)
    ids = torch.tensor([0, 1]).expand(*labels.shape, 2).clone()
    lps = torch.tensor([math.log(0.6), math.log(0.3)]).expand(*labels.shape, 2).clone()  # teacher tail 0.1
    loss, gh, gw = _assert_matches_reference(hidden, weight, labels, ids, lps, 6.0, 2, rtol=1e-4, atol=1e-4)
    assert loss > 1.0 and torch.isfinite(gh).all() and torch.isfinite(gw).all()


def test_bf16_hidden_under_autocast_matches_the_fp32_reference():
    hidden, weight, labels = _student(n=20)
    ids, lps = _teacher(labels.shape, weight.shape[0], 4)
    norm = float((labels != IGNORE).sum())
    ref = naive_topk_kl(hidden.detach(), weight.detach(), labels, ids, lps, norm)
    h16 = hidden.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = topk_kl(h16, weight, labels, ids, lps, norm, chunk_size=7)
    loss.backward()
    assert h16.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=2e-2, atol=2e-2)


def test_a_token_id_outside_the_students_vocabulary_is_refused_naming_both():
    hidden, weight, labels = _student(v=29)
    ids, lps = _teacher(labels.shape, 29, 3)
    pos = (labels != IGNORE).nonzero()[0]
    ids[pos[0], pos[1], 1] = 40
    with pytest.raises(LossInputError, match=r"token id 40, but the student's vocabulary has 29 tokens.*Fix:"):
        topk_kl(hidden, weight, labels, ids, lps, 1.0)
    lps[pos[0], pos[1], 1] = NEG  # as padding it counts for nothing, whatever its id
    ids[labels == IGNORE] = 99  # nor do untrained positions
    topk_kl(hidden, weight, labels, ids, lps, 1.0)


def test_no_trained_position_gives_zero_loss_connected_to_inputs():
    hidden, weight, labels = _student()
    labels[:] = IGNORE
    ids, lps = _teacher(labels.shape, weight.shape[0], 3)
    loss = topk_kl(hidden, weight, labels, ids, lps, 1.0, chunk_size=4)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)
    with pytest.raises(ValueError, match="chunk_size"):
        topk_kl(hidden, weight, labels, ids, lps, 1.0, chunk_size=0)


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_no_tensor_spans_more_trained_positions_than_a_chunk_times_the_vocabulary():
    hidden, weight, labels = _student(n=60, h=4, v=97, ignore_frac=0.0)
    ids, lps = _teacher(labels.shape, 97, 5)
    chunk, n, v = 8, labels.numel(), 97
    with _Shapes() as seen:
        topk_kl(hidden, weight, labels, ids, lps, float(n), chunk_size=chunk).backward()
    per_vocab_row = [math.prod(s) // v for s in seen.shapes if s and s[-1] == v]
    assert per_vocab_row and max(per_vocab_row) == chunk  # [chunk, V] logits: none wider
    assert max(math.prod(s) for s in seen.shapes) < n * v // 4  # nothing near [N, V] at all
