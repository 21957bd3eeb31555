"""Recording durability and resume: torn last lines, kill -9 mid-run, exactly-once after a rerun."""

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

from distill.core.config import load_config
from distill.core.contract import iter_samples, is_done
from orchestrator.reconstruct import Reconstructor
from orchestrator.recording import RecordingError, RecordingWriter, load_recording, make_record, redact
from orchestrator.scheduler import rollout
from support.fault_server import FaultServer, Faults, write_prompts

ROOT = Path(__file__).resolve().parents[2]


def rec(pid: str, i: int, shared: int = 1, completion: int = 10) -> dict:
    return make_record(
        prompt_id=pid,
        sample_index=i,
        messages=[{"role": "user", "content": "q"}],
        tools=None,
        response={"role": "assistant", "content": "a", "reasoning_content": None, "tool_calls": None},
        finish_reason="stop",
        model="m",
        endpoint="http://127.0.0.1:1/v1",
        sampling={"temperature": 0.5},
        usage={"prompt_tokens": 4, "completion_tokens": completion},
        usage_shared_by=shared,
        t_start=1.0,
        t_end=2.0,
        reward=None,
        request_id="r",
    )


def test_writer_appends_are_durable_and_grouped(tmp_path):
    p = tmp_path / "recording.jsonl"

    async def go():
        w = RecordingWriter(p)
        await asyncio.gather(*(w.append([rec(f"p{i}", 0), rec(f"p{i}", 1)]) for i in range(50)))
        await w.aclose()
        return w

    w = asyncio.run(go())
    lines = p.read_text().splitlines()
    assert len(lines) == 100 and w.written == 100
    assert 1 <= w.fsyncs < 50  # concurrent appends shared fsyncs
    loaded = load_recording(p)
    assert len(loaded.records) == 100 and not loaded.torn_tail


def test_a_lone_surrogate_from_the_teacher_is_recorded_losslessly(tmp_path):
    # json.loads('"\\ud83d"') is a lone surrogate (half an emoji), which UTF-8 cannot hold:
    # the recording keeps it as its JSON escape and reads back the same text.
    p = tmp_path / "recording.jsonl"
    r = rec("p", 0)
    r["response"]["content"] = json.loads('"cut emoji \\ud83d here"')
    RecordingWriter(p).append_sync([r, rec("p", 1)])
    assert "\\ud83d" in p.read_text(encoding="utf-8")
    loaded = load_recording(p)
    assert [x["response"]["content"] for x in loaded.records.values()] == ["cut emoji \ud83d here", "a"]


def test_usage_shared_by_sums_to_request_totals(tmp_path):
    p = tmp_path / "recording.jsonl"
    w = RecordingWriter(p)
    w.append_sync([rec("a", i, shared=3, completion=30) for i in range(3)] + [rec("b", 0, completion=7)])
    loaded = load_recording(p)
    assert loaded.requests == pytest.approx(2) and loaded.completion_tokens == pytest.approx(37)
    assert loaded.prompt_tokens == pytest.approx(8)


def test_torn_last_line_is_reported_saved_and_cut(tmp_path, capsys):
    p = tmp_path / "recording.jsonl"
    RecordingWriter(p).append_sync([rec("a", 0), rec("b", 0)])
    good = p.read_bytes()
    with open(p, "ab") as f:
        f.write(b'{"v":1,"prompt_id":"c","sample_ind')
    loaded = load_recording(p)
    assert set(loaded.records) == {("a", 0), ("b", 0)}
    assert loaded.torn_tail.startswith(b'{"v":1,"prompt_id":"c"')
    assert "half-written" in capsys.readouterr().err
    assert p.read_bytes() == good  # cut back to the last full line, so appends start clean
    assert (tmp_path / f"recording.jsonl.torn-{len(good)}").read_bytes() == loaded.torn_tail
    RecordingWriter(p).append_sync([rec("c", 0)])
    assert set(load_recording(p).records) == {("a", 0), ("b", 0), ("c", 0)}


def test_a_key_in_an_old_recordings_endpoint_is_masked_as_it_is_read(tmp_path):
    # Recordings written before endpoints were masked may hold a key in the URL; what is read
    # from them (sample meta on resume) must not carry it on.
    p = tmp_path / "recording.jsonl"
    old = rec("p0", 0)
    old["endpoint"] = "https://user:sk-live-0123456789abcdef@h/v1?key=sk-0123456789abcdefghij"
    p.write_text(json.dumps(old) + "\n")
    got = load_recording(p).records[("p0", 0)]["endpoint"]
    assert "sk-" not in got and got.startswith("https://") and "h/v1" in got


def test_bad_line_in_the_middle_is_an_error_with_file_and_line(tmp_path):
    p = tmp_path / "recording.jsonl"
    p.write_text(json.dumps(rec("a", 0)) + "\nnot json\n" + json.dumps(rec("b", 0)) + "\n")
    with pytest.raises(RecordingError, match=r"recording.jsonl:2: not a valid recording line"):
        load_recording(p)


def test_duplicate_records_count_once(tmp_path):
    p = tmp_path / "recording.jsonl"
    RecordingWriter(p).append_sync([rec("a", 0), rec("a", 0)])
    loaded = load_recording(p)
    assert len(loaded.records) == 1 and loaded.duplicates == 1


def test_redact_secret_looking_keys():
    d = redact({"temperature": 1, "max_tokens": 5, "api_key": "x", "extra_body": {"Authorization": "y", "k": 1}})
    assert d == {
        "temperature": 1,
        "max_tokens": 5,
        "api_key": "<redacted>",
        "extra_body": {"Authorization": "<redacted>", "k": 1},
    }


DRIVER = textwrap.dedent("""
    import sys
    from distill.core.config import load_config
    from orchestrator.reconstruct import Reconstructor
    from orchestrator.scheduler import rollout
    from distill.core.student import load_tokenizer, tokenizer_only_dir
    cfg = load_config(sys.argv[1])
    rec = Reconstructor(load_tokenizer(tokenizer_only_dir()), cfg.orchestrator.reconstruction)
    print("READY", flush=True)
    rollout(cfg, cfg.output_dir, rec, progress=False, backpressure=False)
""")


def _config_file(tmp_path: Path, base_url: str, prompts: Path) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        output_dir = "{tmp_path / "run"}"
        [orchestrator]
        concurrency = 2
        samples_per_shard = 5
        [orchestrator.rollout_model]
        base_url = "{base_url}"
        model = "fault-teacher"
        [orchestrator.sampling]
        n = 2
        [orchestrator.source]
        type = "jsonl"
        path = "{prompts}"
        [orchestrator.retry]
        initial_backoff = 0.001
        max_backoff = 0.01
        [trainer]
        seq_len = 512
    """)
    )
    return cfg


def _user_text_to_id(prompts: Path) -> dict[str, str]:
    out = {}
    for line in prompts.read_text().splitlines():
        d = json.loads(line)
        out[d["prompt"]] = d["id"]
    return out


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_exactly_once(tmp_path, smol_tokenizer):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 60)
    by_text = _user_text_to_id(prompts)
    run_dir = tmp_path / "run"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with FaultServer(Faults(latency_s=0.03)) as s:
        cfg_path = _config_file(tmp_path, s.base_url, prompts)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, str(script), str(cfg_path)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        recording = run_dir / "recording.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if recording.exists() and recording.read_bytes().count(b"\n") >= 30:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        first_requests = len(s.log.entries)
        s.log.entries.clear()

        # what survived the kill
        before = load_recording(recording, repair=False)
        recorded = set(before.records)
        published_before = [x.sample_id for x in iter_samples(run_dir / "samples")]
        assert 30 <= len(recorded) < 120 and not is_done(run_dir / "samples")
        assert first_requests >= len(recorded) // 2
        # simulate the crash landing mid-write: a torn last line
        with open(recording, "ab") as f:
            f.write(b'{"v": 1, "prompt_id": "p59", "sample_index": 0, "messa')

        cfg = load_config(cfg_path)
        summary = rollout(
            cfg,
            run_dir,
            Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction),
            progress=False,
            backpressure=False,
        )

    # exactly once, all of them
    got = [x.sample_id for x in iter_samples(run_dir / "samples")]
    assert sorted(got) == sorted(f"{p}/{i}" for p in ids for i in range(2))
    assert is_done(run_dir / "samples") and summary["stop_reason"] == "completed"
    assert summary["torn_tail_bytes"] > 0
    # recorded-but-unpublished samples were rebuilt from the recording, not requested
    assert summary["rebuilt_from_recording"] == len(recorded) - len(published_before)
    # recorded (prompt, sample) pairs were not requested again
    asked = Counter()
    for e in s.log.ok():
        pid = by_text[e["messages"][-1]["content"]]
        asked[pid] += e["n"] or 1
    for pid in ids:
        have = sum((pid, i) in recorded for i in range(2))
        assert asked[pid] == 2 - have, (pid, asked[pid], have)
    rec_all = [json.loads(x) for x in recording.read_text().splitlines()]
    assert Counter((r["prompt_id"], r["sample_index"]) for r in rec_all) == {(p, i): 1 for p in ids for i in range(2)}


def test_redact_walks_nested_dicts_and_lists_and_keeps_sampling_names():
    sent = {
        "max_tokens": 5,
        "min_tokens": 1,
        "max_new_tokens": 9,
        "skip_special_tokens": True,
        "stop_token_ids": [2],
        "return_token_ids": True,
        "max_completion_tokens": 7,
        "extra_body": {
            "provider": {"api_key": "sk-nested", "order": ["a"]},
            "routes": [{"name": "r", "accessToken": "sk-list"}, {"x-api-key": "sk-dash"}],
            "Ocp-Apim-Subscription-Key": "sk-azure",
            "apikey": "sk-flat",
            "token": "sk-tok",
            "extra_headers": {"X-Team": "sk-hdr"},
        },
    }
    rec = make_record(
        prompt_id="p",
        sample_index=0,
        messages=[],
        tools=None,
        response={},
        finish_reason="stop",
        model="m",
        endpoint="e",
        sampling=sent,
        usage={},
        usage_shared_by=1,
        t_start=0,
        t_end=0,
        reward=None,
        request_id=None,
    )
    out = json.dumps(rec)
    assert "sk-" not in out
    s = rec["sampling"]
    assert {
        k: s[k]
        for k in (
            "max_tokens",
            "min_tokens",
            "max_new_tokens",
            "skip_special_tokens",
            "stop_token_ids",
            "return_token_ids",
            "max_completion_tokens",
        )
    } == {
        "max_tokens": 5,
        "min_tokens": 1,
        "max_new_tokens": 9,
        "skip_special_tokens": True,
        "stop_token_ids": [2],
        "return_token_ids": True,
        "max_completion_tokens": 7,
    }
    assert s["extra_body"]["provider"] == {"api_key": "<redacted>", "order": ["a"]}
    assert s["extra_body"]["routes"] == [{"name": "r", "accessToken": "<redacted>"}, {"x-api-key": "<redacted>"}]
    assert s["extra_body"]["extra_headers"] == {"X-Team": "<redacted>"}
    assert sent["extra_body"]["provider"]["api_key"] == "sk-nested"  # the original is not modified
