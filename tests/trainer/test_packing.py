"""Packing: best-fit-decreasing bins, shifted labels, and packed == unpacked (loss and grads)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.core.config import SFTLoss
from distill.core.contract import Sample
from support.on_policy_helpers import on_policy_samples
from support.trainer_helpers import make_samples, micro_batch_grads
from trainer.data import (
    best_fit_decreasing,
    block_causal_mask,
    empty_micro_batch,
    group_advantages,
    make_micro_batches,
    sample_arrays,
)
from trainer.loss import IGNORE
from trainer.model import load_student


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 64).flatmap(lambda cap: st.tuples(st.just(cap), st.lists(st.integers(1, cap), max_size=40))))
def test_best_fit_decreasing_places_every_item_once_within_capacity(case):
    cap, lengths = case
    bins = best_fit_decreasing(lengths, cap)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    # BFD never needs more bins than twice the lower bound, and opens a new bin only if
    # the item fit nowhere: no two bins could be merged when both are at most half full.
    total = sum(lengths)
    assert len(bins) <= max(1, 2 * -(-total // cap))
    half = [b for b in bins if sum(lengths[i] for i in b) <= cap // 2]
    assert len(half) <= 1


def test_best_fit_prefers_the_fullest_bin():
    # 6 -> bin0 (free 4), 5 -> bin1 (free 5), 4 -> bin0 (exact fit, fuller than bin1)
    assert best_fit_decreasing([5, 6, 4], 10) == [[1, 2], [0]]


def test_labels_are_shifted_and_masked():
    s = Sample(sample_id="x/0", prompt_ids=[10, 11, 12], completion_ids=[20, 21, 22, 23], completion_mask=[1, 0, 1, 1])
    ids, labels = sample_arrays(s, seq_len=16)
    assert ids == [10, 11, 12, 20, 21, 22, 23]
    # position t predicts ids[t+1] when that token is trained
    assert labels == [IGNORE, IGNORE, 20, IGNORE, 22, 23, IGNORE]


def test_too_long_sample_is_refused_with_a_clear_message():
    s = Sample(sample_id="long/0", prompt_ids=list(range(10)), completion_ids=[1] * 10, completion_mask=[1] * 10)
    with pytest.raises(ValueError, match=r"long/0 has 20 tokens, more than trainer.seq_len = 16"):
        make_micro_batches([s], seq_len=16, rows_per_batch=1)


def test_packed_rows_restart_positions_and_block_the_mask(smol_tokenizer):
    samples = make_samples(smol_tokenizer, 6)
    mbs = make_micro_batches(samples, seq_len=256, rows_per_batch=2, packing=True)
    assert sum(m.num_samples for m in mbs) == 6
    assert sum(m.num_tokens for m in mbs) == sum(s.num_tokens for s in samples)
    assert sum(m.num_trained for m in mbs) == sum(s.num_trained for s in samples)
    mb = mbs[0]
    row_seg, row_pos = mb.segment_ids[0], mb.position_ids[0]
    starts = [i for i in range(len(row_seg)) if row_seg[i] != 0 and (i == 0 or row_seg[i] != row_seg[i - 1])]
    assert len(starts) >= 2  # this row really holds several samples
    assert all(row_pos[i] == 0 for i in starts)
    mask = block_causal_mask(mb.segment_ids)[0, 0]
    a, b = starts[0], starts[1]
    assert mask[b, b - 1].item() is False  # the 2nd sample cannot see the 1st
    assert mask[b + 1, b].item() is True  # but sees its own past
    assert mask[a, a + 1].item() is False  # causal
    assert mask.any(dim=-1).all()  # no empty softmax row, padding included
    # labels never cross a sample boundary: the last position of a sample is untrained
    assert mb.labels[0, b - 1].item() == IGNORE


def test_packed_batch_equals_samples_one_by_one(tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 7)
    model = load_student(tiny_student_dir, torch.device("cpu"), SFTLoss(chunk_size=64))
    norm = float(sum(s.num_trained for s in samples))
    packed = make_micro_batches(samples, seq_len=128, rows_per_batch=4, packing=True)
    assert len(packed) < len(samples)
    one_by_one = [make_micro_batches([s], seq_len=128, rows_per_batch=1, packing=False)[0] for s in samples]
    loss_p, grads_p = micro_batch_grads(model, packed, norm)
    loss_u, grads_u = micro_batch_grads(model, one_by_one, norm)
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-6, msg=name)


def test_empty_micro_batch_has_nothing_to_train(tiny_student_dir):
    model = load_student(tiny_student_dir, torch.device("cpu"), SFTLoss(chunk_size=64))
    mb = empty_micro_batch(pad_id=0)
    loss = model.micro_batch_loss(mb, 1.0)
    loss.backward()
    assert loss.item() == 0.0 and mb.num_trained == 0


def test_micro_batches_are_only_as_wide_as_their_longest_row(smol_tokenizer):
    samples = make_samples(smol_tokenizer, 6)
    lengths = sorted(s.num_tokens for s in samples)
    # one row per micro-batch: no padding at all
    for mb in make_micro_batches(samples, seq_len=4096, rows_per_batch=1, packing=True):
        assert mb.slots == mb.num_tokens
    # several rows: padded to the longest row of the micro-batch, never to seq_len
    seq_len = lengths[-1] + lengths[0]
    mbs = make_micro_batches(samples, seq_len=seq_len, rows_per_batch=8, packing=True)
    assert len(mbs) == 1 and mbs[0].input_ids.shape[1] <= seq_len
    row_lengths = (mbs[0].segment_ids != 0).sum(dim=1)
    assert mbs[0].input_ids.shape[1] == int(row_lengths.max())


def _with_teacher(s: Sample, topk: bool = True) -> Sample:
    """The sample with teacher fields that encode their own token: logprob -id/1000 at trained
    tokens (null elsewhere); top-k [id, id+1] (just [id] at every third position)."""
    lps = [-c / 1000 if m else None for c, m in zip(s.completion_ids, s.completion_mask)]
    ids = [[c, c + 1][: 1 + (j % 3 != 0)] for j, c in enumerate(s.completion_ids)]
    extra = {"teacher_topk_ids": ids, "teacher_topk_logprobs": [[-0.5, -3.0][: len(x)] for x in ids]} if topk else {}
    return dataclasses.replace(s, teacher_logprobs=lps, **extra)


def test_packing_keeps_teacher_fields_aligned_with_the_labels(smol_tokenizer):
    samples = [_with_teacher(s) for s in make_samples(smol_tokenizer, 6)]
    samples[1] = dataclasses.replace(samples[1], teacher_logprobs=None)  # one without logprobs
    mbs = make_micro_batches(samples, seq_len=256, rows_per_batch=2, packing=True)
    assert len(mbs) < len(samples)  # really packed
    checked = 0
    for mb in mbs:
        trained = mb.labels != IGNORE
        lp, ids, tk_lp = mb.teacher_logprobs, mb.teacher_topk_ids, mb.teacher_topk_logprobs
        assert lp.shape == mb.labels.shape and ids.shape[:2] == mb.labels.shape and ids.shape[2] == 2
        # at a trained position the teacher values are about the label's token...
        have = trained & ~lp.isnan()
        torch.testing.assert_close(lp[have], -mb.labels[have].float() / 1000)
        assert torch.equal(ids[..., 0][trained], mb.labels[trained])
        assert torch.all(tk_lp[..., 0][trained] == -0.5)
        one = trained & (tk_lp[..., 1] == float("-inf"))  # the positions with a single alternative
        assert one.any() and torch.all(ids[..., 1][one] == 0)
        assert torch.equal(ids[..., 1][trained & ~one], mb.labels[trained & ~one] + 1)
        # ...and nothing elsewhere
        assert lp[~trained].isnan().all() and torch.all(tk_lp[~trained] == float("-inf"))
        checked += int(have.sum())
    lacking = samples[1]
    assert checked == sum(s.num_trained for s in samples) - lacking.num_trained  # its positions are NaN


def test_sft_loss_ignores_teacher_fields(tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 3)
    model = load_student(tiny_student_dir, torch.device("cpu"), SFTLoss(chunk_size=64))
    norm = float(sum(s.num_trained for s in samples))
    plain = make_micro_batches(samples, seq_len=256, rows_per_batch=2)
    teacher = make_micro_batches([_with_teacher(s) for s in samples], seq_len=256, rows_per_batch=2)
    assert teacher[0].teacher_logprobs is not None and plain[0].teacher_logprobs is None
    assert micro_batch_grads(model, teacher, norm)[0] == micro_batch_grads(model, plain, norm)[0]
    assert teacher[0].to("cpu").teacher_topk_ids is not None  # .to() carries them


def test_packing_keeps_sampling_logprobs_and_advantages_aligned_with_the_labels(smol_tokenizer):
    samples = on_policy_samples(smol_tokenizer, 6, groups=2)
    adv = group_advantages(samples)
    mbs = make_micro_batches(samples, seq_len=256, rows_per_batch=2, packing=True, advantages=adv)
    assert len(mbs) < len(samples)  # really packed
    # each sample's trained-token sampling logprobs, as the float32 they are packed into
    expected = {
        s.sample_id: torch.tensor([v for v, m in zip(s.sampling_logprobs, s.completion_mask) if m]) for s in samples
    }
    found = []
    for mb in mbs:
        trained = mb.labels != IGNORE
        assert mb.sampling_logprobs[~trained].isnan().all() and mb.advantages[~trained].isnan().all()
        for r in range(mb.labels.shape[0]):
            for seg in range(1, int(mb.segment_ids[r].max()) + 1):
                at = (mb.segment_ids[r] == seg) & trained[r]
                got = mb.sampling_logprobs[r][at]
                (sid,) = [k for k, v in expected.items() if v.shape == got.shape and torch.equal(v, got)]
                assert torch.all(mb.advantages[r][at] == adv[sid])  # the same at each of its trained tokens
                found.append(sid)
    assert sorted(found) == sorted(expected)


def test_group_advantages_are_reward_minus_the_group_mean_and_refuse_unscored_samples(smol_tokenizer):
    base = make_samples(smol_tokenizer, 5)
    rewards, groups = [1.0, 0.0, 0.5, 1.0, 1.0], ["a", "a", "b", "b", "c"]
    samples = [dataclasses.replace(s, reward=r, group_id=g) for s, r, g in zip(base, rewards, groups)]
    adv = group_advantages(samples)
    assert [adv[s.sample_id] for s in samples] == [0.5, -0.5, -0.25, 0.25, 0.0]
    samples[3] = dataclasses.replace(samples[3], reward=None)
    with pytest.raises(ValueError, match=rf"sample {samples[3].sample_id} has reward None and group_id 'b'"):
        group_advantages(samples)
