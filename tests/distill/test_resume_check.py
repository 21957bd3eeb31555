"""A resumed training run keeps the settings its checkpoint was trained with (distill/resume_check.py):
`distill train --resume` / `distill run` with a changed learning rate or sequence length is refused before
anything is written, naming each key with both values; a longer run (max_steps) and the other resumable
keys go on from the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def distill(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_a_resume_with_changed_training_settings_is_refused(tmp_path, tiny_student_dir):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
output_dir = "{tmp_path / "run"}"
[student]
path = "{tiny_student_dir}"
[orchestrator.source]
type = "replay"
path = "{ROOT / "examples" / "data" / "chat.jsonl"}"
[trainer]
max_steps = 1
samples_per_step = 2
seq_len = 256
device = "cpu"
[trainer.optim]
lr = 2e-5
""")
    assert distill("replay", cfg).returncode == 0
    first = distill("train", cfg)
    assert first.returncode == 0, first.stderr
    saved = (tmp_path / "run" / "config.toml").read_text()
    res = distill(
        "train", cfg, "--resume", "--trainer.max_steps", "2", "--trainer.optim.lr", "0.5", "--trainer.seq_len", "128"
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "train cannot start, 2 problem(s)" in res.stderr, res.stderr
    assert "trainer.optim.lr: is 0.5" in res.stderr and "was trained with 2e-05" in res.stderr
    assert "trainer.seq_len: is 128" in res.stderr and "was trained with 256" in res.stderr
    assert "max_steps" not in res.stderr  # a longer run is a resume's purpose
    assert (tmp_path / "run" / "config.toml").read_text() == saved  # refused before anything is written
    assert distill("run", cfg, "--trainer.max_steps", "2", "--trainer.optim.lr", "0.5").returncode == 1
    ok = distill("train", cfg, "--resume", "--trainer.max_steps", "2", "--trainer.log_every", "2")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()
