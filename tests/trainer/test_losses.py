"""The loss registry: the trainer computes the loss `trainer.loss.type` names, with its options."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from support.trainer_helpers import make_samples

from distill import config as C
from trainer.data import empty_micro_batch, make_micro_batches
from trainer.losses import (
    IGNORE,
    LOSSES,
    LossInputError,
    LossSpec,
    check_inputs,
    compute_loss,
    get_loss,
)
from trainer.losses.sft import chunked_nll
from trainer.losses.topk_kl import naive_topk_kl, topk_kl
from trainer.model import load_student


def test_every_registered_loss_has_its_config_model_in_the_union():
    union = typing.get_args(C.Trainer.model_fields["loss"].annotation)
    tags = {typing.get_args(a)[1].tag for a in union}
    assert set(LOSSES) == set(C.LOSS_CONFIGS) == tags - {"planned"}
    for name, model in C.LOSS_CONFIGS.items():
        assert model().type == name  # each config model's default tag is its own name


def test_sft_through_the_registry_is_the_chunked_nll_with_the_configured_chunk():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(1, 9, 8, generator=g), torch.randn(13, 8, generator=g)
    labels = torch.randint(0, 13, (1, 9), generator=g)
    labels[0, :3] = IGNORE
    got = compute_loss(C.SFTLoss(chunk_size=2), hidden, weight, {"labels": labels}, 6.0)
    torch.testing.assert_close(got, chunked_nll(hidden, weight, labels, 6.0, chunk_size=2))


def test_topk_kl_through_the_registry_takes_the_teacher_top_k_and_the_configured_chunk():
    assert LOSSES["topk_kl"].needs == ("labels", "teacher_topk_ids", "teacher_topk_logprobs")
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(1, 9, 8, generator=g), torch.randn(13, 8, generator=g)
    labels = torch.randint(0, 13, (1, 9), generator=g)
    labels[0, :3] = IGNORE
    lps, ids = torch.log_softmax(torch.randn(1, 9, 13, generator=g), -1).topk(4, dim=-1)
    inputs = {"labels": labels, "teacher_topk_ids": ids, "teacher_topk_logprobs": lps}
    got = compute_loss(C.TopKKLLoss(chunk_size=2), hidden, weight, inputs, 6.0)
    torch.testing.assert_close(got, topk_kl(hidden, weight, labels, ids, lps, 6.0, chunk_size=2))
    torch.testing.assert_close(got.double(), naive_topk_kl(hidden, weight, labels, ids, lps, 6.0))


def test_unknown_loss_names_the_key_and_the_registered_ones():
    with pytest.raises(ValueError, match=r"trainer.loss.type: unknown loss type 'nope'; registered: sft"):
        get_loss("nope")
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(None, ["--trainer.loss.type", "nope"])
    assert [p.key for p in ei.value.problems] == ["trainer.loss.type"]
    assert "unknown loss type 'nope'; registered: sft" in str(ei.value) and "Fix:" in str(ei.value)


def test_loss_table_errors_name_the_key_without_the_union_tag():
    with pytest.raises(C.ConfigError) as ei:
        C.load_config(None, ["--trainer.loss.chunk_size", "0", "--trainer.loss.chunk", "3"])
    assert sorted(p.key for p in ei.value.problems) == ["trainer.loss.chunk", "trainer.loss.chunk_size"]
    assert "did you mean trainer.loss.chunk_size" in str(ei.value)


def test_the_model_computes_the_loss_trainer_loss_type_names(tiny_student_dir, smol_tokenizer, monkeypatch):
    seen = {}

    def probe(hidden, weight, normalizer, labels, scale):
        seen.update(labels=labels, scale=scale, normalizer=normalizer)
        return (hidden.sum() + weight.sum()) * 0.0 + scale

    class ProbeLoss(C.Strict):
        type: typing.Literal["probe"] = "probe"
        scale: float = 3.0

    monkeypatch.setitem(LOSSES, "probe", LossSpec(probe, needs=("labels",)))
    model = load_student(tiny_student_dir, torch.device("cpu"), ProbeLoss())
    mb = make_micro_batches(make_samples(smol_tokenizer, 2), seq_len=512, rows_per_batch=2)[0]
    assert model.micro_batch_loss(mb, 5.0).item() == 3.0
    assert seen["scale"] == 3.0 and seen["normalizer"] == 5.0
    assert torch.equal(seen["labels"], mb.labels)


def test_a_loss_needing_a_teacher_field_refuses_samples_without_it(smol_tokenizer, monkeypatch):
    monkeypatch.setitem(LOSSES, "needs_lp", LossSpec(chunked_nll, needs=("labels", "teacher_logprobs")))
    samples = make_samples(smol_tokenizer, 2)
    check_inputs("sft", samples)  # sft needs only labels
    with pytest.raises(
        LossInputError,
        match=rf"sample {samples[0].sample_id} has no teacher_logprobs, which "
        r"trainer.loss.type = 'needs_lp' needs \(2 of this step's 2 samples lack it\)\. Fix: ",
    ):
        check_inputs("needs_lp", samples)


def test_topk_kl_refuses_a_trained_token_without_the_teachers_top_k(smol_tokenizer):
    def with_topk(s, empty_at=()):
        rows = [[] if j in empty_at else [t, 5] for j, t in enumerate(s.completion_ids)]
        lps = [[] if not r else [-0.5, -2.0] for r in rows]
        return dataclasses.replace(s, teacher_topk_ids=rows, teacher_topk_logprobs=lps)

    samples = make_samples(smol_tokenizer, 3)
    assert samples[2].completion_mask[2:4] == [0, 0]  # two untrained tokens: no top-k needed there
    check_inputs("topk_kl", [with_topk(samples[0]), with_topk(samples[1]), with_topk(samples[2], empty_at=(2, 3))])
    bad = [with_topk(samples[0]), with_topk(samples[1], empty_at=(4,)), with_topk(samples[2], empty_at=(0, 1))]
    with pytest.raises(
        LossInputError,
        match=rf"sample {samples[1].sample_id}: teacher_topk_ids\[4\] is empty at a trained token, and "
        r"trainer.loss.type = 'topk_kl' needs the teacher's top-k at every trained token \(2 of this step's 3 "
        r"samples have such a token\)\. Fix: ",
    ):
        check_inputs("topk_kl", bad)


def test_a_micro_batch_without_teacher_fields_gives_inputs_with_no_values():
    mb = empty_micro_batch(pad_id=0)  # what a rank with fewer samples runs
    assert mb.input("labels") is mb.labels
    assert mb.input("teacher_logprobs").shape == mb.labels.shape and mb.input("teacher_logprobs").isnan().all()
    assert mb.input("teacher_topk_ids").shape == (*mb.labels.shape, 0)
    assert mb.input("teacher_topk_logprobs").dtype == torch.float32
