"""iw_opd: values and gradients equal a plain per-sample loop over the full softmax, at every chunk
size; the prefix sums restart at each sample of a packed row (and would give another loss if they
did not); packed real micro-batches and the flash path's flattened rows give the same loss."""

from __future__ import annotations

import pytest
import torch
from support.on_policy_helpers import on_policy_samples, tensors, value_and_grads

from trainer.data import make_micro_batches
from trainer.losses import IGNORE
from trainer.losses.iw_opd import iw_opd


def positions(row_lengths: list[list[int]]) -> torch.Tensor:
    """Position ids of rows packed with samples of the given lengths (restarting at 0 per sample)."""
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in row_lengths])


def naive_iw_opd(hidden, weight, labels, teacher_logprobs, sampling_logprobs, position_ids, normalizer, gamma, epsilon):
    """The issue's formula, one sample at a time, token by token."""
    b, n = labels.shape
    logits = hidden.reshape(b, n, -1).float() @ weight.float().t()
    logp = logits.log_softmax(-1)
    total = torch.zeros(())
    for r in range(b):
        starts = [t for t in range(n) if position_ids[r, t] == 0] + [n]
        for s, e in zip(starts, starts[1:]):
            ts = [t for t in range(s, e) if labels[r, t] != IGNORE]
            adv = [float(teacher_logprobs[r, t] - sampling_logprobs[r, t]) for t in ts]
            z = max(sum(abs(a) for a in adv), epsilon)
            before = 0.0
            for t, a in zip(ts, adv):
                w = 1.0 + gamma * (1.0 - before / z)
                total = total - w * a * logp[r, t, labels[r, t]]
                before += abs(a)
    return total / normalizer


ROWS = [[8, 9, 6], [23]]  # row 0 packs three samples, row 1 holds one


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 1000])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_iw_opd_equals_the_naive_reference_in_value_and_gradients(chunk_size, gamma):
    hidden, weight, labels, f = tensors(b=2, n=23)
    norm = float((labels != IGNORE).sum()) + 2.0
    kw = {
        "labels": labels,
        "teacher_logprobs": f["teacher_logprobs"],
        "sampling_logprobs": f["sampling_logprobs"],
        "position_ids": positions(ROWS),
        "normalizer": norm,
        "gamma": gamma,
        "epsilon": 1e-8,
    }
    ref = value_and_grads(naive_iw_opd, hidden, weight, **kw)
    got = value_and_grads(iw_opd, hidden, weight, chunk_size=chunk_size, **kw)
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)


def test_prefix_sums_restart_per_sample_of_a_packed_row():
    hidden, weight, labels, f = tensors(b=2, n=23)
    kw = {"labels": labels, "teacher_logprobs": f["teacher_logprobs"], "sampling_logprobs": f["sampling_logprobs"]}
    packed = iw_opd(hidden, weight, position_ids=positions(ROWS), normalizer=1.0, gamma=1.0, **kw)
    # each sample on its own (its slice of the row) sums to the packed loss...
    alone = torch.zeros(())
    for r, row in enumerate(ROWS):
        start = 0
        for n in row:
            sl = slice(start, start + n)
            alone = alone + iw_opd(
                hidden[r : r + 1, sl],
                weight,
                labels[r : r + 1, sl],
                f["teacher_logprobs"][r : r + 1, sl],
                f["sampling_logprobs"][r : r + 1, sl],
                positions([[n]]),
                1.0,
                gamma=1.0,
            )
            start += n
    torch.testing.assert_close(packed, alone)
    # ...while one prefix sum running across row 0's three samples gives another loss
    across = iw_opd(hidden, weight, position_ids=positions([[23], [23]]), normalizer=1.0, gamma=1.0, **kw)
    assert not torch.isclose(packed, across, rtol=1e-3)


def test_a_sample_the_teacher_agrees_with_divides_by_epsilon_not_zero():
    hidden, weight, labels, f = tensors(b=1, n=10, ignore_frac=0.0)
    same = f["sampling_logprobs"].clone()
    loss, gh, _ = value_and_grads(
        iw_opd,
        hidden,
        weight,
        labels=labels,
        teacher_logprobs=same,
        sampling_logprobs=same,
        position_ids=positions([[10]]),
        normalizer=1.0,
    )
    assert loss == 0 and torch.all(gh == 0)


def test_packed_real_micro_batches_and_the_flattened_flash_rows_give_the_reference(smol_tokenizer):
    samples = on_policy_samples(smol_tokenizer, 6)
    (mb,) = make_micro_batches(samples, seq_len=512, rows_per_batch=8, packing=True)
    assert int(mb.segment_ids.max()) >= 2  # a row really holds several samples
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(*mb.input_ids.shape, 8, generator=g).requires_grad_()
    weight = (torch.randn(int(mb.labels.max()) + 1, 8, generator=g) * 0.3).requires_grad_()
    names = ("labels", "teacher_logprobs", "sampling_logprobs", "position_ids")
    kw = {n: mb.input(n) for n in names} | {"normalizer": float(mb.num_trained), "gamma": 1.5, "epsilon": 1e-8}
    ref = value_and_grads(naive_iw_opd, hidden, weight, **kw)
    got = value_and_grads(iw_opd, hidden, weight, chunk_size=16, **kw)
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r, rtol=1e-4, atol=1e-6)
    flat = {n: mb.input(n).reshape(1, -1) for n in names}  # what LossModel passes under flash attention
    torch.testing.assert_close(
        iw_opd(hidden.reshape(1, -1, 8), weight, normalizer=kw["normalizer"], gamma=1.5, **flat), got[0]
    )
