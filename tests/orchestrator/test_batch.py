"""Batch API rollouts (orchestrator/batch.py) against the project-owned BatchServer (tests/support/batch_server.py):
end to end to samples, kill -9 at every step then resume (one batch per pair set, no pair paid twice),
expired / partial batches (only the missing pairs resubmitted), a failed batch, budgets at batch prices."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from distill.core.config import load_config
from distill.core.contract import is_done, iter_samples
from orchestrator.batch import batch_rollout
from orchestrator.batch_store import Spend, custom_id, fit_budget, parse_custom_id, parse_result
from orchestrator.kinds.chat import ChatKind, ChatRequest, request_body
from orchestrator.reconstruct import Reconstructor
from orchestrator.recording import load_recording
from orchestrator.resume import prompt_hasher
from support.batch_server import BatchServer
from support.fault_server import write_prompts

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = {"max_attempts": 5, "initial_backoff": 0.001, "max_backoff": 0.01}


def make_cfg(tmp_path: Path, base_url: str, n_prompts: int = 6, n: int = 2, orch: dict | None = None, **batch):
    prompts = tmp_path / "prompts.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_prompts(prompts, n_prompts)
    o = {
        "rollout_model": {"base_url": base_url, "model": "batch-teacher"},
        "source": {"type": "jsonl", "path": str(prompts)},
        "sampling": {"n": n, "max_tokens": 16, "seed": 7},
        "retry": FAST_RETRY,
        "samples_per_shard": 4,
        "batch": {"enabled": True, "poll_interval": 0.01, "max_poll_interval": 0.02, **batch},
    }
    for k, v in (orch or {}).items():
        o[k] = {**o[k], **v} if isinstance(v, dict) and isinstance(o.get(k), dict) else v
    return load_config(None, {"output_dir": str(tmp_path / "run"), "orchestrator": o, "trainer": {"seq_len": 512}})


def run(cfg, tok):
    return batch_rollout(cfg, Path(cfg.output_dir), Reconstructor(tok, cfg.orchestrator.reconstruction), progress=False)


def pairs_of(ids: list[str], n: int) -> list[str]:
    return [f"{p}#{i}" for p in ids for i in range(n)]


def sample_ids(run_dir: Path) -> list[str]:
    return sorted(s.sample_id for s in iter_samples(run_dir / "samples"))


def recorded_counts(run_dir: Path) -> Counter:
    lines = (run_dir / "recording.jsonl").read_text().splitlines()
    return Counter((json.loads(x)["prompt_id"], json.loads(x)["sample_index"]) for x in lines)


def input_lines(run_dir: Path, r: int) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "batch" / f"round-{r}.input.jsonl").read_text().splitlines()]


# -- the input line --------------------------------------------------------------------------


def test_custom_id_round_trips_prompt_ids_with_hashes():
    assert parse_custom_id(custom_id("a#b/c", 3)) == ("a#b/c", 3)
    assert parse_custom_id("no-index") is None and parse_custom_id(5) is None


def test_batch_body_is_what_the_online_request_sends():
    """request_body (a batch line's body) equals what ChatKind.send posts through the SDK."""
    req = ChatRequest(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        {"n": 1, "max_tokens": 8, "seed": 9, "temperature": 0.5, "stop": ["x"]},
        {"top_k": 5, "provider": {"order": ["a"]}},
    )

    async def send(url: str) -> None:
        client = AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
        await ChatKind().send(client, "batch-teacher", req)
        await client.close()

    with BatchServer() as s:
        asyncio.run(send(s.base_url))
    assert s.chat_bodies == [request_body("batch-teacher", req)]


def test_result_lines_are_read_by_status_and_error_code():
    ok = parse_result(b'{"custom_id": "p#1", "response": {"status_code": 200, "request_id": "r", "body": {"a": 1}}}')
    assert ok.pair == ("p", 1) and ok.body == {"a": 1} and ok.request_id == "r"
    e500 = parse_result(b'{"custom_id": "p#2", "response": {"status_code": 500, "body": {"error": {"message": "m"}}}}')
    e400 = parse_result(b'{"custom_id": "p#3", "response": {"status_code": 400, "body": {}}, "error": null}')
    exp = parse_result(b'{"custom_id": "p#4", "response": null, "error": {"code": "batch_expired", "message": "x"}}')
    bad = parse_result(b"[1]", 7)
    assert (e500.reason, e500.retryable, e500.detail) == ("http_500", True, "m")
    assert (e400.reason, e400.retryable) == ("http_400", False)
    assert (exp.reason, exp.retryable) == ("batch_expired", True)
    assert bad.pair is None and bad.reason == "malformed_line" and "line 7" in bad.detail


# -- end to end --------------------------------------------------------------------------------


def test_batch_rollout_end_to_end_to_samples(tmp_path, smol_tokenizer):
    with BatchServer(lines_per_poll=4) as s:
        cfg = make_cfg(tmp_path, s.base_url)
        summary = run(cfg, smol_tokenizer)
    run_dir = Path(cfg.output_dir)
    ids = [f"p{i}" for i in range(6)]
    assert len(s.batches) == 1 and s.polls >= 4  # validating, 3 x in_progress (4 lines each), finalizing
    assert s.answered == Counter({c: 1 for c in pairs_of(ids, 2)})
    assert sample_ids(run_dir) == sorted(f"{p}/{i}" for p in ids for i in range(2))
    assert is_done(run_dir / "samples") and summary["stop_reason"] == "completed"
    lines = input_lines(run_dir, 1)
    assert [x["custom_id"] for x in lines] == pairs_of(ids, 2)
    assert {(x["method"], x["url"]) for x in lines} == {("POST", "/v1/chat/completions")}
    # one sample a line: n = 1 and the seed offset by the sample index, as an online request for that sample
    assert [(x["body"]["n"], x["body"]["seed"]) for x in lines[:2]] == [(1, 7), (1, 8)]
    loaded = load_recording(run_dir / "recording.jsonl")
    assert len(loaded.records) == 12 and recorded_counts(run_dir) == {k: 1 for k in loaded.records}
    rec = loaded.records[("p0", 1)]
    assert rec["batch_id"] == next(iter(s.batches)) and rec["custom_id"] == "p0#1"
    assert rec["request_hash"] == prompt_hasher(cfg.orchestrator)({"messages": rec["messages"], "tools": None})
    assert rec["response"]["content"].startswith("sample0 ")
    assert summary["recorded_this_run"] == 12 and summary["line_errors"] == {}


def test_api_key_reaches_the_server_and_no_file(tmp_path, smol_tokenizer, monkeypatch):
    key = "sk-batch-secret-123456"
    monkeypatch.setenv("MY_BATCH_KEY", key)
    with BatchServer(api_key=key) as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=2, orch={"rollout_model": {"api_key_var": "MY_BATCH_KEY"}})
        summary = run(cfg, smol_tokenizer)
    assert summary["recorded_this_run"] == 4  # the server refuses any other key
    for f in Path(cfg.output_dir).rglob("*"):
        assert not f.is_file() or key.encode() not in f.read_bytes(), f


def test_finished_batch_run_reruns_without_asking_anything(tmp_path, smol_tokenizer):
    with BatchServer() as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3)
        run(cfg, smol_tokenizer)
    # the server is gone: a rerun of a finished run needs no teacher (nothing to ask), and sends nothing
    summary = run(cfg, smol_tokenizer)
    assert summary["batch_ids"] == [] and summary["stop_reason"] == "completed"
    assert len(sample_ids(Path(cfg.output_dir))) == 6


def test_batch_files_replay_offline_with_distill_replay(tmp_path, smol_tokenizer):
    """The saved input + output files are what `distill replay` reads as format "openai_batch": the same samples."""
    from orchestrator.replay import replay

    with BatchServer() as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3)
        run(cfg, smol_tokenizer)
    bdir = Path(cfg.output_dir) / "batch"
    rcfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "replayed"),
            "orchestrator": {
                "source": {"type": "replay", "path": str(bdir / "round-1.output.jsonl"), "format": "openai_batch"},
                "replay": {"batch_input": str(bdir / "round-1.input.jsonl")},
            },
            "trainer": {"seq_len": 512},
        },
    )
    replay(rcfg, tmp_path / "replayed", Reconstructor(smol_tokenizer, rcfg.orchestrator.reconstruction), progress=False)

    def tokens(d: Path) -> list:
        return sorted((x.prompt_ids, x.completion_ids) for x in iter_samples(d / "samples"))

    assert len(tokens(tmp_path / "replayed")) == 6
    assert tokens(tmp_path / "replayed") == tokens(Path(cfg.output_dir))


def test_request_cache_is_shared_between_batch_runs(tmp_path, smol_tokenizer):
    """With orchestrator.cache_dir, batch answers are cached; a second run (another output_dir) takes them from
    the cache, sends no batch, and records them with provenance "cache"."""
    cache = {"cache_dir": str(tmp_path / "cache")}
    with BatchServer() as s:
        first = run(make_cfg(tmp_path / "a", s.base_url, n_prompts=3, orch=cache), smol_tokenizer)
        cfg = make_cfg(tmp_path / "b", s.base_url, n_prompts=3, orch=cache)
        second = run(cfg, smol_tokenizer)
    assert first["recorded_this_run"] == 6 and len(s.batches) == 1
    assert second["from_cache"] == 6 and second["batch_ids"] == [] and second["requests"] == 0
    recs = load_recording(Path(cfg.output_dir) / "recording.jsonl").records.values()
    assert {r["provenance"] for r in recs} == {"cache"} and len(sample_ids(Path(cfg.output_dir))) == 6


# -- kill -9 at each step, then resume ---------------------------------------------------------

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from distill.core.config import load_config
    from distill.core.student import load_tokenizer, tokenizer_only_dir
    from orchestrator.batch import batch_rollout
    from orchestrator.reconstruct import Reconstructor
    cfg = load_config(sys.argv[1])
    rec = Reconstructor(load_tokenizer(tokenizer_only_dir()), cfg.orchestrator.reconstruction)
    batch_rollout(cfg, Path(cfg.output_dir), rec, progress=False)
""")


def _config_file(tmp_path: Path, cfg) -> Path:
    from distill.core.config import redacted_dict, to_toml

    p = tmp_path / "run.toml"
    p.write_text(to_toml(redacted_dict(cfg)))
    return p


def _state_events(run_dir: Path) -> list[str]:
    p = run_dir / "batch" / "state.jsonl"
    return [json.loads(x)["event"] for x in p.read_text().splitlines()] if p.exists() else []


@pytest.mark.parametrize("point", ["upload", "create", "poll", "download"])
def test_kill_9_at_each_step_resumes_one_batch_no_pair_paid_twice(tmp_path, smol_tokenizer, point):
    """Killed inside files.create, inside batches.create (the server made the batch, the answer never came
    back), while polling, while downloading: the rerun finds what was made and goes on from there."""
    with BatchServer(lines_per_poll=3) as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=4)
        run_dir = Path(cfg.output_dir)
        s.hold = {point}  # the server acts, then holds its answer: the client is killed inside that call
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(_config_file(tmp_path, cfg))],
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if s.reached[point].is_set():
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        s.release()
        events = _state_events(run_dir)
        assert "recorded" not in events and not is_done(run_dir / "samples")
        summary = run(cfg, smol_tokenizer)
    ids = [f"p{i}" for i in range(4)]
    assert len(s.batches) == 1, (point, events)  # exactly one batch for the pair set
    assert len([f for f in s.files.values() if f["purpose"] == "batch"]) == 1
    assert s.answered == Counter({c: 1 for c in pairs_of(ids, 2)})  # no pair paid twice
    assert recorded_counts(run_dir) == {(p, i): 1 for p in ids for i in range(2)}
    assert sample_ids(run_dir) == sorted(f"{p}/{i}" for p in ids for i in range(2))
    assert is_done(run_dir / "samples") and summary["stop_reason"] == "completed"


def test_stop_event_while_polling_then_rerun_polls_the_same_batch(tmp_path, smol_tokenizer):
    import threading

    stop = threading.Event()
    with BatchServer(lines_per_poll=1) as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3, poll_interval=0.05, max_poll_interval=0.05)

        def stopper() -> None:
            while s.polls < 3:
                time.sleep(0.01)
            stop.set()

        threading.Thread(target=stopper, daemon=True).start()
        rec = Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)
        first = batch_rollout(cfg, Path(cfg.output_dir), rec, progress=False, stop_event=stop)
        assert first["stop_reason"] == "stopped" and first["recorded_this_run"] == 0
        second = run(cfg, smol_tokenizer)
    assert len(s.batches) == 1 and second["batch_ids"] == first["batch_ids"]
    assert second["recorded_this_run"] == 6 and s.answered == Counter({c: 1 for c in pairs_of(["p0", "p1", "p2"], 2)})


def test_killed_while_recording_resumes_from_the_downloaded_files(tmp_path, smol_tokenizer):
    """Killed after the download, mid-way through recording (a torn last line): the rerun records the rest
    from the saved output file; no new upload or batch, each pair recorded once."""
    import shutil

    with BatchServer() as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3)
        run(cfg, smol_tokenizer)
        run_dir = Path(cfg.output_dir)
        state = run_dir / "batch" / "state.jsonl"
        journal = state.read_text().splitlines()
        assert [json.loads(x)["event"] for x in journal[-2:]] == ["downloaded", "recorded"]
        state.write_text("\n".join(journal[:-1]) + "\n")  # the round was never journaled as recorded
        rec = run_dir / "recording.jsonl"
        lines = rec.read_text().splitlines()
        rec.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # 2 records and a half-written third
        shutil.rmtree(run_dir / "samples")  # published after recording: only what was recorded could be
        files_before = len(s.files)
        summary = run(cfg, smol_tokenizer)
    assert len(s.batches) == 1 and len(s.files) == files_before
    assert summary["recorded_this_run"] == 4 and summary["rebuilt_from_recording"] == 2
    assert recorded_counts(run_dir) == {(f"p{p}", i): 1 for p in range(3) for i in range(2)}
    assert len(sample_ids(run_dir)) == 6 and is_done(run_dir / "samples")


def test_cli_batch_flag_and_an_open_batch_refuses_an_online_rerun(tmp_path, smol_tokenizer, capsys):
    """`distill rollout --batch` turns the Batch API on; while its batch is open (stopped while polling), an
    online rerun of the run directory is refused (it would pay for the same pairs); `--batch` collects it."""
    import threading

    from distill.cli import main

    stop = threading.Event()
    with BatchServer(lines_per_poll=1) as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=2, enabled=False, poll_interval=0.05, max_poll_interval=0.05)
        path = _config_file(tmp_path, cfg)
        on = cfg.model_copy(deep=True)
        on.orchestrator.batch.enabled = True
        rec = Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)
        s.hold = {"poll"}
        t = threading.Thread(target=batch_rollout, args=(on, Path(cfg.output_dir), rec), kwargs={"stop_event": stop})
        t.start()
        assert s.reached["poll"].wait(60)
        stop.set()  # stopped while the batch runs
        s.release()
        t.join(60)
        assert main(["rollout", str(path)]) == 1  # online, with the batch still open
        err = capsys.readouterr().err
        assert "unfinished Batch API round" in err and "distill rollout --batch" in err and "Traceback" not in err
        assert main(["rollout", str(path), "--batch"]) == 0
    assert len(s.batches) == 1 and s.answered == Counter({c: 1 for c in pairs_of(["p0", "p1"], 2)})
    assert len(sample_ids(Path(cfg.output_dir))) == 4


# -- expired, partial, failed ------------------------------------------------------------------


def test_expired_batch_resubmits_only_the_missing_pairs(tmp_path, smol_tokenizer):
    with BatchServer(lines_per_poll=2) as s:
        s.expire_after = 5
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=4)
        summary = run(cfg, smol_tokenizer)
    run_dir = Path(cfg.output_dir)
    ids = [f"p{i}" for i in range(4)]
    first = [b for b in s.batches.values() if b["_n"] == 0][0]
    assert first["status"] == "expired" and len(s.batches) == 2
    assert [x["custom_id"] for x in input_lines(run_dir, 2)] == pairs_of(ids, 2)[5:]  # only the 3 missing
    assert s.answered == Counter({c: 1 for c in pairs_of(ids, 2)})
    assert summary["line_errors"] == {"batch_expired": 3} and summary["left_unanswered"] == {}
    assert len(sample_ids(run_dir)) == 8 and is_done(run_dir / "samples")


def test_partial_errors_5xx_resubmitted_4xx_rejected_with_reason(tmp_path, smol_tokenizer):
    with BatchServer() as s:
        s.line_errors = {1: 500, 2: 400}
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3, orch={"max_failed_fraction": 0.5})
        summary = run(cfg, smol_tokenizer)
    run_dir = Path(cfg.output_dir)
    assert [x["custom_id"] for x in input_lines(run_dir, 2)] == ["p0#1"]  # the 500, not the 400
    assert summary["line_errors"] == {"http_500": 1, "http_400": 1}
    assert summary["left_unanswered"] == {"http_400": 1}
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert [(r["item_id"], r["reason"]) for r in rejects] == [("p1/0", "http_400")]
    assert len(sample_ids(run_dir)) == 5 and is_done(run_dir / "samples")


def test_resubmit_off_leaves_expired_pairs_and_too_many_fails_the_run(tmp_path, smol_tokenizer):
    from orchestrator.failures import RolloutError

    with BatchServer() as s:
        s.expire_after = 2
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=2, resubmit_missing=False)
        with pytest.raises(RolloutError, match=r"2 of 4 pairs got no answer.*batch_expired=2.*max_failed_fraction"):
            run(cfg, smol_tokenizer)
    run_dir = Path(cfg.output_dir)
    assert len(s.batches) == 1 and not is_done(run_dir / "samples")
    assert len(sample_ids(run_dir)) == 2  # what came back is kept


def test_cancelled_batch_is_not_resubmitted(tmp_path, smol_tokenizer):
    import threading

    with BatchServer(lines_per_poll=1) as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3, orch={"max_failed_fraction": 1.0}, poll_interval=0.05)

        def cancel() -> None:  # someone cancels it in the provider's dashboard
            while not s.batches or s.polls < 3:
                time.sleep(0.01)
            b = next(iter(s.batches.values()))
            b["status"] = "cancelling"

        threading.Thread(target=cancel, daemon=True).start()
        summary = run(cfg, smol_tokenizer)
    assert len(s.batches) == 1 and next(iter(s.batches.values()))["status"] == "cancelled"
    left = summary["left_unanswered"]
    assert list(left) == ["batch_cancelled"] and left["batch_cancelled"] + summary["recorded_this_run"] == 6


def test_failed_batch_is_a_clear_error_without_traceback(tmp_path, capsys):
    from distill.cli import main

    with BatchServer(list_models=False) as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=2)
        path = _config_file(tmp_path, cfg)
        rc = main(["rollout", str(path), "--orchestrator.rollout_model.model", "no-such-model"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "failed validation (model_not_found=4): line 1: The model 'no-such-model' does not exist" in err
    assert "round-1.input.jsonl" in err and "nothing in it was paid for" in err


# -- budget at batch prices --------------------------------------------------------------------


def test_budget_max_requests_cuts_the_batch_and_stops(tmp_path, smol_tokenizer):
    with BatchServer() as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=4, orch={"budget": {"max_requests": 5}})
        summary = run(cfg, smol_tokenizer)
    run_dir = Path(cfg.output_dir)
    assert len(input_lines(run_dir, 1)) == 5 and len(s.batches) == 1
    assert summary["stop_reason"] == "budget:max_requests" and is_done(run_dir / "samples")  # as online
    assert len(sample_ids(run_dir)) == 5


def test_cost_is_counted_at_batch_prices(tmp_path, smol_tokenizer):
    budget = {"cost_per_1k_prompt": 2.0, "cost_per_1k_completion": 4.0}
    with BatchServer() as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3, orch={"budget": budget})
        summary = run(cfg, smol_tokenizer)
    recs = load_recording(Path(cfg.output_dir) / "recording.jsonl").records.values()
    p = sum(r["usage"]["prompt_tokens"] for r in recs)
    c = sum(r["usage"]["completion_tokens"] for r in recs)
    assert summary["cost"] == pytest.approx((p * 2.0 + c * 4.0) * 0.5 / 1000)  # price_factor 0.5


def test_an_output_line_without_usage_is_counted_at_the_estimate(tmp_path, smol_tokenizer):
    """As online (tests/orchestrator/test_usage.py): a batch answer reporting no usage is recorded and counted
    at the request's estimate (max_tokens completion tokens), marked usage_estimated, never at 0."""

    class NoUsage(BatchServer):
        def completion(self, body: dict) -> dict:
            out = super().completion(body)
            del out["usage"]
            return out

    with NoUsage() as s:
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=3, orch={"sampling": {"max_tokens": 16}})
        summary = run(cfg, smol_tokenizer)
    recs = list(load_recording(Path(cfg.output_dir) / "recording.jsonl").records.values())
    assert recs and all(r["usage"]["completion_tokens"] == 16 and r["usage"]["prompt_tokens"] > 0 for r in recs)
    assert all(r["usage_estimated"] == "the response has no usage" for r in recs)
    assert summary["completion_tokens"] == 16 * len(recs)


def test_fit_budget_never_exceeds_cost_or_completion_tokens():
    budget = {"max_cost": 1.0, "max_completion_tokens": 1000, "cost_per_1k_completion": 1.0}
    cfg = load_config(None, {"orchestrator": {"budget": budget}})
    b, spent = cfg.orchestrator.budget, Spend(requests=2, completion_tokens=100, cost=0.2)
    # each line: 1000 prompt + 100 completion tokens at (0.1, 1.0) per 1k -> 0.2
    assert fit_budget(b, (0.1, 1.0), spent, [(1000, 100)] * 10) == (4, "budget:max_cost")
    assert fit_budget(b, (0.0, 0.0), spent, [(1000, 100)] * 10) == (9, "budget:max_completion_tokens")
    assert fit_budget(b, (0.0, 0.0), spent, [(10, 10)] * 3) == (3, None)


# -- the example -------------------------------------------------------------------------------


def test_openai_batch_example_parses():
    cfg = load_config(ROOT / "examples" / "openai_batch.toml")
    bc = cfg.orchestrator.batch
    assert bc.enabled and bc.completion_window == "24h" and cfg.orchestrator.rollout_model.api_key_var
    assert cfg.orchestrator.budget.max_cost is not None


# -- the real vLLM run-batch reads our input file ---------------------------------------------


@pytest.mark.slow
def test_vllm_run_batch_reads_our_input_and_we_read_its_output(tmp_path, smol_tokenizer):
    """Our input file, run by the real `vllm run-batch` (vllm.entrypoints.openai.run_batch) on SmolLM2;
    its output file read by our parser into usable answers for every pair."""
    from distill.core.student import BUILTIN_NAME, BUILTIN_PREFIX, resolve_student
    from orchestrator.batch_store import read_results
    from orchestrator.kinds.chat import parse_choices
    from support.vllm_server import VLLMServer, venv_dir

    venv = venv_dir()
    if venv is None:
        pytest.skip("no vLLM environment (DISTILL_VLLM_VENV, .venv-vllm)")
    model_dir = resolve_student(BUILTIN_PREFIX + BUILTIN_NAME)
    with BatchServer() as s:  # the input file exactly as a batch run writes it
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=2)
        run(cfg, smol_tokenizer)
    inp, out = Path(cfg.output_dir) / "batch" / "round-1.input.jsonl", tmp_path / "vllm_out.jsonl"
    cmd = [
        str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(out),
        "--model", str(model_dir), "--served-model-name", "batch-teacher",
        "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
    ]  # fmt: skip
    env = VLLMServer(model_dir, venv).env()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = read_results(out)
    assert sorted(r.pair for r in results) == sorted((f"p{i}", k) for i in range(2) for k in range(2))
    for r in results:
        assert r.reason is None, (r.reason, r.detail)
        choices, _, usage, _, _ = parse_choices(json.dumps(r.body), 1)
        assert choices[0].message["content"] and usage["completion_tokens"] <= 16  # max_tokens honoured


# -- review fixes: stale resumed round, lookups, budget bound, torn journal, secrets ---------------


def test_resumed_round_never_created_drops_the_pairs_recorded_since(tmp_path, smol_tokenizer):
    """Killed after `uploading` (no file id yet); then the pairs p0, p1 get recorded (here by a batch run of a
    2-prompt source, as an online run or the cache would): an online run is refused meanwhile, and the batch
    rerun abandons the old round and asks only for p2, p3 (nothing paid twice)."""
    from orchestrator.batch import check_no_open_batch
    from orchestrator.batch_store import BatchState
    from orchestrator.failures import RolloutError

    with BatchServer() as s:
        run(make_cfg(tmp_path, s.base_url, n_prompts=2), smol_tokenizer)  # records p0, p1 (round 1)
        cfg = make_cfg(tmp_path, s.base_url, n_prompts=4)
        run_dir = Path(cfg.output_dir)
        ids = [f"p{i}" for i in range(4)]
        old = input_lines(run_dir, 1)
        lines = old + [{**x, "custom_id": x["custom_id"].replace("p0", p)} for p in ("p2", "p3") for x in old[:2]]
        st = BatchState.load(run_dir / "batch")
        rd = st.new_round([(p, i) for p in ids for i in range(2)], lines)  # journaled before p0, p1 were recorded
        st.append({"event": "uploading", "round": rd.round, "t": time.time()})
        with pytest.raises(RolloutError, match="unfinished Batch API round"):
            check_no_open_batch(run_dir)  # an upload has started: an online run could pay twice
        summary = run(cfg, smol_tokenizer)
    assert "abandoned" in _state_events(run_dir) and summary["stop_reason"] == "completed"
    assert [x["custom_id"] for x in input_lines(run_dir, 3)] == pairs_of(["p2", "p3"], 2)
    assert len(s.batches) == 2 and s.answered == Counter({c: 1 for c in pairs_of(ids, 2)})
    assert recorded_counts(run_dir) == {(p, i): 1 for p in ids for i in range(2)}


def test_lookups_back_off_on_connection_errors_and_a_refusal_is_a_user_error(tmp_path):
    """files.list / batches.list (the lookups of a resumed round) on a closed port: backed off like the calls,
    then a RolloutError (no traceback); a provider answering them with an HTTP error: a RolloutError naming it."""
    import socket

    from orchestrator.batch_api import BatchAPI
    from orchestrator.batch_store import BatchState
    from orchestrator.failures import RolloutError

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        closed = sk.getsockname()[1]
    with BatchServer() as s:
        oc = make_cfg(tmp_path, s.base_url).orchestrator
        st = BatchState.load(tmp_path / "b")
        rd = st.new_round([("p0", 0)], [{"custom_id": "p0#0"}])
        st.append({"event": "uploading", "round": rd.round, "t": time.time()})
        rd.input_file_id, rd.create_started = "file-x", time.time()

        async def go(base_url: str, call: str) -> None:
            client = AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=5)
            try:
                await getattr(BatchAPI(client, st, oc, tmp_path / "b"), call)(rd)
            finally:
                await client.close()

        for call, name in (("upload", "files.list"), ("adopt", "batches.list")):
            with pytest.raises(RolloutError, match="failed 5 times"):
                asyncio.run(go(f"http://127.0.0.1:{closed}/v1", call))
            with pytest.raises(RolloutError, match=rf"refused {name}.*HTTP 404.*Fix:"):
                asyncio.run(go(s.base_url + "/nope", call))


def test_batch_cost_budget_without_max_tokens_is_a_config_error_and_cache_records_are_not_answers(tmp_path):
    from distill.core.config.load import ConfigError

    def cfg(**o):
        return load_config(None, {"orchestrator": {"batch": {"enabled": True}, **o}})

    budget = {"max_cost": 1.0, "cost_per_1k_completion": 1.0}
    with pytest.raises(ConfigError, match=r"orchestrator.sampling.max_tokens.*budget.max_cost.*Fix: set"):
        cfg(budget=budget)
    with pytest.raises(ConfigError, match=r"orchestrator.sampling.max_tokens.*max_completion_tokens"):
        cfg(budget={"max_completion_tokens": 100})
    cfg(budget=budget, sampling={"max_tokens": 16})  # bounded: fine
    load_config(None, {"orchestrator": {"budget": budget}})  # online: estimated per request as before
    b = cfg().orchestrator.budget
    recs = [{"usage": {"completion_tokens": 40}}, {"provenance": "cache", "usage": {"completion_tokens": 0}}]
    sp = Spend.of(recs, b, (0.0, 0.0))
    assert sp.completion_mean() == 40 and sp.answers == 1 and sp.requests == 1


def test_torn_journal_line_is_cut_so_later_appends_are_read_back(tmp_path):
    from orchestrator.batch_store import STATE, BatchState

    st = BatchState.load(tmp_path)
    rd = st.new_round([("p0", 0)], [{"custom_id": "p0#0"}])
    with open(tmp_path / STATE, "a") as f:
        f.write('{"event": "uploaded", "round": 1, "input_fi')  # killed mid-append
    st = BatchState.load(tmp_path)
    st.append({"event": "uploading", "round": rd.round, "t": 1.0})
    st.append({"event": "uploaded", "round": rd.round, "input_file_id": "file-1"})
    back = BatchState.load(tmp_path).rounds[rd.round]
    assert back.upload_started == 1.0 and back.input_file_id == "file-1"


def test_secret_looking_extra_body_is_refused_with_batch_on(tmp_path):
    from distill.core.config.load import ConfigError

    def cfg(extra: dict, enabled: bool = True):
        o = {"batch": {"enabled": enabled}, "sampling": {"extra_body": extra}}
        return load_config(None, {"orchestrator": o})

    with pytest.raises(ConfigError, match=r"orchestrator.sampling.extra_body.api_key.*input file.*Fix"):
        cfg({"api_key": "abc", "top_k": 5})
    with pytest.raises(ConfigError, match=r"orchestrator.sampling.extra_body.user"):
        cfg({"user": "sk-proj-abcdefghijklmnop1234"})  # a key-looking value under a plain name
    assert cfg({"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}}).orchestrator.batch.enabled
    cfg({"api_key": "abc"}, enabled=False)  # online: the recording redacts it
