"""`distill score` / `distill probe --scorer` / `distill run` with a `[scorer]`, through the real CLI against the
exact-logprob score server (a real SmolLM2 in this process): scores equal the model's own, a rerun or a resume
after kill -9 never re-sends an answered sequence (counted on the server), budget stop + resume, mistakes."""

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
from support.reconstruct_helpers import recon

from distill.core.contract import ShardWriter, iter_samples
from orchestrator.score_store import score_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


CONVERSATIONS = [
    [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"{2 * i}."},
        {"role": "user", "content": "And times three?"},
        {"role": "assistant", "content": f"{6 * i}, since {2 * i} * 3 = {6 * i}."},
    ]
    for i in range(12)
]


def distill(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_samples(folder: Path, n: int = 12, done: bool = True) -> list:
    r = recon()
    w = ShardWriter(folder, samples_per_shard=4)
    out = []
    for i, conv in enumerate(CONVERSATIONS[:n]):
        samples, _ = r.build(conv, None, sample_id=f"p{i}/0", finish_reason="stop")
        out += samples
        for s in samples:
            w.add(s)
    w.close() if done else w.flush()
    return out


def write_cfg(tmp: Path, server, student: Path, scorer_extra: str = "", top_k: int = 3, extra: str = "") -> Path:
    cfg = tmp / "score.toml"
    cfg.write_text(f"""
output_dir = "{tmp / "run"}"
[student]
path = "{student}"
[orchestrator]
samples_per_shard = 4
[scorer]
type = "vllm"
base_url = "{server.base_url}"
model = "{server.model}"
top_k = {top_k}
concurrency = 1
{scorer_extra}
{extra}
""")
    return cfg


def sample_sends(server, samples) -> Counter:
    """How many times each sample's sequence was sent to be scored (vLLM kind: the prompt holds the ids)."""
    seqs = {tuple(s.prompt_ids + s.completion_ids): s.sample_id for s in samples}
    sent: Counter = Counter()
    for path, body in list(server.requests_seen):
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if path != "/v1/completions" or not isinstance(prompt, list) or not prompt:
            continue
        for p in prompt if isinstance(prompt[0], list) else [prompt]:
            if tuple(p) in seqs:
                sent[seqs[tuple(p)]] += 1
    return sent


def test_score_fills_the_models_exact_logprobs_and_a_rerun_sends_nothing(
    tmp_path, make_score_server, exact_model, tiny_student_dir
):
    server = make_score_server()
    samples = write_samples(tmp_path / "run" / "samples")
    cfg = write_cfg(tmp_path, server, tiny_student_dir, 'api_key_var = "SCORE_TEST_KEY"')
    secret = {"SCORE_TEST_KEY": "sk-score-SECRET-7"}
    r = distill("score", cfg, env=secret)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "scorer self-test alignment: pass" in r.stderr
    assert f"{len(samples)} scored now + 0 already scored" in r.stdout
    out = tmp_path / "run" / "scored"
    assert (out / "DONE").exists()
    scored = {s.sample_id: s for s in iter_samples(out)}
    assert set(scored) == {s.sample_id for s in samples}
    for s in samples:
        got = scored[s.sample_id]
        ids = s.prompt_ids + s.completion_ids
        p = len(s.prompt_ids)
        want = exact_model.direct(ids)[p:]
        assert got.teacher_logprobs == pytest.approx(want, abs=1e-4)
        lps, tops, _ = exact_model.score(ids, 3)
        for j, trained in enumerate(s.completion_mask):
            if trained:
                assert got.teacher_topk_ids[j][:3] == [t for t, _ in tops[p + j]]
            else:
                assert got.teacher_topk_ids[j] == []
    assert set(sample_sends(server, samples).values()) == {1}
    assert len((tmp_path / "run" / "scores.jsonl").read_text().splitlines()) == len(samples)

    r2 = distill("score", cfg, env=secret)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"0 scored now + {len(samples)} already scored" in r2.stdout
    # the key never reaches the terminal or any file of the run
    assert not any("SECRET-7" in x for x in (r.stdout, r.stderr, r2.stdout, r2.stderr))
    assert not [f for f in (tmp_path / "run").rglob("*") if f.is_file() and b"SECRET-7" in f.read_bytes()]
    assert set(sample_sends(server, samples).values()) == {1}  # nothing sent twice


def test_kill_9_then_rerun_resends_no_answered_sequence(tmp_path, make_score_server, tiny_student_dir):
    server = make_score_server()
    samples = write_samples(tmp_path / "run" / "samples")
    cfg = write_cfg(tmp_path, server, tiny_student_dir)
    scores = tmp_path / "run" / "scores.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill", "score", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if scores.exists() and len(scores.read_bytes().splitlines()) >= 4:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    keys = {json.loads(x)["key"] for x in scores.read_bytes().splitlines() if x.endswith(b"}")}
    answered = {
        s.sample_id for s in samples if score_key("vllm", server.model, 3, s.prompt_ids + s.completion_ids) in keys
    }
    assert 4 <= len(answered) < len(samples)
    r = distill("score", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "scored" / "DONE").exists()
    assert {s.sample_id for s in iter_samples(tmp_path / "run" / "scored")} == {s.sample_id for s in samples}
    sends = sample_sends(server, samples)
    assert len(sends) == len(samples)
    assert all(sends[i] == 1 for i in answered)  # what the killed run recorded was never sent again
    # only the request in flight at the kill (concurrency 1: at most one) was paid for twice
    assert sum(n - 1 for n in sends.values()) <= 1


def test_budget_stop_then_resume(tmp_path, make_score_server, tiny_student_dir):
    server = make_score_server()
    samples = write_samples(tmp_path / "run" / "samples")
    cfg = write_cfg(tmp_path, server, tiny_student_dir, "[scorer.budget]\nmax_requests = 5\n")
    r = distill("score", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped at budget:max_requests" in r.stdout and "rerun the same command to resume" in r.stdout
    out = tmp_path / "run" / "scored"
    assert not (out / "DONE").exists() and len(list(iter_samples(out))) == 5
    assert sum(sample_sends(server, samples).values()) == 5
    r2 = distill("score", cfg, "--scorer.budget.max_requests", 100)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"{len(samples) - 5} scored now + 5 already scored" in r2.stdout
    assert (out / "DONE").exists()
    assert set(sample_sends(server, samples).values()) == {1}


def test_a_failing_self_test_refuses_the_run_in_one_line(tmp_path, make_score_server, tiny_student_dir):
    server = make_score_server(shift=1)
    write_samples(tmp_path / "run" / "samples")
    r = distill("score", write_cfg(tmp_path, server, tiny_student_dir))
    assert r.returncode == 1
    assert r.stderr.startswith("distill: scorer self-test 'alignment' failed") and "off by one?" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "scored").exists()


@pytest.mark.parametrize(
    "case,scorer_extra,setup,names",
    [
        ("no_scorer", None, True, ["scorer: is not set"]),
        ("key_unset", 'api_key_var = "SCORE_TEST_KEY_UNSET"', True, ["scorer.api_key_var", "SCORE_TEST_KEY_UNSET"]),
        ("no_samples", "", False, ["no samples folder", "distill rollout"]),
    ],
)
def test_score_mistakes_are_one_message(tmp_path, tiny_student_dir, case, scorer_extra, setup, names):
    if setup:
        write_samples(tmp_path / "run" / "samples")
    cfg = tmp_path / "c.toml"
    scorer = "" if scorer_extra is None else f'[scorer]\ntype = "vllm"\n{scorer_extra}\n'
    cfg.write_text(f'output_dir = "{tmp_path / "run"}"\n[student]\npath = "{tiny_student_dir}"\n{scorer}')
    r = distill("score", cfg)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("distill: score cannot start, 1 problem(s)")
    for n in names:
        assert n in r.stderr


def test_probe_reports_scoring_support(make_score_server, smol_tokenizer_dir):
    server = make_score_server()
    r = distill(
        "probe", server.base_url, "--model", server.model, "--scorer", "vllm", "--tokenizer", smol_tokenizer_dir
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line[:30].strip(): line[30:].split(None, 1) for line in r.stdout.splitlines()[2:]}
    assert rows["prompt logprobs"][0] == "yes" and rows["/tokenize"][0] == "yes"
    assert rows["max top_k"] == [
        "20",
        "tried 1, 5, 20, 50, 100; k=50 failed: " + rows["max top_k"][1].split("failed: ")[1],
    ]
    assert "maximum allowed (20)" in rows["max top_k"][1]  # the server's --max-logprobs, as vLLM words it
    for t in ("tokenizer identity", "alignment", "determinism"):
        assert rows[f"self-test: {t}"][0] == "pass"
    shifted = make_score_server(shift=1)
    r2 = distill(
        "probe", shifted.base_url, "--model", shifted.model, "--scorer", "vllm", "--tokenizer", smol_tokenizer_dir
    )
    assert r2.returncode == 1 and "off by one?" in r2.stdout
    assert "cannot be used as a vllm scorer: self-test: alignment" in r2.stderr


def test_run_with_a_scorer_trains_topk_kl_on_the_scored_samples(tmp_path, make_score_server, tiny_student_dir):
    server = make_score_server()
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS[:8]))
    cfg = write_cfg(
        tmp_path,
        server,
        tiny_student_dir,
        extra=f"""[orchestrator.source]
type = "replay"
path = "{data}"
[trainer]
max_steps = 2
samples_per_step = 4
seq_len = 256
[trainer.loss]
type = "topk_kl"
""",
    )
    r = distill("run", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    scored = list(iter_samples(run / "scored"))
    assert len(scored) == 8 and all(s.teacher_topk_ids is not None for s in scored)
    assert "scorer: 8 input samples: 8 scored now" in r.stdout
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m.get("step") is not None and "loss" in m]
    assert steps and steps[-1]["step"] == 2 and steps[-1]["loss_type"] == "topk_kl"


def test_no_follow_scores_an_unfinished_input_without_marking_it_done(tmp_path, make_score_server, tiny_student_dir):
    server = make_score_server()
    samples = write_samples(tmp_path / "run" / "samples", n=3, done=False)
    r = distill("score", write_cfg(tmp_path, server, tiny_student_dir, top_k=0), "--no-follow")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the input has no DONE marker yet" in r.stdout
    out = tmp_path / "run" / "scored"
    scored = list(iter_samples(out))
    assert not (out / "DONE").exists() and len(scored) == len(samples)
    assert all(s.teacher_logprobs is not None and s.teacher_topk_ids is None for s in scored)


def test_probe_hints_at_the_url_shape_each_scorer_type_wants(make_score_server, smol_tokenizer_dir):
    """D6: a /v1 URL for SGLang (or a root URL for vLLM) only answered 404 "no route"."""
    server = make_score_server()
    r = distill("probe", server.base_url, "--scorer", "sglang", "--tokenizer", smol_tokenizer_dir)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out
    assert f"Hint: an SGLang scorer's base_url is the server root, without /v1: try {server.root}" in out
    r = distill("probe", server.root, "--scorer", "vllm", "--tokenizer", smol_tokenizer_dir)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and f"Hint: a vllm scorer's base_url ends in /v1: try {server.root}/v1" in out


def test_two_scorers_into_one_out_folder_are_refused(tmp_path, make_score_server, tiny_student_dir):
    """Two run dirs scoring into the same --out both wrote its shards (QA: 80 requests paid for 40)."""
    server = make_score_server()
    write_samples(tmp_path / "run" / "samples")
    cfg = write_cfg(tmp_path, server, tiny_student_dir)
    out = tmp_path / "shared-scored"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OUT, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert holder.stdout.readline().strip() == "READY"
        r = distill("score", cfg, "--out", str(out))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"out {out} is in use: pid {holder.pid}" in r.stderr and "--out DIR" in r.stderr
        assert not list(out.glob("shard-*"))
    finally:
        holder.kill()
        holder.wait(10)
    r = distill("score", cfg, "--out", str(out))  # the holder is gone: this one scores
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "DONE").exists()


HOLD_OUT = """
import sys, time
from pathlib import Path
from distill.run_lock import lock_run_dir
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
lock_run_dir(Path(sys.argv[1]), ("score",), "score", label="out")
print("READY", flush=True)
time.sleep(300)
"""
