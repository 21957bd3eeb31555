"""run_rollouts end to end against the FaultServer, with the real SmolLM2 tokenizer and Reconstructor."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.contract import iter_samples, is_done, write_consumed
from orchestrator.reconstruct import Reconstructor
from orchestrator.scheduler import RolloutError, rollout, run_rollouts
from support.fault_server import FaultServer, Faults, write_prompts
from support.rollout_helpers import make_cfg


@pytest.fixture
def recon_for(smol_tokenizer):
    return lambda cfg: Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)


def sample_ids(run_dir: Path) -> list[str]:
    return [s.sample_id for s in iter_samples(run_dir / "samples")]


def test_30pct_faults_every_sample_exactly_once(tmp_path, recon_for):
    ids = write_prompts(tmp_path / "p.jsonl", 30)
    with FaultServer(Faults.uniform(0.3, retry_after=0.01), seed=11) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 3, "max_tokens": 64}, concurrency=6)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    outcomes = s.log.outcomes()
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 5  # faults really happened
    got = sample_ids(tmp_path / "run")
    assert sorted(got) == sorted(f"{p}/{i}" for p in ids for i in range(3))  # all, no duplicates
    rec = read_jsonl(tmp_path / "run" / "recording.jsonl")
    assert Counter((r["prompt_id"], r["sample_index"]) for r in rec) == {(p, i): 1 for p in ids for i in range(3)}
    assert summary["stop_reason"] == "completed" and summary["samples"] == 90
    assert summary["requests"] == len(s.log.entries)  # every HTTP attempt counted, retries included
    assert is_done(tmp_path / "run" / "samples")
    # recording provenance
    r0 = rec[0]
    assert set(r0) >= {
        "v",
        "prompt_id",
        "sample_index",
        "messages",
        "tools",
        "response",
        "finish_reason",
        "model",
        "endpoint",
        "sampling",
        "usage",
        "usage_shared_by",
        "t_start",
        "t_end",
        "reward",
        "request_id",
    }
    assert r0["endpoint"] == s.base_url and r0["model"] == "fault-teacher" and r0["sampling"]["max_tokens"] == 64
    # usage / usage_shared_by sums back to what the server billed
    billed = sum(r["usage"]["completion_tokens"] / r["usage_shared_by"] for r in rec)
    assert summary["completion_tokens"] == round(billed)


def test_ignored_n_falls_back_to_separate_requests(tmp_path, recon_for):
    ids = write_prompts(tmp_path / "p.jsonl", 6)
    with FaultServer(Faults(ignore_n=True)) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 4, "seed": 5}, concurrency=4)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert sorted(sample_ids(tmp_path / "run")) == sorted(f"{p}/{i}" for p in ids for i in range(4))
    assert summary["n_ignored_responses"] >= 1
    # the fallback requests asked for one sample each, with distinct seeds
    singles = [e for e in s.log.entries if e["n"] == 1]
    assert len(singles) >= 3 * len(ids) - 3
    assert {e["body"]["seed"] for e in singles} >= {6, 7, 8}
    # completions differ between sample indices
    texts = {r["response"]["content"] for r in read_jsonl(tmp_path / "run" / "recording.jsonl")}
    assert len(texts) == 24


def test_max_requests_budget_stops_cleanly(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 50)
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", budget={"max_requests": 7}, concurrency=3)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert summary["stop_reason"] == "budget:max_requests"
    assert len(s.log.entries) == 7 and summary["requests"] == 7
    assert len(sample_ids(tmp_path / "run")) == 7
    assert is_done(tmp_path / "run" / "samples")  # shards flushed and closed
    assert json.loads((tmp_path / "run" / "samples" / "DONE").read_text())["samples"] == 7
    last = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    assert last["final"] and last["stop_reason"] == "budget:max_requests"


def test_completion_token_and_cost_budgets_never_exceeded(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 50)
    with FaultServer() as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            sampling={"max_tokens": 30},
            budget={"max_completion_tokens": 100},
            concurrency=4,
        )
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert summary["stop_reason"] == "budget:max_completion_tokens"
    billed = sum(e["choices"] for e in s.log.ok())
    assert 0 < summary["completion_tokens"] <= 100 and billed >= 1
    with FaultServer() as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            sampling={"max_tokens": 30},
            budget={"max_cost": 0.5, "cost_per_1k_prompt": 1.0, "cost_per_1k_completion": 2.0},
            concurrency=4,
        )
        summary = rollout(cfg, tmp_path / "run2", recon_for(cfg), progress=False, backpressure=False)
    assert summary["stop_reason"] == "budget:max_cost"
    assert 0.5 - 0.07 < summary["cost"] <= 0.5 + 1e-9
    assert is_done(tmp_path / "run2" / "samples")


def test_budget_counts_spend_from_before_a_resume(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 20)
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", budget={"max_requests": 5})
        rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", budget={"max_requests": 8})
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert len(s.log.entries) == 8 and summary["requests"] == 8
    assert len(set(sample_ids(tmp_path / "run"))) == 8 == len(sample_ids(tmp_path / "run"))


def test_secrets_never_written(tmp_path, recon_for, monkeypatch, capfd):
    secret = "sk-DISTINCTIVE-7f3a9c1e-do-not-log"
    monkeypatch.setenv("DISTILL_TEST_TEACHER_KEY", secret)
    write_prompts(tmp_path / "p.jsonl", 8)
    with FaultServer(Faults.uniform(0.3, retry_after=0.01), seed=2) as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            rollout_model={"api_key_var": "DISTILL_TEST_TEACHER_KEY", "headers": {"X-Api-Key": secret + "-hdr"}},
            sampling={"extra_body": {"api_key": secret + "-body"}},
            budget={"max_requests": 200},
        )
        rollout(cfg, tmp_path / "run", recon_for(cfg), progress=True, backpressure=False)
    assert all(e["auth"] == f"Bearer {secret}" for e in s.log.entries)  # it was used...
    out, err = capfd.readouterr()
    assert "DISTINCTIVE" not in out + err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:  # ...and is nowhere in the run directory
        assert b"DISTINCTIVE" not in p.read_bytes(), p


def test_credentials_in_base_url_never_written(tmp_path, recon_for, capfd):
    """A password in rollout_model.base_url (user:KEY@host): used to connect, masked in the run folder's
    config.toml, every recording line, every sample's meta.endpoint, and the terminal."""
    from distill.run import prepare_run_dir

    secret = "sk-proj-DISTINCTIVE123abc"
    write_prompts(tmp_path / "p.jsonl", 6)
    with FaultServer() as s:
        url = s.base_url.replace("http://", f"http://user:{secret}@")
        cfg = make_cfg(url, tmp_path / "p.jsonl", rollout_model={"extra_base_urls": [url]})
        cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "run")})
        rollout(cfg, prepare_run_dir(cfg, "rollout", ("sample",)), recon_for(cfg), progress=True, backpressure=False)
    shown = s.base_url.replace("http://", "http://user:***@")
    assert f'base_url = "{shown}"' in (tmp_path / "run" / "config.toml").read_text()
    assert {r["endpoint"] for r in read_jsonl(tmp_path / "run" / "recording.jsonl")} == {shown}
    samples = list(iter_samples(tmp_path / "run" / "samples"))
    assert len(samples) == 6 and {x.meta["endpoint"] for x in samples} == {shown}
    out, err = capfd.readouterr()
    assert "DISTINCTIVE" not in out + err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    for p in files:
        assert b"DISTINCTIVE" not in p.read_bytes(), p
    with FaultServer(max_context_tokens=100) as s:  # an error message names the endpoint, masked
        url = s.base_url.replace("http://", f"http://user:{secret}@")
        cfg = make_cfg(url, tmp_path / "p.jsonl", sampling={"max_tokens": 1000})
        with pytest.raises(RolloutError) as ei:
            rollout(cfg, tmp_path / "run2", recon_for(cfg), progress=False, backpressure=False)
    assert "DISTINCTIVE" not in str(ei.value) and "user:***@127.0.0.1" in str(ei.value)


def test_non_retryable_400_stops_run_with_server_message(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 5)
    with FaultServer(max_context_tokens=100) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"max_tokens": 1000})
        t0 = time.monotonic()
        with pytest.raises(RolloutError, match="max_tokens=1000 is greater than this model's context length"):
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert time.monotonic() - t0 < 10
    assert len(s.log.entries) <= cfg.orchestrator.concurrency  # no retries
    assert not is_done(tmp_path / "run" / "samples")  # not marked finished


def test_backpressure_waits_for_trainer(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 40)
    samples = tmp_path / "run" / "samples"
    with FaultServer() as s:
        # max_ahead >= eval_samples + samples_per_step (8), the config's own floor
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", max_ahead=8, concurrency=4)
        result = {}
        worst = [0]

        def produce():
            result["s"] = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False)

        t = threading.Thread(target=produce)
        t.start()
        consumed = 0
        deadline = time.time() + 60
        while t.is_alive() and time.time() < deadline:
            published = len(sample_ids(tmp_path / "run")) if samples.exists() else 0
            worst[0] = max(worst[0], published - consumed)
            if published - consumed >= 3:  # a slow trainer: takes 3 at a time
                consumed += 3
                write_consumed(samples, consumed)
            time.sleep(0.02)
        t.join(10)
    assert result["s"]["stop_reason"] == "completed" and result["s"]["samples"] == 40
    assert worst[0] <= 8
    assert result["s"]["backpressure_wait_s"] > 0


@pytest.mark.parametrize("kind", ["asyncio", "threading"])
def test_stop_event_stops_cleanly(tmp_path, recon_for, kind):
    write_prompts(tmp_path / "p.jsonl", 200)

    async def go(cfg, recon):
        ev = asyncio.Event() if kind == "asyncio" else threading.Event()
        task = asyncio.ensure_future(
            run_rollouts(cfg, tmp_path / "run", recon, progress=False, stop_event=ev, backpressure=False)
        )
        await asyncio.sleep(0.5)
        if kind == "asyncio":
            ev.set()
        else:  # set from another thread, as a trainer thread would
            threading.Thread(target=ev.set).start()
        return await task

    with FaultServer(Faults(latency_s=0.02)) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", concurrency=2)
        summary = asyncio.run(go(cfg, recon_for(cfg)))
    assert summary["stop_reason"] == "stopped"
    assert 0 < summary["samples"] < 200
    ids = sample_ids(tmp_path / "run")
    assert len(ids) == len(set(ids)) == summary["samples"]
    assert is_done(tmp_path / "run" / "samples")


def test_reward_filter_keeps_only_passing(tmp_path, recon_for):
    # the fake teacher echoes the question, whose last number is the operand i, so the
    # gsm-style scorer sees answer "i"; keep only prompts whose expected answer equals it
    p = tmp_path / "p.jsonl"
    with open(p, "w") as f:
        for i in range(10):
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "prompt": f"What is {i} times 1? Say {i}",
                        "answer": str(i if i % 2 == 0 else i + 100),
                    }
                )
                + "\n"
            )
    mod = tmp_path / "myreward.py"
    mod.write_text(
        "from orchestrator.rewards import extract_final_answer\n"
        "def score(prompt, text):\n"
        "    return float(extract_final_answer(text.replace(' done.', '')) == prompt['answer'])\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with FaultServer() as s:
            cfg = make_cfg(s.base_url, p, reward_fn="myreward:score", min_reward=1.0)
            summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    finally:
        sys.path.remove(str(tmp_path))
    assert sorted(sample_ids(tmp_path / "run")) == [f"q{i}/0" for i in range(0, 10, 2)]
    assert summary["rejections"] == {"low_reward": 5} and summary["reward_pass_rate"] == 0.5
    rec = read_jsonl(tmp_path / "run" / "recording.jsonl")
    assert sorted(r["reward"] for r in rec) == [0.0] * 5 + [1.0] * 5  # rewards are recorded
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "run" / "samples")}
    assert all(s.reward == 1.0 for s in samples.values())


def test_a_reward_function_returning_nan_is_a_reward_error(tmp_path, recon_for):
    """NaN passes any min_reward (every comparison with it is false) and is no JSON number: rejected."""
    write_prompts(tmp_path / "p.jsonl", 3)
    (tmp_path / "nanreward.py").write_text("def score(prompt, text):\n    return float('nan')\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with FaultServer() as s:
            cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", reward_fn="nanreward:score", min_reward=0.5)
            with pytest.raises(RolloutError, match="reward_error=3"):
                rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    finally:
        sys.path.remove(str(tmp_path))
    rejects = read_jsonl(tmp_path / "run" / "rejects.jsonl")
    assert {r["reason"] for r in rejects} == {"reward_error"} and "finite number" in rejects[0]["detail"]


def test_reasoning_gym_source_and_gsm_reward(tmp_path, recon_for):
    from orchestrator.prompts import load_prompts
    from orchestrator.rewards import gsm_symbolic_score

    with FaultServer() as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "unused",
            source={
                "type": "reasoning_gym",
                "dataset": "gsm_symbolic",
                "size": 4,
                "seed": 3,
                "path": None,
                "system_prompt": "Be brief.",
            },
        )
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert sorted(sample_ids(tmp_path / "run")) == [f"gsm_symbolic-3-{i}/0" for i in range(4)]
    assert s.log.entries[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    prompts = list(load_prompts(cfg.orchestrator.source))
    right = f"The answer is <answer>{prompts[0]['answer']}</answer>"
    assert gsm_symbolic_score(prompts[0], right) == 1.0
    assert gsm_symbolic_score(prompts[0], "The answer is <answer>-1</answer>") < 1.0  # rg gives 0.01
    assert gsm_symbolic_score(prompts[0], "no number at all") == 0.0
    assert gsm_symbolic_score(prompts[0], f"so in total {prompts[0]['answer']}") == 1.0
    assert summary["stop_reason"] == "completed"


def test_one_rejected_prompt_mid_run_is_recorded_as_a_rejection(tmp_path, recon_for):
    p = tmp_path / "p.jsonl"
    ids = write_prompts(p, 6)
    with open(p, "a") as f:
        f.write(json.dumps({"id": "huge", "prompt": "word " * 300}) + "\n")
    with FaultServer(max_context_tokens=200) as s:
        # 1 failed pair of 7: within a max_failed_fraction of 0.2 (the default 0.1 would fail the run)
        cfg = make_cfg(s.base_url, p, concurrency=1, max_failed_fraction=0.2)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert sorted(sample_ids(tmp_path / "run")) == sorted(f"{i}/0" for i in ids)
    assert summary["rejections"] == {"request_rejected": 1} and summary["stop_reason"] == "completed"
    assert summary["failed_pairs"] == {"request_rejected": 1}
    rej = read_jsonl(tmp_path / "run" / "rejects.jsonl")
    assert rej[0]["item_id"] == "huge/0" and "maximum context length is 200" in rej[0]["detail"]
    assert sum(1 for e in s.log.entries if e["outcome"] == "http400") == 1  # not retried


@pytest.mark.slow  # spawns a worker process that imports transformers
def test_reconstruct_workers_give_the_same_samples(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 12)
    out = {}
    with FaultServer() as s:
        for workers in (0, 1):
            cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 2}, reconstruct_workers=workers)
            summary = rollout(cfg, tmp_path / f"run{workers}", recon_for(cfg), progress=False, backpressure=False)
            assert summary["stop_reason"] == "completed"
            out[workers] = {
                x.sample_id: (x.prompt_ids, x.completion_ids, x.completion_mask)
                for x in iter_samples(tmp_path / f"run{workers}" / "samples")
            }
    assert len(out[0]) == 24 and out[0] == out[1]


@pytest.mark.slow  # spawns a worker process that imports transformers
def test_reconstruct_workers_count_like_one_process(tmp_path, recon_for):
    """The live pool builds whole batches in workers; their `stats` (samples, rejections by reason) are
    added to the reconstructor's, so the counts equal a build in this process (tool calls that SmolLM2's
    template cannot render are rejected, plain answers become samples)."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    p = tmp_path / "p.jsonl"
    with open(p, "w") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"t{i}", "messages": [{"role": "user", "content": f"w {i}?"}], "tools": tools}))
            f.write("\n")
        for i in range(5):
            f.write(json.dumps({"id": f"plain{i}", "prompt": f"no tools {i}"}) + "\n")
    stats, summaries = {}, {}
    with FaultServer(reasoning=True, tool_calls=True) as s:
        for workers in (0, 1):
            cfg = make_cfg(
                s.base_url,
                p,
                sampling={"n": 2},
                reconstruct_workers=workers,
                reconstruction={"reasoning": "think_tags"},
            )
            recon = recon_for(cfg)
            summaries[workers] = rollout(cfg, tmp_path / f"run{workers}", recon, progress=False, backpressure=False)
            stats[workers] = recon.stats
    want = {"conversations": 18, "samples": 10, "rejected:tool_calls_not_rendered": 8}
    for workers in (0, 1):
        assert {k: stats[workers][k] for k in want} == want, workers
        assert summaries[workers]["rejections"] == {"tool_calls_not_rendered": 8}
    assert {k: v for k, v in stats[1].items() if k in want or k.startswith("rejected:")} == {
        k: v for k, v in stats[0].items() if k in want or k.startswith("rejected:")
    }


def test_tool_calls_and_reasoning_are_recorded_and_reconstructed(tmp_path, recon_for):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    p = tmp_path / "p.jsonl"
    with open(p, "w") as f:
        for i in range(3):
            f.write(
                json.dumps({"id": f"t{i}", "messages": [{"role": "user", "content": f"weather {i}?"}], "tools": tools})
                + "\n"
            )
        f.write(json.dumps({"id": "plain", "prompt": "no tools here"}) + "\n")
    with FaultServer(reasoning=True, tool_calls=True) as s:
        cfg = make_cfg(s.base_url, p, reconstruction={"reasoning": "think_tags"})
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert all(e["body"].get("tools") == tools for e in s.log.entries if "weather" in e["messages"][-1]["content"])
    rec = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "run" / "recording.jsonl")}
    assert rec["t0"]["tools"] == tools and rec["t0"]["finish_reason"] == "tool_calls"
    call = rec["t0"]["response"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert rec["plain"]["response"]["reasoning_content"] == "thinking about sample 0"
    # with reasoning as <think> tags the plain answer becomes a sample; SmolLM2's template
    # cannot render tool calls, so those answers are recorded (paid for, replayable for
    # another student) but rejected with that reason instead of training an empty turn
    samples = {x.sample_id: x for x in iter_samples(tmp_path / "run" / "samples")}
    assert set(samples) == {"plain/0"}
    assert summary["rejections"] == {"tool_calls_not_rendered": 3}
    assert samples["plain/0"].teacher_model == "fault-teacher"


# --- review fixes: failed jobs, bad prompt lines, key before the run dir, fatal 402/quota, resume ---


def test_a_job_that_raises_fails_the_run_without_done(tmp_path, recon_for, monkeypatch):
    import errno

    from orchestrator import recording

    orig = recording.RecordingWriter._write_sync
    calls = {"n": 0}

    def full_disk_once(self, blob):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, blob)

    monkeypatch.setattr(recording.RecordingWriter, "_write_sync", full_disk_once)
    write_prompts(tmp_path / "p.jsonl", 6)
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", concurrency=1)
        with pytest.raises(RolloutError, match="No space left") as ei:
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert isinstance(ei.value.__cause__, OSError) and ei.value.__cause__.errno == errno.ENOSPC
    assert not is_done(tmp_path / "run" / "samples")
    final = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    assert final["final"] and final["stop_reason"] == "error:internal"


def test_bad_prompt_line_is_an_error_before_any_request(tmp_path, recon_for):
    from orchestrator.prompts import PromptSourceError

    p = tmp_path / "p.jsonl"
    write_prompts(p, 50)
    lines = p.read_text().splitlines()
    lines[40] = '{"id": "broken", "prompt": '
    p.write_text("\n".join(lines) + "\n")
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, p)
        with pytest.raises(PromptSourceError, match=r"p\.jsonl:41: not valid JSON"):
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert s.requests == 0 and s.log.entries == []


def test_an_error_while_scheduling_keeps_answers_in_flight(tmp_path, recon_for, monkeypatch):
    from orchestrator import scheduler

    orig = scheduler.Backpressure.wait
    calls = {"n": 0}

    async def wait_then_fail(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            await asyncio.sleep(0.1)  # the first three requests are in flight at the server
            raise RuntimeError("scheduler bug")
        return await orig(self, *a, **kw)

    monkeypatch.setattr(scheduler.Backpressure, "wait", wait_then_fail)
    write_prompts(tmp_path / "p.jsonl", 8)
    with FaultServer(Faults(latency_s=0.4)) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", concurrency=3)
        with pytest.raises(RuntimeError, match="scheduler bug"):
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert len(s.log.ok()) == 3
    assert len(read_jsonl(tmp_path / "run" / "recording.jsonl")) == 3  # paid for, so recorded
    assert not is_done(tmp_path / "run" / "samples")


def test_missing_key_env_var_leaves_a_finished_run_untouched(tmp_path, recon_for, monkeypatch):
    from distill.core.config import ConfigError

    write_prompts(tmp_path / "p.jsonl", 3)
    run_dir = tmp_path / "run"
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl")
        rollout(cfg, run_dir, recon_for(cfg), progress=False, backpressure=False)
        assert is_done(run_dir / "samples")
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        monkeypatch.delenv("DISTILL_TEST_NO_SUCH_KEY", raising=False)
        cfg2 = make_cfg(s.base_url, tmp_path / "p.jsonl", rollout_model={"api_key_var": "DISTILL_TEST_NO_SUCH_KEY"})
        with pytest.raises(ConfigError, match="DISTILL_TEST_NO_SUCH_KEY"):
            rollout(cfg2, run_dir, recon_for(cfg2), progress=False, backpressure=False)
    assert is_done(run_dir / "samples")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "status,code,match", [(402, None, "answered 402"), (429, "insufficient_quota", "insufficient quota")]
)
def test_out_of_credit_stops_the_run_even_after_successes(tmp_path, recon_for, status, code, match):
    write_prompts(tmp_path / "p.jsonl", 8)
    with FaultServer(Faults(error_status=status, error_code=code, error_after=2)) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", concurrency=1)
        with pytest.raises(RolloutError, match=match):
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    # two answers, then refusals only for the (at most two) jobs already queued: not retried, not one per prompt
    assert s.log.outcomes()["ok"] == 2 and s.log.outcomes()[f"http{status}"] <= 2
    assert len(read_jsonl(tmp_path / "run" / "recording.jsonl")) == 2
    assert not is_done(tmp_path / "run" / "samples")


def test_resumed_run_treats_a_4xx_as_a_rejection_not_a_first_request_failure(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 4)
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", budget={"max_requests": 2}, concurrency=1)
        rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    with FaultServer(Faults(error_status=400, error_code="bad_prompt")) as s2:
        # every pair of this run is refused: accepted here only because max_failed_fraction allows all
        cfg = make_cfg(s2.base_url, tmp_path / "p.jsonl", concurrency=1, max_failed_fraction=1.0)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert summary["stop_reason"] == "completed" and summary["rejections"] == {"request_rejected": 2}


def test_partial_answer_keeps_the_good_choices_and_asks_only_for_the_rest(tmp_path, recon_for):
    ids = write_prompts(tmp_path / "p.jsonl", 2)
    faults = Faults(bad_choices={1: "empty", 2: "null_message", 3: "malformed"})  # the first answer only
    with FaultServer(faults) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 4}, concurrency=1)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    # p0 asked for 4, got 1 usable: asked again for its 3 missing indices only; then p1
    asked = Counter((e["messages"][-1]["content"][:17], e["n"]) for e in s.log.entries)
    assert asked == {("Question number 0", 4): 1, ("Question number 0", 3): 1, ("Question number 1", 4): 1}
    assert s.log.entries[0]["bad"] == {1: "empty", 2: "null_message", 3: "malformed"}
    rec = read_jsonl(tmp_path / "run" / "recording.jsonl")
    assert Counter((r["prompt_id"], r["sample_index"]) for r in rec) == {(p, i): 1 for p in ids for i in range(4)}
    assert summary["unusable_choices"] == {"empty_content": 1, "null_message": 1, "malformed_choice": 1}
    assert summary["samples"] == 8 and summary["stop_reason"] == "completed" and summary["failed_pairs"] == {}
    assert is_done(tmp_path / "run" / "samples")


def test_a_choice_left_out_is_asked_for_again(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 1)
    with FaultServer(Faults(bad_choices={1: "missing"})) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 3, "seed": 10})
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert [e["n"] for e in s.log.entries] == [3, 1]
    assert s.log.entries[1]["body"]["seed"] == 11  # sample index 1's own seed
    rec = read_jsonl(tmp_path / "run" / "recording.jsonl")
    assert sorted(r["sample_index"] for r in rec) == [0, 1, 2]
    assert summary["unusable_choices"] == {"missing_choice": 1} and summary["samples"] == 3


def test_unusable_choices_are_asked_again_at_most_max_attempts_times_then_retried_on_rerun(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 3)
    with FaultServer(Faults(bad_choices={1: "empty"}, bad_choice_requests=100)) as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            sampling={"n": 2},
            concurrency=1,
            retry={"max_attempts": 1},
            max_failed_fraction=0.5,
        )
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert len(s.log.entries) == 3  # one round each, no second
    assert summary["failed_pairs"] == {"empty_content": 3} and summary["samples"] == 3
    assert sorted(r["item_id"] for r in read_jsonl(tmp_path / "run" / "rejects.jsonl")) == ["p0/1", "p1/1", "p2/1"]
    # 3 of 6 pairs failed: within 0.5, so the run completed; a rerun asks for exactly the failed ones
    assert is_done(tmp_path / "run" / "samples")
    with FaultServer() as s2:
        cfg = make_cfg(s2.base_url, tmp_path / "p.jsonl", sampling={"n": 2}, concurrency=1)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert [e["n"] for e in s2.log.entries] == [1, 1, 1]
    assert sorted(sample_ids(tmp_path / "run")) == sorted(f"p{i}/{k}" for i in range(3) for k in range(2))
    assert summary["stop_reason"] == "completed" and is_done(tmp_path / "run" / "samples")


def test_too_many_failed_pairs_stop_the_run_early_and_a_rerun_asks_only_for_them(tmp_path, recon_for):
    ids = write_prompts(tmp_path / "p.jsonl", 10)
    retry = {"max_attempts": 2}
    with FaultServer(Faults(error_status=500, error_after=3)) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", concurrency=1, retry=retry, max_failed_fraction=0.5)
        with pytest.raises(
            RolloutError,
            match=r"failed for good on 6 \(prompt, sample\) pairs, more than "
            r"orchestrator.max_failed_fraction = 0.5 of the 10",
        ) as ei:
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert "http_500=6" in str(ei.value) and "rerun" in str(ei.value)
    # stopped at the 6th failed pair (2 attempts each), not after all 7; one attempt of the next prompt may be
    # in flight already (the scheduler queues 2 * concurrency jobs)
    assert s.log.outcomes()["ok"] == 3 and 12 <= s.log.outcomes()["http500"] <= 13
    assert len(read_jsonl(tmp_path / "run" / "recording.jsonl")) == 3
    assert not is_done(tmp_path / "run" / "samples")
    final = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    assert final["stop_reason"] == "error:too_many_failures" and final["failed_pairs"] == {"http_500": 6}
    with FaultServer() as s2:
        cfg = make_cfg(s2.base_url, tmp_path / "p.jsonl", concurrency=1)
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert len(s2.log.entries) == 7 and summary["stop_reason"] == "completed"
    assert sorted(sample_ids(tmp_path / "run")) == sorted(f"{p}/0" for p in ids)


def test_a_streak_of_failed_requests_stops_the_run(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 40)
    with FaultServer(Faults(error_status=503, error_after=2)) as s:
        cfg = make_cfg(
            s.base_url, tmp_path / "p.jsonl", concurrency=1, retry={"max_attempts": 2}, max_failed_fraction=1.0
        )
        with pytest.raises(RolloutError, match="10 teacher requests in a row all failed after every retry"):
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert s.log.outcomes()["ok"] == 2 and 20 <= s.log.outcomes()["http503"] <= 21  # + one queued attempt
    assert not is_done(tmp_path / "run" / "samples")


def test_the_failure_message_counts_the_pairs_that_failed_while_the_run_stopped(tmp_path, recon_for):
    """Requests in flight when the failures stopped the run fail too: the message gives the final counts,
    the ones rejects.jsonl and the metrics hold."""
    write_prompts(tmp_path / "p.jsonl", 40)
    with FaultServer(Faults(error_status=503, latency_s=0.05)) as s:
        cfg = make_cfg(
            s.base_url, tmp_path / "p.jsonl", concurrency=4, retry={"max_attempts": 1}, max_failed_fraction=0.01
        )
        with pytest.raises(RolloutError) as ei:
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    final = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    failed = sum(final["failed_pairs"].values())
    assert failed == len(read_jsonl(tmp_path / "run" / "rejects.jsonl")) > 1
    assert f"http_503={failed}" in str(ei.value), (failed, str(ei.value))


def test_no_sample_at_all_is_a_failure(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 3)
    with FaultServer() as s:  # every answer is cut at 2 tokens: dropped as truncated
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"max_tokens": 2})
        with pytest.raises(
            RolloutError, match=r"no sample was produced from the 3 prompt\(s\) started.*truncated=3"
        ) as ei:
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    # the setting that lets the reason through is named
    assert "(truncated: raise orchestrator.sampling.max_tokens, or set orchestrator.reconstruction.truncated" in str(
        ei.value
    )
    # and the latest rejection's detail is quoted (the last line of rejects.jsonl)
    last = read_jsonl(tmp_path / "run" / "rejects.jsonl")[-1]
    assert f"rejects.jsonl; the last: truncated: {last['detail']}). Nothing was marked done" in str(ei.value)
    assert len(read_jsonl(tmp_path / "run" / "recording.jsonl")) == 3  # the answers are kept
    assert not is_done(tmp_path / "run" / "samples")
    assert read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]["stop_reason"] == "error:no_samples"


def test_a_budget_too_small_for_one_request_names_the_budget_and_the_fix(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 5)
    with FaultServer() as s:  # one request's estimate (64 x 2 completion tokens at 10 per 1k) costs 1.28 > 1.0
        budget = {"max_cost": 1.0, "cost_per_1k_completion": 10.0}
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", budget=budget, sampling={"max_tokens": 64, "n": 2})
        with pytest.raises(RolloutError) as ei:
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert s.log.entries == []  # nothing was sent
    msg = str(ei.value)
    assert "stop: budget:max_cost" in msg and "orchestrator.budget.max_cost stopped the run before any sample" in msg
    assert "orchestrator.sampling.max_tokens" in msg and "Fix: raise that budget" in msg


def test_requests_stopped_before_they_were_sent_are_not_counted(tmp_path, recon_for):
    """A refused key stops the run while other requests wait for a slot: those were never sent, so the
    request count (what max_requests limits) is what the server saw."""
    write_prompts(tmp_path / "p.jsonl", 12)
    with FaultServer(Faults(error_status=401, latency_s=0.0)) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", concurrency=2, max_ahead=12)
        with pytest.raises(RolloutError, match="401"):
            rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    final = read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]
    assert final["requests"] == len(s.log.entries) >= 1, (final["requests"], len(s.log.entries))


def test_an_endpoint_without_a_models_list_is_used(tmp_path, recon_for):
    ids = write_prompts(tmp_path / "p.jsonl", 3)
    with FaultServer(list_models=False) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl")
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert summary["stop_reason"] == "completed" and sorted(sample_ids(tmp_path / "run")) == [f"{i}/0" for i in ids]


def test_reasoning_sent_as_thinking_content_parts_is_recorded_and_trained(tmp_path, recon_for):
    """Mistral's API answers its reasoning models with content parts, the reasoning in a part of type
    "thinking" (orchestrator/content_parts.py; the project's fault server speaks that shape, which no
    server here does). The recording keeps it as reasoning_content, and think_tags trains it. Before,
    the client kept the text parts only: the reasoning paid for was lost."""
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "q", "prompt": "2+2?"}) + "\n")
    with FaultServer(reasoning="parts") as s:
        cfg = make_cfg(s.base_url, p, reconstruction={"reasoning": "think_tags"})
        recon = recon_for(cfg)
        summary = rollout(cfg, tmp_path / "run", recon, progress=False, backpressure=False)
    (rec,) = read_jsonl(tmp_path / "run" / "recording.jsonl")
    response = rec["response"]
    assert response["reasoning_content"] == "thinking about sample 0"
    assert isinstance(response["content"], str) and response["content"]
    assert summary["samples"] == 1 and recon.stats["samples"] == 1
    (sample,) = iter_samples(tmp_path / "run" / "samples")
    trained = [i for i, m in zip(sample.completion_ids, sample.completion_mask) if m]
    text = recon.tokenizer.decode(trained)
    assert text.startswith("<think>\nthinking about sample 0\n</think>\n\n" + response["content"])


def test_openings_kept_as_untrained_context_are_named_in_the_summary(tmp_path, capfd):
    """A prompt opening with a few-shot answer, for a student whose template gives no prompt before a first message
    (Tulu 3 / OLMo 2's): the answer is kept as untrained context, and the run's summary line says how many."""
    from support.reconstruct_helpers import tokenizer_with

    from orchestrator.rollout_metrics import format_summary

    p = tmp_path / "p.jsonl"
    greeting = {"role": "assistant", "content": "Hello! Ask me anything."}
    rows = [{"id": f"g{i}", "messages": [greeting, {"role": "user", "content": f"{i}+{i}?"}]} for i in range(3)]
    rows.append({"id": "plain", "prompt": "1+1?"})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, p, sampling={"n": 2})
        recon = Reconstructor(tokenizer_with("olmo2_tulu"), cfg.orchestrator.reconstruction)
        summary = rollout(cfg, tmp_path / "run", recon, progress=False, backpressure=False)
    assert summary["stop_reason"] == "completed" and summary["samples"] == 8
    assert summary["reconstruction_notes"] == {"opening_turns_as_context": 6}
    line = "conversations whose opening assistant message was kept as untrained context"
    assert line in format_summary(summary) and line in capfd.readouterr().err
    assert f"{line} (the student's template gives no prompt before a first message" in format_summary(summary)
    assert read_jsonl(tmp_path / "run" / "orchestrator_metrics.jsonl")[-1]["reconstruction_notes"] == {
        "opening_turns_as_context": 6
    }
