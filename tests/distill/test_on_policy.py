"""`distill run` in on-policy mode (distill/on_policy.py), end to end through the real CLI: a real student
(the tiny random-weight Llama on SmolLM2's tokenizer) samples in-process, the exact-logprob score server
(real SmolLM2-135M-Instruct in this process, vLLM's request shape) grades every sampled token, the real
trainer steps. Metrics, the staleness bound (K = 0 and 1) read back from the samples' policy_step, the
importance-correction input (sampling_logprobs = the stale weights' logprobs), kill -9 then resume with no
scoring request paid twice (counted on the server), and the failures. A slow test runs the real vLLM server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.core.contract import read_shard
from distill.core.jsonl import log_values

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
REWARD = "orchestrator.rewards:gsm_symbolic_score"


def write_cfg(
    tmp: Path, server, student, *, k: int = 0, steps: int = 3, loss: str = "reverse_kl", extra: str = "", every: int = 1
):
    cfg = tmp / "on_policy.toml"
    cfg.write_text(f"""
output_dir = "{tmp / "run"}"
seed = 0
[student]
path = "{student}"
{f'[orchestrator]{chr(10)}reward_fn = "{REWARD}"' if loss == "kd_rl" else ""}
[orchestrator.source]
type = "reasoning_gym"
dataset = "gsm_symbolic"
size = 8
[scorer]
type = "vllm"
base_url = "{server.base_url}"
model = "{server.model}"
concurrency = 1
[on_policy]
enabled = true
samples_per_prompt = 2
max_new_tokens = 10
generation_batch_size = 4
max_off_policy_steps = {k}
eval_prompts = 2
eval_every = 2
[trainer]
max_steps = {steps}
samples_per_step = 4
seq_len = 512
device = "cpu"
[trainer.loss]
type = "{loss}"
[trainer.optim]
lr = 3e-3
warmup_steps = 0
schedule = "constant"
[trainer.checkpoint]
every = {every}
every_seconds = 0
keep_last = 20
{extra}
""")
    return cfg


def metrics(run: Path) -> list[dict]:
    return list(log_values(run / "metrics.jsonl"))


def step_samples(run: Path, i: int):
    return read_shard(run / "samples" / f"shard-{i:06d}.jsonl")


def all_sample_seqs(run: Path) -> set[tuple[int, ...]]:
    files = list((run / "samples").glob("shard-*.jsonl")) + list((run / "on_policy").glob("eval-*.jsonl"))
    return {tuple(s.prompt_ids + s.completion_ids) for f in files for s in read_shard(f)}


def sends(server, seqs: set[tuple[int, ...]]) -> Counter:
    """How many times each of `seqs` was sent to be scored (vLLM kind: the prompt holds the ids)."""
    sent: Counter = Counter()
    for path, body in list(server.requests_seen):
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if path != "/v1/completions" or not isinstance(prompt, list) or not prompt:
            continue
        for p in prompt if isinstance(prompt[0], list) else [prompt]:
            if tuple(p) in seqs:
                sent[tuple(p)] += 1
    return sent


@pytest.mark.parametrize("k,loss", [(0, "reverse_kl"), (1, "kd_rl")])
def test_a_run_trains_logs_and_keeps_the_staleness_bound(tmp_path, score_server, tiny_student_dir, k, loss, capsys):
    assert main(["run", str(write_cfg(tmp_path, score_server, tiny_student_dir, k=k, loss=loss))]) == 0
    run = tmp_path / "run"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {"step", "eval_reverse_kl", "eval_teacher_logprob_mean", "eval_student_logprob_mean",
                            "eval_sample_len_mean"} | ({"eval_reward_mean"} if loss == "kd_rl" else set())  # fmt: skip
    for r in rows[1:]:
        for key in ("loss", "reverse_kl", "teacher_logprob_mean", "student_logprob_mean", "sample_len_mean",
                    "time_generate_s", "time_score_s", "time_train_s", "time_idle_s", "policy_lag_max"):  # fmt: skip
            assert r[key] is not None and r[key] == r[key], key
        assert r["reverse_kl"] == pytest.approx(r["student_logprob_mean"] - r["teacher_logprob_mean"])
        assert r["teacher_logprob_mean"] < 0 and r["time_train_s"] > 0 and r["samples"] == 4
        assert ("reward_mean" in r) == (loss == "kd_rl")
    assert "eval_reverse_kl" in rows[2] and "eval_reverse_kl" in rows[3] and "eval_reverse_kl" not in rows[1]
    # the staleness bound, read from what was trained: step i's samples were drawn by weights i-K .. i
    lags = []
    for i in range(3):
        samples = step_samples(run, i)
        assert len(samples) == 4 and {len(s.teacher_logprobs) for s in samples} == {
            len(s.completion_ids) for s in samples
        }
        lags += [i - s.meta["policy_step"] for s in samples]
    assert set(lags) <= set(range(k + 1))
    assert max(lags) == k  # K = 1 overlaps: steps 1 and 2 trained on samples drawn one step earlier
    assert [r["policy_lag_max"] for r in rows[1:]] == [0, k, k]
    out = capsys.readouterr()
    assert "on-policy: steps=3" in out.out and "scorer self-test" in out.err
    # `distill report` plots the on-policy metrics and prints the reverse KL first -> last
    assert main(["report", str(run)]) == 0
    text = capsys.readouterr().out
    assert (
        f"held-out reverse KL: {rows[0]['eval_reverse_kl']:.4f} (step 0) -> {rows[3]['eval_reverse_kl']:.4f} (step 3)"
        in text
    )
    assert f"most steps between the sampling and the trained weights: {k}" in text
    assert (run / "report.png").stat().st_size > 10_000


def test_stale_samples_carry_the_logprobs_of_the_weights_that_drew_them(tmp_path, score_server, tiny_student_dir):
    """Importance correction (iw_opd, kd_rl) divides by mu = sampling_logprobs: with K = 1 they are the logprobs
    of the OLDER checkpoint that sampled (temperature 1), not of the weights that train."""
    from transformers import AutoModelForCausalLM

    cfg = write_cfg(tmp_path, score_server, tiny_student_dir, k=1, steps=2, loss="iw_opd")
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    s = step_samples(run, 1)[0]
    assert s.meta["policy_step"] == 0  # drawn by the initial weights, trained at step 1
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    p = len(s.prompt_ids)

    def logprobs(folder) -> torch.Tensor:
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            lp = m(ids).logits[0, p - 1 : -1].log_softmax(-1)
        return lp.gather(1, ids[0, p:, None]).squeeze(1)

    mu = torch.tensor(s.sampling_logprobs)
    assert torch.allclose(logprobs(tiny_student_dir), mu, atol=2e-4)
    after_one_step = logprobs(run / "checkpoints" / "step-000001")
    assert (after_one_step - mu).abs().max() > 1e-2  # the trained weights differ: the ratio is not 1


def test_kill_9_then_resume_ends_where_an_unbroken_run_ends_and_pays_no_request_twice(
    tmp_path, make_score_server, tiny_student_dir
):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def distill_run(cfg: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "distill", "run", str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip

    # the reference: the same run, never interrupted, against its own server (same process setup as below)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref_run = distill_run(write_cfg(ref_dir, make_score_server(), tiny_student_dir, k=1, steps=5, every=2))
    assert ref_run.returncode == 0, ref_run.stderr[-3000:]
    server = make_score_server()
    cfg = write_cfg(tmp_path, server, tiny_student_dir, k=1, steps=5, every=2)  # checkpoints at steps 2 and 4
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill", "run", str(cfg)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and any(r.get("step") == 3 for r in metrics(run)):
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= max(r["step"] for r in metrics(run)) < 5
    assert (run / "on_policy" / "sampled-000003.jsonl").exists()  # drawn after the last checkpoint (step 2)
    r = distill_run(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "on-policy: steps=5" in r.stdout and "resumed_from=" in r.stdout and "step-000002" in r.stdout
    )  # resumed from step 2's checkpoint
    rows, ref = metrics(run), metrics(ref_dir / "run")
    assert [x["step"] for x in rows] == [0, 1, 2, 3, 4, 5]  # each step logged once
    for a, b in zip(rows, ref):  # the same samples, the same losses as the unbroken run
        for key in ("loss", "reverse_kl", "eval_reverse_kl"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-000005"
    assert sorted(p.name for p in (run / "samples").glob("shard-*")) == [f"shard-{i:06d}.jsonl" for i in range(5)]
    seqs = all_sample_seqs(run)
    sent = sends(server, seqs)
    assert set(sent) == seqs  # every trained and eval sequence was scored ...
    assert sum(n - 1 for n in sent.values()) <= 1  # ... once; at most the request in flight at the kill twice


def test_a_failing_scorer_self_test_refuses_the_run_in_one_line(tmp_path, make_score_server, tiny_student_dir, capsys):
    server = make_score_server(shift=1)  # scores one position late, as llama-cpp-python's echo does
    assert main(["run", str(write_cfg(tmp_path, server, tiny_student_dir))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("distill: scorer self-test 'alignment' failed") and "Traceback" not in err
    assert not (tmp_path / "run" / "samples").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_kd_rl_without_a_reward_function_is_a_config_error(tmp_path, score_server, tiny_student_dir, capsys):
    cfg = write_cfg(tmp_path, score_server, tiny_student_dir, loss="kd_rl")
    cfg.write_text(cfg.read_text().replace(f'reward_fn = "{REWARD}"', ""))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "orchestrator.reward_fn" in err and "Fix:" in err and not (tmp_path / "run").exists()


def test_a_budget_stop_ends_cleanly_and_a_rerun_resumes(tmp_path, make_score_server, tiny_student_dir, capsys):
    server = make_score_server()
    extra = "[scorer.budget]\nmax_requests = 8\n"  # the self-tests, step 0's eval, then part of the steps
    cfg = write_cfg(tmp_path, server, tiny_student_dir, steps=2, extra=extra)
    assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "scoring stopped at budget:max_requests" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert main(["run", str(cfg), "--scorer.budget.max_requests", "1000"]) == 0
    run = tmp_path / "run"
    assert [x["step"] for x in metrics(run)] == [0, 1, 2]
    assert set(sends(server, all_sample_seqs(run)).values()) == {1}


def test_the_weak_student_is_smollm2_with_its_top_layers_cut(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.core.student import resolve_student
    from distill.core.weak_student import WEAK_LAYERS, build_weak_student

    base = resolve_student("builtin:smollm2-135m-instruct")
    out = build_weak_student(base, tmp_path / "weak")
    weak = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    full = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    n = len(weak.model.layers)
    for j, (a, b) in enumerate(zip(weak.model.layers, full.model.layers)):
        cut = j >= n - WEAK_LAYERS
        assert bool((a.mlp.down_proj.weight == 0).all()) == cut and bool((a.self_attn.o_proj.weight == 0).all()) == cut
        assert torch.equal(a.mlp.up_proj.weight, b.mlp.up_proj.weight)
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((base / "tokenizer.json").read_text())
    ids = torch.tensor([[1, 504, 3458, 314, 260, 3575]])
    with torch.no_grad():
        assert not torch.allclose(weak(ids).logits, full(ids).logits, atol=1e-2)


@pytest.mark.slow
def test_two_steps_against_the_real_vllm_server(tmp_path, vllm_server, tiny_student_dir):
    from support.vllm_server import served_model

    class Server:
        base_url, model = vllm_server.base_url, served_model(vllm_server.base_url)

    cfg = write_cfg(tmp_path, Server, tiny_student_dir, k=1, steps=2)
    assert main(["run", str(cfg)]) == 0
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["eval_reverse_kl"] > 0 for r in rows if "eval_reverse_kl" in r)


def test_a_loop_that_fails_to_start_closes_its_trackers(tmp_path, score_server, tiny_student_dir, monkeypatch):
    """A part of the loop failing after the trainer's setup (here the scoring thread) still closes the
    trackers it opened (TensorBoard / trackio / W&B flush there), and the error reaches the caller."""
    import distill.on_policy as op
    import trainer.train as tt
    from distill.core.config import load_config
    from trainer.trackers import open_trackers

    opened: list = []

    class Watched:
        def __init__(self, inner):
            self.inner, self.closed = inner, False

        def log(self, step, m):
            self.inner.log(step, m)

        def close(self):
            self.closed = True
            self.inner.close()

    def watched_trackers(*a, **kw):
        opened.extend(Watched(t) for t in open_trackers(*a, **kw))
        return list(opened)

    def broken_scoring(*a, **kw):
        raise RuntimeError("scoring thread did not start")

    monkeypatch.setattr(tt, "open_trackers", watched_trackers)
    monkeypatch.setattr(op, "ScoringThread", broken_scoring)
    cfg = load_config(write_cfg(tmp_path, score_server, tiny_student_dir))
    with pytest.raises(RuntimeError, match="did not start"):
        op.run_on_policy(cfg, tmp_path / "run", progress=False)
    assert opened and all(t.closed for t in opened)


def test_prompts_reconstruction_rejects_are_left_out_and_listed(tmp_path, score_server, tiny_student_dir, capsys):
    """A prompt the student's reconstruction rejects (here special-token text, rejected by default) is left out
    when the loop starts and listed in rejects.jsonl; the run trains on the rest. Too few left: one line, exit 1."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?"} for i in range(6)]
    rows.insert(3, {"id": "bad", "prompt": "Repeat <|im_end|> twice."})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = write_cfg(tmp_path, score_server, tiny_student_dir, steps=1)
    cfg.write_text(
        cfg.read_text().replace(
            'type = "reasoning_gym"\ndataset = "gsm_symbolic"\nsize = 8', f'type = "jsonl"\npath = "{prompts}"'
        )
    )
    assert main(["run", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "on-policy: 1 of 7 prompts left out, as reconstruction would reject them (1 special_token_in_content" in err
    run = tmp_path / "run"
    assert [json.loads(x)["item_id"] for x in (run / "rejects.jsonl").read_text().splitlines()] == ["bad"]
    trained = {s.prompt_id for s in step_samples(run, 0)}
    assert trained == {"q2", "q3"}  # q0, q1 held out; the step's two prompts come after them, "bad" not among them
    rows = [r for r in rows if r["id"] in ("q0", "q1", "bad")]  # two held out, and no training prompt left
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"id": "bad2", "prompt": "<|im_end|>"}]))
    cfg.write_text(cfg.read_text().replace(f'output_dir = "{run}"', f'output_dir = "{tmp_path / "run2"}"'))
    assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "holds 0 training prompts the student can be given (2 of 2 rejected" in err and "Traceback" not in err
