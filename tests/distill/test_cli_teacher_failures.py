"""A teacher that cannot do its job fails the command: `distill rollout` / `run` / `probe` as a user runs them,
against a closed port, invalid URLs and the fault server. Non-zero exit, one line naming the key, no DONE,
no checkpoint of an untrained student."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import free_port, read_jsonl

from support.fault_server import FaultServer, Faults, write_prompts

ROOT = Path(__file__).resolve().parents[2]
KEY = "orchestrator.rollout_model.base_url"


def distill(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw
    )


def write_cfg(
    tmp_path: Path,
    base_url: str,
    student: Path | str = "builtin:smollm2-135m-instruct",
    *,
    prompts: int = 3,
    max_steps: int = 2,
    max_attempts: int = 2,
    backoff: float = 0.001,
    samples_per_shard: int = 32,
) -> Path:
    prompt_file = tmp_path / "prompts.jsonl"
    write_prompts(prompt_file, prompts)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
output_dir = "{tmp_path / "run"}"
[student]
path = "{student}"
[orchestrator]
concurrency = 2
max_ahead = 8
samples_per_shard = {samples_per_shard}
[orchestrator.rollout_model]
base_url = "{base_url}"
model = "fault-teacher"
[orchestrator.retry]
max_attempts = {max_attempts}
initial_backoff = {backoff}
max_backoff = {max(backoff, 0.01)}
[orchestrator.source]
type = "jsonl"
path = "{prompt_file}"
[trainer]
max_steps = {max_steps}
samples_per_step = 2
seq_len = 256
device = "cpu"
""")
    return cfg


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("distill: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def assert_nothing_claimed(run: Path) -> None:
    assert not (run / "samples" / "DONE").exists()
    ckpts = run / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir()), list(ckpts.iterdir())


def test_unreachable_base_url_fails_before_any_request(tmp_path, smol_tokenizer_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    res = distill("rollout", write_cfg(tmp_path, url), "--student.tokenizer", smol_tokenizer_dir)
    msg = one_line_error(res)
    assert res.returncode == 1
    assert KEY in msg and url in msg and "Connection refused" in msg and f"GET {url}/models" in msg
    assert_nothing_claimed(tmp_path / "run")
    assert not (tmp_path / "run" / "recording.jsonl").exists()


@pytest.mark.parametrize(
    "url,why",
    [("", "is empty"), ("not a url", "no scheme"), ("ftp://host/v1", "scheme 'ftp'"), ("http:///v1", "no host")],
)
def test_invalid_base_url_is_a_config_error(tmp_path, url, why):
    res = distill("rollout", write_cfg(tmp_path, "http://127.0.0.1:1/v1"), f"--{KEY}", url)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    line = next(x for x in res.stderr.splitlines() if KEY in x)
    assert why in line and "Fix:" in line
    assert not (tmp_path / "run").exists()  # nothing started
    bad_extra = distill(
        "rollout",
        write_cfg(tmp_path, "http://127.0.0.1:1/v1"),
        "--orchestrator.rollout_model.extra_base_urls",
        '["http://ok:1/v1", "ftp://x/v1"]',
    )
    assert bad_extra.returncode == 2 and "orchestrator.rollout_model.extra_base_urls" in bad_extra.stderr
    assert "entry 1" in bad_extra.stderr


def test_base_url_without_v1_gets_a_hint(tmp_path, smol_tokenizer_dir):
    with FaultServer() as s:
        root = s.base_url[: -len("/v1")]
        res = distill("rollout", write_cfg(tmp_path, root), "--student.tokenizer", smol_tokenizer_dir)
    msg = one_line_error(res)
    assert KEY in msg and f"did you mean {root}/v1?" in msg
    assert s.log.entries == []  # no chat request was sent
    assert_nothing_claimed(tmp_path / "run")


def rollout_with_key(cfg: Path, tokenizer_dir, key: str, *extra: str) -> subprocess.CompletedProcess:
    """`distill rollout CFG` with the teacher's key in TEACHER_FAIL_KEY (named by api_key_var)."""
    env = {**__import__("os").environ, "TEACHER_FAIL_KEY": key}
    args = [
        "--student.tokenizer",
        tokenizer_dir,
        *extra,
        "--orchestrator.rollout_model.api_key_var",
        "TEACHER_FAIL_KEY",
    ]
    return distill("rollout", cfg, *args, env=env)


def test_refused_key_and_unknown_model_are_named(tmp_path, smol_tokenizer_dir):
    secret = "sk-wrong-SECRET-123"
    with FaultServer(api_key="sk-right") as s:
        cfg = write_cfg(tmp_path, s.base_url)
        res = rollout_with_key(cfg, smol_tokenizer_dir, secret)
        msg = one_line_error(res)
        assert "TEACHER_FAIL_KEY" in msg and "401" in msg and "SECRET" not in res.stderr + res.stdout
        res = rollout_with_key(cfg, smol_tokenizer_dir, "sk-right", "--orchestrator.rollout_model.model", "gpt-nope")
        msg = one_line_error(res)
        assert "'gpt-nope'" in msg and "'fault-teacher'" in msg and "orchestrator.rollout_model.model" in msg
    assert s.log.entries == []


@pytest.mark.parametrize(
    "status, code, names",
    [
        (401, "invalid_api_key", ["TEACHER_FAIL_KEY", "orchestrator.rollout_model.api_key_var"]),
        (403, None, ["TEACHER_FAIL_KEY", "orchestrator.rollout_model.api_key_var"]),
        (404, "model_not_found", ["orchestrator.rollout_model.model", "'fault-teacher'", "base_url"]),
        (429, "insufficient_quota", ["add credit"]),
        (400, "invalid_request_error", ["orchestrator.sampling", "extra_body", "distill probe"]),
    ],
)
def test_chat_requests_refused_after_the_models_check_name_the_key_to_fix(
    tmp_path, smol_tokenizer_dir, status, code, names
):
    """/models answers (the start-up check passes), but the chat requests are refused: the one line names
    the key to change, as the start-up check would have."""
    with FaultServer(Faults(error_status=status, error_code=code)) as s:
        cfg = write_cfg(tmp_path, s.base_url)
        res = rollout_with_key(cfg, smol_tokenizer_dir, "sk-some-key-0123456789")
    msg = one_line_error(res)
    assert "retrying cannot help" in msg and str(status) in msg and "Fix: " in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    assert_nothing_claimed(tmp_path / "run")


def test_a_teacher_failing_every_request_fails_the_rollout(tmp_path, smol_tokenizer_dir):
    with FaultServer(Faults(rate_500=1.0)) as s:
        res = distill("rollout", write_cfg(tmp_path, s.base_url), "--student.tokenizer", smol_tokenizer_dir)
    msg = one_line_error(res)
    assert "max_failed_fraction" in msg and "http_500=" in msg and KEY in msg
    assert "distill: done." not in res.stdout
    assert_nothing_claimed(tmp_path / "run")
    # the failed pairs are not recorded (a rerun asks again) and are counted by reason
    assert not read_jsonl(tmp_path / "run" / "recording.jsonl")
    final = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    assert final["stop_reason"].startswith("error:") and final["failed_pairs"]["http_500"] >= 1


def test_distill_run_with_a_failing_teacher_trains_nothing(tmp_path, tiny_student_dir):
    with FaultServer(Faults(rate_500=1.0)) as s:
        res = distill("run", write_cfg(tmp_path, s.base_url, tiny_student_dir))
    msg = one_line_error(res)
    assert "max_failed_fraction" in msg and "http_500=" in msg
    assert_nothing_claimed(tmp_path / "run")
    assert "distill: done." not in res.stdout


def test_distill_run_with_an_unreachable_teacher_trains_nothing(tmp_path, tiny_student_dir):
    res = distill("run", write_cfg(tmp_path, f"http://127.0.0.1:{free_port()}/v1", tiny_student_dir))
    msg = one_line_error(res)
    assert KEY in msg and "Connection refused" in msg
    assert_nothing_claimed(tmp_path / "run")


def test_probe_exits_non_zero_when_the_endpoint_cannot_be_used():
    port = free_port()
    res = distill("probe", f"http://127.0.0.1:{port}/v1", "--model", "m", "--timeout", "5")
    msg = one_line_error(res)
    assert "cannot be used" in msg and f"127.0.0.1:{port}" in msg
    with FaultServer() as s:
        wrong = distill("probe", s.base_url, "--model", "nope", "--timeout", "5")
        no_v1 = distill("probe", s.base_url[: -len("/v1")], "--model", "fault-teacher", "--timeout", "5")
        ok = distill("probe", s.base_url, "--model", "fault-teacher", "--timeout", "5")
    assert "'nope'" in one_line_error(wrong)
    assert f"did you mean {s.base_url}?" in one_line_error(no_v1)
    assert ok.returncode == 0, ok.stderr
    with FaultServer(Faults(rate_500=1.0)) as s:
        failing = distill("probe", s.base_url, "--model", "fault-teacher", "--timeout", "5")
    assert "chat completions" in one_line_error(failing)


def test_distill_run_keeps_the_steps_trained_before_the_teacher_failed(tmp_path, tiny_student_dir):
    slow_failures = dict(prompts=20, max_attempts=3, backoff=3.0, samples_per_shard=2)
    # 4 answers (2 steps of 2 samples), then failures that take seconds each (backoff): the trainer trains first
    with FaultServer(Faults(error_status=500, error_after=4)) as s:
        res = distill("run", write_cfg(tmp_path, s.base_url, tiny_student_dir, max_steps=50, **slow_failures))
    assert "max_failed_fraction" in one_line_error(res)
    run = tmp_path / "run"
    assert not (run / "samples" / "DONE").exists()
    steps = len(read_jsonl(run / "metrics.jsonl"))
    assert steps >= 1, res.stderr
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{steps:06d}"]
    with FaultServer() as s:  # rerun: only the missing pairs are asked, training resumes from the checkpoint
        res = distill("run", write_cfg(tmp_path, s.base_url, tiny_student_dir, max_steps=4, **slow_failures))
    assert res.returncode == 0, res.stderr
    assert f"step-{steps:06d}" in res.stdout  # resumed_from
    assert len(s.log.entries) <= 20 - 4


def test_rerunning_a_finished_rollout_does_not_need_the_teacher(tmp_path, smol_tokenizer_dir):
    with FaultServer() as s:
        cfg = write_cfg(tmp_path, s.base_url)
        first = distill("rollout", cfg, "--student.tokenizer", smol_tokenizer_dir)
    assert first.returncode == 0, first.stderr
    assert len(s.log.ok()) == 3 and s.model_requests == 1
    # the server is gone (its port closed): every pair is recorded, so nothing is sent and nothing checked
    again = distill("rollout", cfg, "--student.tokenizer", smol_tokenizer_dir)
    assert again.returncode == 0, again.stderr
    final = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    assert final["stop_reason"] == "completed" and final["attempts_this_run"] == 0 and final["samples"] == 3
    assert (tmp_path / "run" / "samples" / "DONE").exists()
    # one prompt more: that pair must be asked for, so the endpoint is checked (and is unreachable)
    with open(tmp_path / "prompts.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "extra", "prompt": "one more question"}\n')
    msg = one_line_error(distill("rollout", cfg, "--student.tokenizer", smol_tokenizer_dir))
    assert "cannot reach the teacher" in msg and KEY in msg
