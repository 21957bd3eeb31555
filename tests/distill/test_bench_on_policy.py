"""The pieces of bench/bench_on_policy.py (on-policy vs SFT at equal teacher tokens) without vLLM: the
exact-logprob score server (real SmolLM2-135M-Instruct in this process, vLLM's request shape) as the
teacher, the tiny random-weight student. The held-out eval of saved weights (evaluate_weights, used on the
SFT checkpoints) must give what the on-policy loop itself logs for the same weights and step; the
teacher-token accounting counts what each method trained on."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from support.on_policy_helpers import on_policy_samples

from distill.cli import main
from distill.core.config import load_config
from distill.core.contract import read_shard
from distill.core.jsonl import log_values
from distill.on_policy import EVAL_KEYS
from distill.on_policy_parts import write_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_on_policy", ROOT / "bench" / "bench_on_policy.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


def _cfg(tmp: Path, server, student) -> Path:
    cfg = tmp / "op.toml"
    cfg.write_text(f"""
output_dir = "{tmp / "run"}"
seed = 0
[student]
path = "{student}"
[orchestrator.source]
type = "reasoning_gym"
dataset = "gsm_symbolic"
size = 6
[scorer]
type = "vllm"
base_url = "{server.base_url}"
model = "{server.model}"
concurrency = 1
[on_policy]
enabled = true
samples_per_prompt = 2
max_new_tokens = 8
generation_batch_size = 4
max_off_policy_steps = 0
eval_prompts = 2
eval_every = 1
[trainer]
max_steps = 1
samples_per_step = 4
seq_len = 512
device = "cpu"
[trainer.loss]
type = "reverse_kl"
[trainer.optim]
lr = 3e-3
warmup_steps = 0
schedule = "constant"
[trainer.checkpoint]
every = 1
every_seconds = 0
""")
    return cfg


def test_eval_of_saved_weights_equals_the_loops_own_eval(tmp_path, score_server, tiny_student_dir):
    """The loop logs eval_* at step 0 (initial weights) and step 1 (after one step, checkpointed);
    evaluate_weights on the student folder (step 0) and on the step-1 checkpoint draws the very same
    held-out tokens and gets the same statistics (float noise of the padded batch aside)."""
    cfg_path = _cfg(tmp_path, score_server, tiny_student_dir)
    assert main(["run", str(cfg_path)]) == 0
    run = tmp_path / "run"
    logged = {r["step"]: r for r in log_values(run / "metrics.jsonl") if r.get("eval_reverse_kl") is not None}
    assert sorted(logged) == [0, 1]
    cfg = load_config(cfg_path)
    for step, weights in ((0, tiny_student_dir), (1, run / "checkpoints" / "step-000001")):
        got = bench.evaluate_weights(cfg, Path(weights), step, tmp_path / "eval")
        ours = read_shard(tmp_path / "eval" / f"eval-{step:06d}.jsonl")
        loops = read_shard(run / "on_policy" / f"eval-{step:06d}.jsonl")
        assert [s.completion_ids for s in ours] == [s.completion_ids for s in loops]
        for k in EVAL_KEYS:
            assert got[k] == pytest.approx(logged[step][k], abs=2e-4), (step, k)
    # the two evals differ (the step trained at lr 3e-3), so the check above is not vacuous
    assert logged[0]["eval_reverse_kl"] != pytest.approx(logged[1]["eval_reverse_kl"], abs=1e-3)
    # teacher tokens of the on-policy run: the completion tokens of the one trained step's scored samples
    trained = read_shard(run / "samples" / "shard-000000.jsonl")
    assert bench.on_policy_cumulative(run / "samples", 1) == [0, sum(len(s.completion_ids) for s in trained)]


def test_teacher_token_accounting(tmp_path, smol_tokenizer):
    samples = on_policy_samples(smol_tokenizer, 10)
    samples[3] = dataclasses.replace(samples[3], completion_mask=[0] * len(samples[3].completion_ids))
    toks = [sum(samples[i].completion_mask) for i in range(10)]
    assert toks[3] == 0 and all(t > 0 for i, t in enumerate(toks) if i != 3)
    write_samples(tmp_path / "sft" / "shard-000000.jsonl", samples[:6])
    write_samples(tmp_path / "sft" / "shard-000001.jsonl", samples[6:])
    # 4 samples per step, shard order; step 3 wraps around the 10 samples: no new teacher tokens
    assert bench.sft_cumulative(tmp_path / "sft", 4, 3) == [0, sum(toks[:4]), sum(toks[:8]), sum(toks)]
    assert bench.completion_tokens(samples) == sum(toks)
    assert bench.prompt_tokens(samples) == sum(len(s.prompt_ids) for s in samples)


def test_tokens_to_reach_interpolates_between_eval_points():
    curve = [(0, 2.0), (100, 1.5), (200, 1.0), (300, 1.2)]
    assert bench.tokens_to_reach(curve, 1.5) == 100
    assert bench.tokens_to_reach(curve, 1.25) == pytest.approx(150.0)
    assert bench.tokens_to_reach(curve, 2.5) == 0
    assert bench.tokens_to_reach(curve, 0.9) is None
