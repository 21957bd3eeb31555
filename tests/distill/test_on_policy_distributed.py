"""On-policy `distill run` under torchrun: 2 gloo processes (FSDP2 on CPU) against the exact-logprob score
server equal one process: same per-step loss, same held-out eval, same final weights; every sampled sequence
is scored exactly once (counted on the server); each rank samples a disjoint half of the step's prompts (the
gather refuses anything else). Then a resume under torchrun from an earlier checkpoint re-trains on the step
files already written, asks the scorer nothing, and ends with the same weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from test_on_policy import all_sample_seqs, metrics, sends, write_cfg
from test_on_policy_mix import MIX, teacher_folder
from test_student_server_vllm import student_server  # noqa: F401  (the REAL vLLM student server fixture)

from distill.core.contract import read_shard
from support.helpers import free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


def _run(cfg: Path, nproc: int, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "distill", "run", str(cfg), *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "distill", "run", str(cfg), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang: torchrun and its workers (its process group) go, then the failure
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _cfg(d: Path, server, student, k: int, mix: Path | None) -> Path:
    cfg = write_cfg(d, server, student, k=k, steps=3)
    if mix is not None:  # 2 teacher rows + 1 prompt x 2 samples per step: rank 1 samples no training prompt
        cfg.write_text(cfg.read_text().replace("[on_policy]\n", MIX.format(dir=mix)))
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("k,mixed", [(1, False), (0, True)])
def test_two_gloo_processes_sample_score_and_train_like_one(
    tmp_path, make_score_server, tiny_student_dir, smol_tokenizer, k, mixed
):
    mix = None
    if mixed:
        mix = tmp_path / "teacher"
        teacher_folder(mix, smol_tokenizer)
    runs = {}
    for n in (1, 2):
        d = tmp_path / f"n{n}"
        d.mkdir()
        server = make_score_server()
        proc = _run(_cfg(d, server, tiny_student_dir, k, mix), n)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        run = d / "run"
        seqs = all_sample_seqs(run)
        sent = sends(server, seqs)
        runs[n] = (run, seqs, sent, proc)
    (one, seqs1, sent1, _), (two, seqs2, sent2, proc2) = runs[1], runs[2]
    # every sequence trained or evaluated was sent to the scorer exactly once: nothing paid twice
    assert set(sent2) == seqs2 and set(sent2.values()) == {1}, Counter(sent2.values())
    assert sum(sent2.values()) == sum(sent1.values())  # as many paid sequences as one process
    assert seqs2 == seqs1  # the same tokens sampled (per-sequence seeds): the ranks' halves make up the whole
    r1, r2 = metrics(one), metrics(two)
    assert [r["step"] for r in r2] == [r["step"] for r in r1] == [0, 1, 2, 3]
    assert all((r.get("teacher_rows"), r["samples"]) == ((2, 4) if mixed else (None, 4)) for r in r2[1:])
    for a, b in zip(r1, r2):
        for key in ("loss", "grad_norm", "eval_reverse_kl", "reverse_kl", "loss_teacher", "loss_student"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
        for key in ("trained_tokens", "tokens", "samples", "teacher_trained_tokens"):
            assert b.get(key) == a.get(key)
    w1 = load_file(one / "checkpoints" / "step-000003" / "model.safetensors")
    w2 = load_file(two / "checkpoints" / "step-000003" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((two / "checkpoints" / "step-000003" / "trainer_state.json").read_text())["world_size"] == 2
    assert proc2.stdout.count("on-policy: steps=3") == 1  # the summary once, by rank 0

    # resume: as if the run had died after step 3 with only step 1 checkpointed; a new server counts requests
    for name in ("step-000002", "step-000003"):
        shutil.rmtree(two / "checkpoints" / name)
    server = make_score_server()
    proc = _run(_cfg(tmp_path / "n2", server, tiny_student_dir, k, mix), 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert f"resumed_from={two / 'checkpoints' / 'step-000001'}" in proc.stdout
    assert not sends(server, seqs2)  # nothing sampled or scored again
    assert [r["step"] for r in metrics(two)] == [0, 1, 2, 3]
    w3 = load_file(two / "checkpoints" / "step-000003" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w3[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_a_budget_stop_on_rank_0_stops_every_rank_cleanly_and_a_rerun_resumes(
    tmp_path, make_score_server, tiny_student_dir
):
    """Only rank 0 scores, so only rank 0 sees a [scorer.budget] stop: the other rank must stop with it (not
    wait forever for samples), the steps trained are checkpointed (a collective save), and a rerun resumes."""
    server = make_score_server()
    extra = "[scorer.budget]\nmax_requests = 8\n"  # the self-tests, step 0's eval, then part of the steps
    # no checkpoint before the end: the failure path saves the steps trained, a collective on both ranks
    cfg = write_cfg(tmp_path, server, tiny_student_dir, k=1, steps=3, extra=extra, every=10)
    proc = _run(cfg, 2, timeout=300)
    assert proc.returncode != 0
    assert "scoring stopped at budget:max_requests" in proc.stderr and "rerun the same command to resume" in proc.stderr
    # rank 0's message once (rank 1 leaves quietly, so torchrun does not kill rank 0 before it is printed)
    assert proc.stderr.count("scoring stopped at") == 1 and "rank 1 stopped with rank 0 (OnPolicyError)" in proc.stderr
    assert not re.search(r'File ".*/(distill|trainer|orchestrator)/', proc.stderr)  # no traceback of ours
    run = tmp_path / "run"
    trained = [r["step"] for r in metrics(run)]
    assert len(trained) > 1 and (run / "checkpoints" / f"step-{trained[-1]:06d}").is_dir()  # saved on the way out
    proc = _run(cfg, 2, "--scorer.budget.max_requests", "1000", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert [r["step"] for r in metrics(run)] == [0, 1, 2, 3] and trained[0] == 0
    assert set(sends(server, all_sample_seqs(run)).values()) == {1}


@pytest.mark.slow
def test_two_gloo_processes_sample_on_the_student_server(request, score_server, tmp_path):
    """on_policy.sampler = "server" under torchrun: rank 0 asks the REAL vLLM student server for every sample,
    the refresh is saved collectively (FSDP) and its probe check's forward runs on both ranks; step 1's samples
    carry the step-1 weights' logprobs, and every sequence is scored once."""
    from test_student_server_vllm import _load, _reference, server_sampler_cfg

    from distill.core.student import resolve_student

    srv = request.getfixturevalue("student_server")
    cfg = server_sampler_cfg(tmp_path, score_server, srv.base_url)
    before = len(score_server.requests_seen)
    proc = _run(cfg, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run = tmp_path / "run"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["time_refresh_s"] > 0 for r in rows[1:])
    seqs = all_sample_seqs(run)
    sent = sends(SimpleNamespace(requests_seen=score_server.requests_seen[before:]), seqs)
    assert set(sent) == seqs and set(sent.values()) == {1}
    step1 = read_shard(run / "samples" / "shard-000001.jsonl")
    assert len(step1) == 4 and {s.meta["policy_step"] for s in step1} == {1}
    weights1 = _load(run / "checkpoints" / "step-000001")
    weights0 = _load(resolve_student("builtin:smollm2-135m-instruct-weak"))
    d1 = max(abs(a - b) for s in step1 for a, b in zip(s.sampling_logprobs, _reference(weights1.lm, s, 1, 1)))
    d0 = max(abs(a - b) for s in step1 for a, b in zip(s.sampling_logprobs, _reference(weights0.lm, s, 1, 1)))
    print(f"\n2 processes on the student server: step-1 samples vs step-1 weights {d1:.2e}, vs initial {d0:.2e}")
    assert d1 < 2e-3 < d0
