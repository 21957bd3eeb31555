"""Mixing teacher samples into an on-policy step (trainer/mix.py): the combined loss
(sum of the teacher rows' loss + the student rows' loss) / N, N the step's trained tokens of both
kinds, against a naive full-softmax reference in values and gradients; the step-level sum over
micro-batches (each kind its loss, one normaliser) against a plain HF forward of every sample."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.trainer_helpers import make_samples

from distill.core.config import SFTLoss, TopKKLLoss, Trainer
from distill.core.config.schema_run import ReverseKLLoss
from trainer import dist
from trainer.losses import IGNORE
from trainer.losses.topk_kl import naive_topk_kl
from trainer.mix import mixed_loss, mixed_train_step, teacher_loss_config

V, H = 11, 6


def _labels(n: int, g: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, V, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = IGNORE
    return labels


def _naive(hidden, weight, labels):
    """fp64 log-softmax of every position and the label's entry (0 where not trained)."""
    logp = torch.log_softmax(hidden.double() @ weight.double().t(), -1)
    trained = labels != IGNORE
    return logp, trained, torch.where(trained, logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1), 0.0)


def test_teacher_rows_take_nll_or_the_students_topk_kl():
    assert teacher_loss_config(ReverseKLLoss(chunk_size=7)) == SFTLoss(chunk_size=7)
    topk = TopKKLLoss(chunk_size=5)
    assert teacher_loss_config(topk) is topk


@pytest.mark.parametrize("chunk", [2, 1024])
def test_mixed_sft_and_reverse_kl_equal_the_naive_reference_in_value_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    ht = torch.randn(9, H, generator=g, dtype=torch.float64).float().requires_grad_()
    hs = torch.randn(7, H, generator=g).requires_grad_()
    w = torch.randn(V, H, generator=g).requires_grad_()
    lt, ls = _labels(9, g), _labels(7, g)
    tlp = -torch.rand(7, generator=g) * 3  # the teacher's logprob of each student token
    loss, term_t, term_s = mixed_loss(
        SFTLoss(chunk_size=chunk), ReverseKLLoss(chunk_size=chunk), w, ht, {"labels": lt}, hs,
        {"labels": ls, "teacher_logprobs": tlp},
    )  # fmt: skip
    grads = torch.autograd.grad(loss, (ht, hs, w))
    # reference: one full softmax per kind, the sums, one normaliser
    ht2, hs2, w2 = (x.detach().double().requires_grad_() for x in (ht, hs, w))
    _, mt, lp_t = _naive(ht2, w2, lt)
    _, ms, lp_s = _naive(hs2, w2, ls)
    n = int(mt.sum() + ms.sum())
    ref_t = -lp_t.sum() / n
    ref_s = -((tlp.double() - lp_s).detach() * lp_s * ms).sum() / n
    ref = ref_t + ref_s
    ref_grads = torch.autograd.grad(ref, (ht2, hs2, w2))
    assert term_t.item() == pytest.approx(ref_t.item(), rel=1e-5)
    assert term_s.item() == pytest.approx(ref_s.item(), rel=1e-5, abs=1e-7)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a.double(), b, atol=1e-5), (a - b).abs().max()
    # the normaliser is the count over both kinds: the mean per trained token of the whole step
    assert n == int((lt != IGNORE).sum() + (ls != IGNORE).sum())


def test_mixed_topk_kl_on_both_kinds_equals_the_naive_reference():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(V, H, generator=g).requires_grad_()
    hidden = [torch.randn(n, H, generator=g).requires_grad_() for n in (8, 5)]
    inputs = []
    for h in hidden:
        n = h.shape[0]
        ids = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(n)])
        lps = torch.log_softmax(torch.randn(n, 4, generator=g), -1)[:, :3]  # top 3 of 4 buckets: a tail
        inputs.append({"labels": _labels(n, g), "teacher_topk_ids": ids, "teacher_topk_logprobs": lps})
    cfg = TopKKLLoss(chunk_size=3)
    loss, term_t, term_s = mixed_loss(cfg, cfg, w, hidden[0], inputs[0], hidden[1], inputs[1])
    grads = torch.autograd.grad(loss, (*hidden, w))
    n = sum(int((x["labels"] != IGNORE).sum()) for x in inputs)
    ref_terms = [naive_topk_kl(h, w, normalizer=n, **x) for h, x in zip(hidden, inputs)]
    ref_grads = torch.autograd.grad(sum(ref_terms), (*hidden, w))
    assert (term_t.item(), term_s.item()) == pytest.approx([r.item() for r in ref_terms], rel=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a.double(), b.double(), atol=1e-5)


def test_a_mixed_step_updates_the_weights_as_the_naive_per_sample_reference(smol_tokenizer, tiny_student_dir):
    """mixed_train_step (packed micro-batches, the loss head swapped for the teacher rows, one normaliser)
    moves the weights by -lr x the gradient of the formula computed from plain HF forwards, sample by sample."""
    from trainer.model import load_student

    teacher = make_samples(smol_tokenizer, 3)
    g = torch.Generator().manual_seed(2)
    student = [
        dataclasses.replace(s, teacher_logprobs=(-torch.rand(len(s.completion_ids), generator=g) * 4).tolist())
        for s in make_samples(smol_tokenizer, 2, seed=20)
    ]
    t = Trainer(loss=ReverseKLLoss(), seq_len=256, micro_batch_rows=1, device="cpu")
    t = t.model_copy(update={"optim": t.optim.model_copy(update={"max_grad_norm": None})})
    model = load_student(tiny_student_dir, torch.device("cpu"), t.loss)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ctx = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    m = mixed_train_step(model, opt, sched, teacher, student, t, ctx, pad_id=0)
    assert model.loss_cfg.type == "reverse_kl"  # the teacher rows' loss head was put back
    # the reference: each sample through the HF model alone, fp32 full logits
    ref_model = load_student(tiny_student_dir, torch.device("cpu"), t.loss)
    terms = {"t": torch.zeros(()), "s": torch.zeros(())}
    n = sum(sum(s.completion_mask) for s in teacher + student)
    for kind, rows in (("t", teacher), ("s", student)):
        for s in rows:
            p = len(s.prompt_ids)
            logits = ref_model.lm(torch.tensor([s.prompt_ids + s.completion_ids])).logits[0, p - 1 : -1]
            lp = logits.log_softmax(-1).gather(1, torch.tensor(s.completion_ids)[:, None]).squeeze(1)
            mask = torch.tensor(s.completion_mask, dtype=torch.float32)
            if kind == "t":
                terms[kind] = terms[kind] - (mask * lp).sum()
            else:
                adv = (torch.tensor(s.teacher_logprobs) - lp).detach()
                terms[kind] = terms[kind] - (mask * adv * lp).sum()
    (terms["t"] / n + terms["s"] / n).backward()
    assert (m["teacher_rows"], m["student_rows"], m["trained_tokens"]) == (3, 2, n)
    assert m["teacher_trained_tokens"] == sum(sum(s.completion_mask) for s in teacher)
    assert m["loss_teacher"] == pytest.approx(terms["t"].item() / n, rel=1e-4)
    assert m["loss_student"] == pytest.approx(terms["s"].item() / n, rel=1e-4, abs=1e-6)
    assert m["loss"] == pytest.approx(m["loss_teacher"] + m["loss_student"])
    for p0, p1, ref in zip(before, model.parameters(), ref_model.parameters()):
        assert torch.allclose(p0 - p1.detach(), ref.grad, atol=2e-5), (p0 - p1.detach() - ref.grad).abs().max()
