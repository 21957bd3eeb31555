"""FSDP2 + LoRA: two gloo processes under torchrun train the adapters exactly like one process,
including a stop after step 1 and a resume from the (adapter-only) FSDP checkpoint."""

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
from distill.core.config.load import read_toml
from support.trainer_helpers import make_samples, write_samples
from trainer.train import train

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
# no lora dropout: each rank draws its own masks, so only a dropout-free run is rank-count independent
TRAINER_TOML = """[trainer]
max_steps = 2
samples_per_step = 8
seq_len = 128
micro_batch_rows = 1
device = "cpu"
repeat = false
[trainer.optim]
lr = 1e-2
warmup_steps = 0
schedule = "constant"
[trainer.lora]
enabled = true
r = 4
alpha = 8
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(toml: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "distill", "train", str(toml), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.slow
def test_fsdp2_lora_on_two_gloo_processes_equals_one_process(tmp_path, tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 16)
    single = tmp_path / "single"
    write_samples(single / "samples", samples)
    conf = tmp_path / "trainer.toml"
    conf.write_text(TRAINER_TOML)
    trainer = read_toml(conf)["trainer"]
    train(load_config(None, {"student": {"path": str(tiny_student_dir)}, "trainer": trainer}), single, progress=False)

    multi = tmp_path / "multi"
    write_samples(multi / "samples", samples[:8])  # one step's worth published
    toml = tmp_path / "cfg.toml"
    toml.write_text(f'output_dir = "{multi}"\n[student]\npath = "{tiny_student_dir}"\n' + TRAINER_TOML)
    _torchrun(toml)  # stops after step 1: the stream ended
    step1 = multi / "checkpoints" / "step-000001"
    assert (step1 / "adapter_model.safetensors").is_file() and not (step1 / "model.safetensors").exists()
    write_samples(multi / "samples", samples[8:])
    _torchrun(toml, "--resume")  # step 2 from the FSDP adapter checkpoint

    one = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["trained_tokens"] == a["trained_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    w1 = load_file(single / "checkpoints" / "step-000002" / "adapter_model.safetensors")
    w2 = load_file(multi / "checkpoints" / "step-000002" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys() and len(w1) == 28
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
