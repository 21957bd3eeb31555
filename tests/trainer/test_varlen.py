"""Padding-free micro-batches (trainer/attention.py, `one_row` in trainer/model.py): the one-row,
per-sample-SDPA path gives the loss and gradients of the old dense block-mask path and of each sample
run alone through an independent HF forward (eager attention, full logits), at grouped-query shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill.core.config import SFTLoss, TopKKLLoss
from distill.core.contract import Sample
from support.trainer_helpers import make_samples, micro_batch_grads
from trainer.attention import NAME, sample_bounds
from trainer.data import make_micro_batches
from trainer.loss import IGNORE
from trainer.model import load_student, one_row

TIGHT = {"rtol": 1e-5, "atol": 1e-6}  # one row vs the dense mask: the same sdpa kernels
LOOSE = {"rtol": 5e-4, "atol": 1e-5}  # vs eager attention and full logits: other fp32 summation orders


def _student(path, tokenizer, heads: int, kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8 * heads,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=[(4, 2), (9, 3)], ids=["4q2kv", "9q3kv"])
def gqa_student(request, tmp_path_factory, smol_tokenizer):
    heads, kv = request.param
    return _student(tmp_path_factory.mktemp(f"gqa-{heads}-{kv}"), smol_tokenizer, heads, kv)


def _with_teacher(s: Sample) -> Sample:
    """The sample with a teacher logprob and a top-2 (or top-1) at each trained token."""
    lps = [-c / 1000 if m else None for c, m in zip(s.completion_ids, s.completion_mask)]
    ids = [[c, c + 1][: 1 + (j % 3 != 0)] for j, c in enumerate(s.completion_ids)]
    tk = [[-0.5, -3.0][: len(x)] for x in ids]
    return dataclasses.replace(s, teacher_logprobs=lps, teacher_topk_ids=ids, teacher_topk_logprobs=tk)


def _tiny_samples(tokenizer) -> list[Sample]:
    """Real chat samples plus a 1-token sample (nothing trained) and a 2-token one (one trained token)."""
    out = make_samples(tokenizer, 7)
    out.append(Sample(sample_id="one/0", prompt_ids=[5], completion_ids=[], completion_mask=[]))
    out.append(Sample(sample_id="two/0", prompt_ids=[7], completion_ids=[9], completion_mask=[1]))
    return out


def _grads(model, mbs, normalizer, varlen: bool):
    model.varlen = varlen
    total, grads = micro_batch_grads(model, mbs, normalizer)
    return total, {n.removeprefix("lm."): g for n, g in grads.items()}


def _reference(model_dir, samples, normalizer):
    """Each sample alone through transformers' own eager attention, full logits, summed NLL / normalizer."""
    from transformers import AutoModelForCausalLM

    from trainer.data import sample_arrays

    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    total = 0.0
    for s in samples:
        ids, labels = sample_arrays(s, 4096)
        logits = ref(input_ids=torch.tensor([ids])).logits[0]
        labels = torch.tensor(labels)
        at = labels != IGNORE
        loss = -torch.log_softmax(logits[at], -1).gather(-1, labels[at, None]).sum() / normalizer
        loss.backward()
        total += loss.item()
    return total, {n: p.grad for n, p in ref.named_parameters()}


def test_one_row_equals_dense_mask_and_each_sample_alone(gqa_student, smol_tokenizer):
    samples = _tiny_samples(smol_tokenizer)
    model = load_student(gqa_student, torch.device("cpu"), SFTLoss(chunk_size=32))
    assert model.lm.config._attn_implementation == NAME
    norm = float(sum(s.num_trained for s in samples))
    mbs = make_micro_batches(samples, seq_len=96, rows_per_batch=3, packing=True)
    assert len(mbs) >= 2 and mbs[0].input_ids.shape[0] == 3  # several rows per micro-batch...
    assert int(mbs[0].segment_ids.max()) >= 2  # ...with several samples per row
    assert (mbs[0].segment_ids == 0).any()  # and padding, which the one row drops
    loss_v, grads_v = _grads(model, mbs, norm, varlen=True)
    loss_d, grads_d = _grads(model, mbs, norm, varlen=False)
    loss_r, grads_r = _reference(gqa_student, samples, norm)
    assert loss_v == pytest.approx(loss_d, rel=1e-6) and loss_v == pytest.approx(loss_r, rel=1e-5)
    for name, g in grads_r.items():
        torch.testing.assert_close(grads_v[name], grads_d[name], **TIGHT, msg=name)
        torch.testing.assert_close(grads_v[name], g, **LOOSE)


@pytest.mark.parametrize("which", [0, 7, 8], ids=["chat", "1-token", "2-token"])
def test_a_micro_batch_of_one_sample(gqa_student, smol_tokenizer, which):
    (s,) = [_tiny_samples(smol_tokenizer)[which]]
    model = load_student(gqa_student, torch.device("cpu"), SFTLoss(chunk_size=32))
    norm = float(max(s.num_trained, 1))
    (mb,) = make_micro_batches([s], seq_len=96, rows_per_batch=1)
    loss_v, grads_v = _grads(model, [mb], norm, varlen=True)
    loss_d, grads_d = _grads(model, [mb], norm, varlen=False)
    loss_r, grads_r = _reference(gqa_student, [s], norm)
    assert loss_v == pytest.approx(loss_d, rel=1e-6, abs=1e-9) and loss_v == pytest.approx(loss_r, rel=1e-5, abs=1e-9)
    for name, g in grads_r.items():
        if g is None:  # a 1-token sample trains nothing
            assert s.num_trained == 0
            continue
        torch.testing.assert_close(grads_v[name], grads_d[name], **TIGHT, msg=name)
        torch.testing.assert_close(grads_v[name], g, **LOOSE)


def test_one_row_drops_padding_keeps_samples_whole_and_restarts_positions(smol_tokenizer):
    samples = [_with_teacher(s) for s in _tiny_samples(smol_tokenizer)[:7]]
    (mb,) = make_micro_batches(samples, seq_len=128, rows_per_batch=8, packing=True)
    names = ("labels", "teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")
    ids, pos, inputs, bounds = one_row(mb.input_ids, mb.position_ids, mb.segment_ids, {n: mb.input(n) for n in names})
    keep = mb.segment_ids != 0
    assert ids.shape == (1, mb.num_tokens) and torch.equal(ids[0], mb.input_ids[keep])
    assert inputs["teacher_topk_ids"].shape == (1, mb.num_tokens, mb.teacher_topk_ids.shape[-1])
    for n in names:
        torch.testing.assert_close(inputs[n][0], mb.input(n)[keep], equal_nan=True)
    # one bound per sample, each sample's positions 0..len-1, and its tokens those of a sample
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    assert len(lengths) == len(samples) and bounds[-1] == mb.num_tokens
    assert sorted(lengths) == sorted(s.num_tokens for s in samples)
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert torch.equal(pos[0, a:b], torch.arange(b - a))
        assert ids[0, a:b].tolist() in [s.prompt_ids + s.completion_ids for s in samples]


def test_topk_kl_inputs_follow_the_one_row(tiny_student_dir, smol_tokenizer):
    samples = [_with_teacher(s) for s in make_samples(smol_tokenizer, 6)]
    model = load_student(tiny_student_dir, torch.device("cpu"), TopKKLLoss(chunk_size=32))
    norm = float(sum(s.num_trained for s in samples))
    mbs = make_micro_batches(samples, seq_len=128, rows_per_batch=4, packing=True)
    loss_v, grads_v = _grads(model, mbs, norm, varlen=True)
    loss_d, grads_d = _grads(model, mbs, norm, varlen=False)
    assert loss_v == pytest.approx(loss_d, rel=1e-6)
    for name in grads_d:
        torch.testing.assert_close(grads_v[name], grads_d[name], **TIGHT, msg=name)


def test_padded_generation_inputs_still_get_sdpa_and_packed_rows_need_bounds(tiny_student_dir, smol_tokenizer):
    model = load_student(tiny_student_dir, torch.device("cpu"), SFTLoss(chunk_size=32))
    lm = model.lm.eval()
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        ours = lm(input_ids=ids, attention_mask=mask).logits
        lm.set_attn_implementation("sdpa")
        sdpa = lm(input_ids=ids, attention_mask=mask).logits
        lm.set_attn_implementation(NAME)
    torch.testing.assert_close(ours[mask.bool()], sdpa[mask.bool()], **TIGHT)
    # packed position ids without bounds: split there (one row), refused for several rows
    with torch.no_grad():
        packed = lm(input_ids=ids[1:], position_ids=torch.tensor([[0, 1, 0, 1, 2]])).logits[0]
        alone = [lm(input_ids=ids[1:, a:b]).logits[0] for a, b in ((0, 2), (2, 5))]
    torch.testing.assert_close(packed, torch.cat(alone), **TIGHT)
    with pytest.raises(ValueError, match="restart inside rows of a batch of 2"):
        lm(input_ids=ids, position_ids=torch.tensor([[0, 1, 0, 1, 2]] * 2))
    assert sample_bounds(torch.tensor([[0, 1, 0, 1, 2, 0]])) == (0, 2, 5, 6)
