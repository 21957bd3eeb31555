"""`distill train` with trainer.loss.type = "topk_kl": samples scored with the real SmolLM2's top-k
train the tiny student toward it (the loss falls, and step 1's loss is the KL computed by hand from
the HF models' logits); unscored samples are refused with one message."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.trainer_helpers import make_samples, write_samples

ROOT = Path(__file__).resolve().parents[2]
K = 20


def distill(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def _completion_logprobs(model, sample) -> torch.Tensor:
    """[len(completion), V] log-probabilities the HF `model` gives at each completion token's position."""
    ids = torch.tensor([list(sample.prompt_ids) + list(sample.completion_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    p = len(sample.prompt_ids)
    return logp[p - 1 : p - 1 + len(sample.completion_ids)]  # row j predicts completion token j


def _scored(sample, logp: torch.Tensor):
    """The sample with the teacher's fields as a scorer gives them: top-K (sorted, plus the sampled
    token when it is not among them) and the sampled token's logprob, at trained positions only."""
    ids, lps, own = [], [], []
    for j, (tok, trained) in enumerate(zip(sample.completion_ids, sample.completion_mask)):
        top_lp, top_id = logp[j].topk(K)
        row_ids, row_lps = top_id.tolist(), top_lp.tolist()
        if tok not in row_ids:
            row_ids, row_lps = row_ids + [tok], row_lps + [float(logp[j, tok])]
        ids.append(row_ids if trained else [])
        lps.append(row_lps if trained else [])
        own.append(float(logp[j, tok]) if trained else None)
    return dataclasses.replace(sample, teacher_logprobs=own, teacher_topk_ids=ids, teacher_topk_logprobs=lps)


def _kl_by_hand(student_logp: torch.Tensor, sample) -> tuple[float, int]:
    """(sum of the top-k + tail KL over the sample's trained positions, their count)."""
    total, n = 0.0, 0
    for j, trained in enumerate(sample.completion_mask):
        if not trained:
            continue
        ids, lps = sample.teacher_topk_ids[j], torch.tensor(sample.teacher_topk_logprobs[j], dtype=torch.float64)
        q = student_logp[j].exp()
        total += float((lps.exp() * (lps - student_logp[j, ids])).sum())
        p_tail, q_tail = 1.0 - float(lps.exp().sum()), 1.0 - float(q[ids].sum())
        if p_tail > 0:
            total += p_tail * (math.log(p_tail) - math.log(q_tail))
        n += 1
    return total, n


@pytest.fixture(scope="module")
def scored_samples(smol_tokenizer):
    from distill.core.student import resolve_student

    teacher = _load(resolve_student("builtin:smollm2-135m-instruct"))  # the real SmolLM2-135M-Instruct
    return [_scored(s, _completion_logprobs(teacher, s)) for s in make_samples(smol_tokenizer, 6)]


def _config(tmp_path, student_dir, scorer: bool = True, out: str = "run", steps: int = 6) -> Path:
    cfg = tmp_path / f"{out}.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / out}"\n[student]\npath = "{student_dir}"\n'
        f"[trainer]\nmax_steps = {steps}\nsamples_per_step = 6\nseq_len = 256\nmicro_batch_rows = 2\n"
        'device = "cpu"\n'
        "log_every = 1\n[trainer.checkpoint]\nevery = 0\nevery_seconds = 0\n"
        '[trainer.optim]\nlr = 1e-2\nwarmup_steps = 0\nschedule = "constant"\n'
        '[trainer.loss]\ntype = "topk_kl"\nchunk_size = 16\n'
        # the scorer that gave the samples their top-k; `distill train` does not contact it
        + ('[scorer]\ntype = "vllm"\ntop_k = 20\n' if scorer else "")
    )
    return cfg


def test_distill_train_topk_kl_moves_the_student_toward_the_teacher(tmp_path, tiny_student_dir, scored_samples):
    scored = scored_samples
    assert any(len(r) == K + 1 for s in scored for r in s.teacher_topk_ids)  # a sampled token outside the top-k
    write_samples(tmp_path / "scored", scored)  # --samples: where a [scorer] run keeps them is not this test's
    out = distill("train", _config(tmp_path, tiny_student_dir), "--samples", tmp_path / "scored")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["loss_type"] == "topk_kl" for r in rows)
    assert losses[-1] < 0.7 * losses[0] and all(b < a for a, b in zip(losses, losses[1:])), losses
    # step 1 trains the untouched tiny student: its loss is the mean KL per trained token, by hand
    total, n, student = 0.0, 0, _load(tiny_student_dir)
    for s in scored:
        t, m = _kl_by_hand(_completion_logprobs(student, s), s)
        total, n = total + t, n + m
    assert rows[0]["trained_tokens"] == n
    assert rows[0]["loss"] == pytest.approx(total / n, rel=1e-4)
    report = distill("report", tmp_path / "run")
    assert report.returncode == 0 and "topk_kl: mean KL per trained token" in report.stdout


def test_distill_train_topk_kl_refuses_unscored_samples_with_one_message(tmp_path, tiny_student_dir, smol_tokenizer):
    unscored = make_samples(smol_tokenizer, 6)
    write_samples(tmp_path / "unscored", unscored)
    out = distill("train", _config(tmp_path, tiny_student_dir), "--samples", tmp_path / "unscored")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert (
        f"distill: sample {unscored[0].sample_id} has no teacher_topk_ids, which trainer.loss.type = 'topk_kl' "
        "needs (6 of this step's 6 samples lack it). Fix: add the teacher's scores" in out.stderr
    )
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    # and without a [scorer] the config check refuses topk_kl before anything runs
    no_scorer = distill("train", _config(tmp_path, tiny_student_dir, scorer=False), "--samples", tmp_path / "unscored")
    assert no_scorer.returncode == 2 and "trainer.loss.type" in no_scorer.stderr and "[scorer]" in no_scorer.stderr


@pytest.mark.slow
def test_two_gloo_processes_train_topk_kl_like_one(tmp_path, tiny_student_dir, smol_tokenizer):
    """FSDP2 under torchrun: each rank's KL sum over the global count adds up to one process's loss."""
    rng = random.Random(0)

    def random_teacher(s):  # 8 distinct ids holding 80% of the mass, the sampled token first
        rows, lps = [], []
        for tok, trained in zip(s.completion_ids, s.completion_mask):
            ids = [tok] + rng.sample([i for i in range(len(smol_tokenizer)) if i != tok][:5000], 7)
            w = [rng.random() for _ in ids]
            rows.append(ids if trained else [])
            lps.append([math.log(0.8 * x / sum(w)) for x in w] if trained else [])
        return dataclasses.replace(s, teacher_topk_ids=rows, teacher_topk_logprobs=lps)

    samples = [random_teacher(s) for s in make_samples(smol_tokenizer, 12)]
    runs = {}
    for out, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--nproc-per-node", "2"])):
        write_samples(tmp_path / f"{out}-samples", samples)
        if launcher:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                launcher += ["--master-addr", "127.0.0.1", "--master-port", str(sock.getsockname()[1])]
        proc = subprocess.run(
            [
                sys.executable,
                *launcher,
                "-m",
                "distill",
                "train",
                _config(tmp_path, tiny_student_dir, out=out, steps=2),
                "--samples",
                tmp_path / f"{out}-samples",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[out] = [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in runs["two"]] == [1, 2]
    for a, b in zip(runs["one"], runs["two"]):
        assert b["trained_tokens"] == a["trained_tokens"] and b["loss_type"] == "topk_kl"
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


def test_held_out_eval_of_topk_kl_is_the_mean_kl_per_trained_token(tiny_student_dir, scored_samples):
    from distill.core.config import load_config
    from trainer.dist import DistContext
    from trainer.train import build_model, evaluate

    trainer = {"seq_len": 256, "micro_batch_rows": 2, "device": "cpu", "loss": {"type": "topk_kl", "chunk_size": 8}}
    cfg = load_config(
        None, {"student": {"path": str(tiny_student_dir)}, "trainer": trainer, "scorer": {"type": "vllm", "top_k": K}}
    )
    cpu = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    got = evaluate(build_model(tiny_student_dir, cfg.trainer, cpu), scored_samples, cfg.trainer, cpu, pad_id=0)
    total, n, student = 0.0, 0, _load(tiny_student_dir)
    for s in scored_samples:
        t, m = _kl_by_hand(_completion_logprobs(student, s), s)
        total, n = total + t, n + m
    assert got == pytest.approx(total / n, rel=1e-4)
