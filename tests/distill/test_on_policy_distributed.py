"""On-policy `distill run` under torchrun: 2 gloo processes (FSDP2 on CPU) against the exact-logprob score
server equal one process: same per-step loss, same held-out eval, same final weights; every sampled sequence
is scored exactly once (counted on the server); each rank samples a disjoint half of the step's prompts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_on_policy import all_sample_seqs, metrics, sends, write_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cfg: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "distill", "run", str(cfg)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "distill", "run", str(cfg)]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1])
def test_two_gloo_processes_sample_score_and_train_like_one(tmp_path, make_score_server, tiny_student_dir, k):
    runs = {}
    for n in (1, 2):
        d = tmp_path / f"n{n}"
        d.mkdir()
        server = make_score_server()
        proc = _run(write_cfg(d, server, tiny_student_dir, k=k, steps=3), n)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        run = d / "run"
        seqs = all_sample_seqs(run)
        sent = sends(server, seqs)
        runs[n] = (run, seqs, sent, proc)
    (one, seqs1, sent1, _), (two, seqs2, sent2, proc2) = runs[1], runs[2]
    # every sequence trained or evaluated was sent to the scorer exactly once: nothing paid twice
    assert set(sent2) == seqs2 and set(sent2.values()) == {1}, Counter(sent2.values())
    assert seqs2 == seqs1  # the same tokens sampled (per-sequence seeds): the ranks' halves make up the whole
    r1, r2 = metrics(one), metrics(two)
    assert [r["step"] for r in r2] == [r["step"] for r in r1] == [0, 1, 2, 3]
    for a, b in zip(r1, r2):
        for key in ("loss", "grad_norm", "eval_reverse_kl", "reverse_kl"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
        for key in ("trained_tokens", "tokens", "samples"):
            assert b.get(key) == a.get(key)
    w1 = load_file(one / "checkpoints" / "step-000003" / "model.safetensors")
    w2 = load_file(two / "checkpoints" / "step-000003" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((two / "checkpoints" / "step-000003" / "trainer_state.json").read_text())["world_size"] == 2
    assert proc2.stdout.count("on-policy: steps=3") == 1  # the summary once, by rank 0
