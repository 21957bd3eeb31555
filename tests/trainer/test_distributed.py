"""Two gloo processes under torchrun (FSDP2 on CPU) train exactly like one process,
including a stop after step 1 and a resume from the FSDP checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.core.config import load_config
from support.trainer_helpers import make_samples, write_samples
from trainer.train import train

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAINER = {
    "max_steps": 2,
    "samples_per_step": 8,
    "seq_len": 128,
    "micro_batch_rows": 1,
    "device": "cpu",
    "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
}


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path, tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 16)

    single = tmp_path / "single"
    write_samples(single / "samples", samples)
    cfg = load_config(None, {"student": {"path": str(tiny_student_dir)}, "trainer": TRAINER})
    train(cfg, single, progress=False)

    multi = tmp_path / "multi"
    write_samples(multi / "samples", samples[:8])  # the producer has published one step's worth
    toml = tmp_path / "cfg.toml"
    toml.write_text(
        f'output_dir = "{multi}"\n[student]\npath = "{tiny_student_dir}"\n[trainer]\n'
        'max_steps = 2\nsamples_per_step = 8\nseq_len = 128\nmicro_batch_rows = 1\ndevice = "cpu"\nrepeat = false\n'
        '[trainer.optim]\nlr = 3e-3\nwarmup_steps = 0\nschedule = "constant"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def torchrun(*extra):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            "-m",
            "distill",
            "train",
            str(toml),
            *extra,
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    torchrun()  # stops after step 1: the stream ended
    assert (multi / "checkpoints" / "step-000001" / "trainer_state.json").is_file()
    write_samples(multi / "samples", samples[8:])  # the producer finishes
    torchrun("--resume")  # step 2 from the FSDP checkpoint

    one = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["trained_tokens"] == a["trained_tokens"] and b["tokens"] == a["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    # same gradients => same AdamW updates => same weights, gathered on rank 0 into the HF folder
    w1 = load_file(single / "checkpoints" / "step-000002" / "model.safetensors")
    w2 = load_file(multi / "checkpoints" / "step-000002" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    assert json.loads((multi / "checkpoints" / "step-000002" / "trainer_state.json").read_text())["world_size"] == 2
