"""`distill run` killed with SIGKILL mid-run, then run again: nothing paid for is asked twice,
every (prompt, sample) ends up recorded exactly once, and training finishes from its checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.contract import iter_samples
from support.fault_server import Faults, FaultServer, write_prompts

ROOT = Path(__file__).resolve().parents[2]


def write_cfg(tmp_path: Path, base_url: str, student: Path, prompts: Path) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
output_dir = "{tmp_path / "run"}"
[student]
path = "{student}"
[orchestrator]
concurrency = 2
samples_per_shard = 2
max_ahead = 8
[orchestrator.rollout_model]
base_url = "{base_url}"
model = "fault-teacher"
api_key_var = "RESUME_TEST_KEY"
[orchestrator.sampling]
n = 2
max_tokens = 24
[orchestrator.source]
type = "jsonl"
path = "{prompts}"
[trainer]
max_steps = 8
samples_per_step = 4
seq_len = 256
[trainer.checkpoint]
every = 1
keep_last = 2
""")
    return cfg


@pytest.mark.slow
def test_distill_run_survives_kill_9_and_resumes(tmp_path, tiny_student_dir):
    prompts = tmp_path / "prompts.jsonl"
    ids = write_prompts(prompts, 16)
    secret = "sk-resume-test-SECRET-42"
    env = {**__import__("os").environ, "RESUME_TEST_KEY": secret}
    # every answer takes a while, so the kill lands mid-run with requests in flight
    with FaultServer(Faults(latency_s=0.4), seed=3) as server:
        cfg = write_cfg(tmp_path, server.base_url, tiny_student_dir, prompts)
        run = tmp_path / "run"
        proc = subprocess.Popen(
            [sys.executable, "-m", "distill", "run", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 240
        # kill once some answers are recorded and at least one checkpoint exists
        while time.time() < deadline:
            rec = run / "recording.jsonl"
            n_rec = len(rec.read_text().splitlines()) if rec.exists() else 0
            if n_rec >= 8 and list((run / "checkpoints").glob("step-*")):
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last_ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
        before = Counter((r["prompt_id"], r["sample_index"]) for r in read_jsonl(run / "recording.jsonl"))
        assert 0 < sum(before.values()) < 32, "the kill should land mid-run"
        ok_before = len(server.log.ok())

        again = subprocess.run(
            [sys.executable, "-m", "distill", "run", str(cfg)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    # exactly once: every (prompt, sample) recorded once, and recorded ones never asked again
    rec = read_jsonl(run / "recording.jsonl")
    pairs = Counter((r["prompt_id"], r["sample_index"]) for r in rec)
    assert set(pairs) == {(p, i) for p in ids for i in range(2)} and max(pairs.values()) == 1
    asked_after = [e for e in server.log.ok()[ok_before:]]
    asked_prompts = {e["messages"][-1]["content"] for e in asked_after}
    for (pid, _), _n in before.items():
        if all((pid, i) in before for i in range(2)):  # both samples recorded before the kill
            q = next(json.loads(x)["prompt"] for x in prompts.read_text().splitlines() if json.loads(x)["id"] == pid)
            assert q not in asked_prompts, f"{pid} was recorded before the kill but asked again"
    samples = list(iter_samples(run / "samples"))
    assert len({s.sample_id for s in samples}) == len(samples) == 32

    # training went on from its last checkpoint to max_steps, with one metrics line per step
    steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, 9))
    assert f'resumed_from="{run}/checkpoints/step-' in again.stdout
    assert last_ckpt.name <= again.stdout.split("resumed_from=")[1].split('"')[1].rsplit("/", 1)[1]
    assert (run / "checkpoints" / "step-000008").is_dir()

    # the API key reached no file of the run
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".toml", ".json", ".log", ""):
            assert secret not in path.read_text(errors="ignore"), path
