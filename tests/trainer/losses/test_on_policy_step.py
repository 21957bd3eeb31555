"""The on-policy losses through the trainer's data path and the real student: one optimizer step's
loss and gradients do not depend on how samples are packed into rows and micro-batches (prefix sums
restart per sample, group advantages are taken over the whole step); samples lacking a field the
loss needs are refused with the trainer's one clear error."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.on_policy_helpers import on_policy_samples
from support.trainer_helpers import make_samples

from distill import config as C
from trainer.dist import DistContext
from trainer.losses import check_inputs
from trainer.train import accumulate_gradients, build_model

CPU1 = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def _grads(student_dir, samples, loss, **trainer):
    t = {"max_steps": 1, "samples_per_step": len(samples), "device": "cpu"} | trainer
    cfg = C.load_config(None, {"student": {"path": str(student_dir)}, "trainer": t})
    cfg.trainer.loss = loss  # the mode check refuses these losses in a run; the trainer computes them
    model = build_model(student_dir, cfg.trainer, CPU1)
    m = accumulate_gradients(model, samples, cfg.trainer, CPU1, pad_id=0)
    return m, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "loss",
    [
        C.LOSS_CONFIGS["reverse_kl"](chunk_size=7),
        C.LOSS_CONFIGS["iw_opd"](gamma=2.0, chunk_size=64),
        C.LOSS_CONFIGS["kd_rl"](w_rl=1.0, w_kd=0.5, chunk_size=32),
    ],
    ids=lambda x: x.type,
)
def test_packed_and_one_by_one_steps_agree(tiny_student_dir, smol_tokenizer, loss):
    samples = on_policy_samples(smol_tokenizer, 6, groups=2)
    packed, g_packed = _grads(tiny_student_dir, samples, loss, seq_len=512, micro_batch_rows=8)
    alone, g_alone = _grads(tiny_student_dir, samples, loss, seq_len=128, micro_batch_rows=1, packing=False)
    assert packed["trained_tokens"] == alone["trained_tokens"] == sum(s.num_trained for s in samples)
    assert torch.isfinite(torch.tensor(packed["loss"])) and packed["loss"] == pytest.approx(alone["loss"], rel=1e-4)
    assert any(g.abs().sum() > 0 for g in g_packed.values())
    for name in g_packed:
        torch.testing.assert_close(g_alone[name], g_packed[name], rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "loss, strip, missing",
    [
        ("reverse_kl", {"teacher_logprobs": None}, "teacher_logprobs"),
        ("iw_opd", {"sampling_logprobs": None}, "sampling_logprobs"),
        ("kd_rl", {"reward": None}, "reward"),
        ("kd_rl", {"group_id": None}, "group_id"),
    ],
)
def test_samples_lacking_a_needed_field_are_refused_naming_it(smol_tokenizer, loss, strip, missing):
    samples = on_policy_samples(smol_tokenizer, 3)
    check_inputs(loss, samples)  # complete samples pass
    samples[1] = dataclasses.replace(samples[1], **strip)
    with pytest.raises(ValueError) as ei:
        check_inputs(loss, samples)
    msg = str(ei.value)
    assert f"sample {samples[1].sample_id} has no {missing}, which trainer.loss.type = {loss!r} needs" in msg
    assert "Fix:" in msg


def test_a_teacher_sample_is_refused_by_an_on_policy_loss_before_any_compute(tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 2)  # SFT samples: no on-policy fields at all
    with pytest.raises(ValueError, match="has no teacher_logprobs, which trainer.loss.type = 'kd_rl' needs"):
        _grads(tiny_student_dir, samples, C.LOSS_CONFIGS["kd_rl"](), seq_len=256)


def test_group_advantages_are_taken_over_the_whole_step_not_a_ranks_slice(smol_tokenizer, monkeypatch):
    from trainer import step

    samples = on_policy_samples(smol_tokenizer, 6)
    groups = ["g0", "g0", "g0", "g1", "g0", "g1"]
    samples = [dataclasses.replace(s, reward=float(i), group_id=g) for i, (s, g) in enumerate(zip(samples, groups))]
    # Over the step: g0 = rewards 0, 1, 2, 4 (mean 1.75), g1 = 3, 5 (mean 4). Rank 1 of 2 takes samples 1, 3, 5:
    # over its slice alone sample 1 would be its group's only member (advantage 0).
    monkeypatch.setattr(DistContext, "distributed", property(lambda self: False))  # no process group: reduce = identity
    t = C.load_config(None, {"trainer": {"seq_len": 256, "micro_batch_rows": 1, "packing": False}}).trainer
    t.loss = C.LOSS_CONFIGS["kd_rl"]()
    rank1 = DistContext(rank=1, world=2, local_rank=1, device=torch.device("cpu"))
    mbs, _ = step._rank_batches(samples, t, rank1, pad_id=0)
    assert [float(mb.advantages[mb.labels != -100][0]) for mb in mbs] == [1.0 - 1.75, 3.0 - 4.0, 5.0 - 4.0]
