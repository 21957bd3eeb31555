"""The content-keyed request cache (orchestrator/cache.py): runs against the FaultServer, whose request log
counts every chat request and /v1/models call the teacher saw, with the real SmolLM2 Reconstructor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.helpers import read_jsonl
from support.rollout_helpers import make_cfg, sample_ids

from distill.core.config import load_config
from distill.core.contract import iter_samples
from orchestrator.cache import AnswerCache, cache_key
from orchestrator.recording import load_recording
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import replay
from orchestrator.scheduler import rollout
from support.fault_server import FaultServer, write_prompts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def recon_for(smol_tokenizer):
    return lambda cfg: Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)


def _run(cfg, run_dir, recon_for):
    return rollout(cfg, run_dir, recon_for(cfg), progress=False, backpressure=False)


def _answers(run_dir: Path) -> dict[tuple[str, int], dict]:
    return {(r["prompt_id"], r["sample_index"]): r["response"] for r in read_jsonl(run_dir / "recording.jsonl")}


def _tokens(run_dir: Path) -> dict[str, list[int]]:
    return {s.sample_id: list(s.completion_ids) for s in iter_samples(run_dir / "samples")}


def test_second_run_is_answered_from_the_cache_without_any_request(tmp_path, recon_for):
    ids = write_prompts(tmp_path / "p.jsonl", 5)
    cache = str(tmp_path / "cache")
    sampling = {"n": 2, "seed": 3, "max_tokens": 32, "temperature": 0.7}
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling=sampling, cache_dir=cache)
        first = _run(cfg, tmp_path / "a", recon_for)
        paid = len(s.log.entries)
        models_seen = s.model_requests
        second = _run(cfg, tmp_path / "b", recon_for)
        assert len(s.log.entries) == paid == 5  # one n=2 request a prompt, then none at all
        assert s.model_requests == models_seen  # not even the endpoint check: nothing was to be sent
    assert first["cache_misses"] == 10 and first["cache_hits"] == 0 and first["cache_writes"] == 10
    assert second["cache_hits"] == 10 and second["cache_misses"] == 0 and second["cache_corrupt"] == 0
    assert second["requests"] == 0 and second["completion_tokens"] == 0 and second["cost"] == 0  # budget not charged
    assert second["samples"] == 10 and second["stop_reason"] == "completed"
    assert _answers(tmp_path / "a") == _answers(tmp_path / "b")  # identical samples
    assert _tokens(tmp_path / "a") == _tokens(tmp_path / "b")
    assert sorted(sample_ids(tmp_path / "b")) == sorted(f"{p}/{i}" for p in ids for i in range(2))
    recs = read_jsonl(tmp_path / "b" / "recording.jsonl")
    assert {r["provenance"] for r in recs} == {"cache"}
    assert all(r["usage"] == {"prompt_tokens": 0, "completion_tokens": 0} for r in recs)
    assert sum(r["cached_usage"]["completion_tokens"] for r in recs) == first["completion_tokens"]
    # a recording with cache hits replays offline like any other
    rcfg = load_config(
        None,
        {
            "orchestrator": {"source": {"type": "replay", "path": str(tmp_path / "b" / "recording.jsonl")}},
            "trainer": {"seq_len": 512},
        },
    )
    replay(rcfg, tmp_path / "replayed", recon_for(rcfg), progress=False)
    assert _tokens(tmp_path / "replayed") == _tokens(tmp_path / "b")
    # the recording, not the cache, is the run's truth: with the cache gone a rerun resumes from it alone
    # and, as the hits cost nothing, the resumed budget counts no request or token
    import shutil

    shutil.rmtree(cache)
    loaded = load_recording(tmp_path / "b" / "recording.jsonl")
    assert len(loaded.records) == 10 and loaded.requests == 0 and loaded.completion_tokens == 0
    cfg2 = make_cfg("http://127.0.0.1:9/v1", tmp_path / "p.jsonl", sampling=sampling, cache_dir=cache)
    third = _run(cfg2, tmp_path / "b", recon_for)  # no teacher at that address: nothing is sent
    assert third["requests"] == 0 and third["samples"] == 10


def test_more_samples_ask_only_for_the_missing_indices(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 3)
    cache = str(tmp_path / "cache")
    with FaultServer() as s:
        cfg2 = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 2, "seed": 10}, cache_dir=cache)
        _run(cfg2, tmp_path / "a", recon_for)
        before = len(s.log.entries)
        cfg4 = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 4, "seed": 10}, cache_dir=cache)
        summary = _run(cfg4, tmp_path / "b", recon_for)
        later = s.log.entries[before:]
    assert len(later) == 3  # one request per prompt, for the two missing samples only
    assert all(e["n"] == 2 and e["body"]["seed"] == 12 for e in later)  # the seed offset by the first index
    assert summary["cache_hits"] == 6 and summary["cache_misses"] == 6
    a, b = _answers(tmp_path / "a"), _answers(tmp_path / "b")
    assert all(b[k] == v for k, v in a.items())  # indices 0, 1: the cached answers
    assert len(b) == 12 and len({json.dumps(v) for v in b.values()}) == 12
    provenance = {
        (r["prompt_id"], r["sample_index"]): r.get("provenance") for r in read_jsonl(tmp_path / "b/recording.jsonl")
    }
    assert {k[1] for k, v in provenance.items() if v == "cache"} == {0, 1}


@pytest.mark.parametrize(
    "change",
    [
        {"sampling": {"n": 1, "seed": 1, "temperature": 0.9}},
        {"sampling": {"n": 1, "seed": 2, "temperature": 0.5}},
        {"sampling": {"n": 1, "seed": 1, "temperature": 0.5, "extra_body": {"top_k": 5}}},
    ],
)
def test_a_changed_sampling_parameter_is_a_miss(tmp_path, recon_for, change):
    write_prompts(tmp_path / "p.jsonl", 3)
    cache = str(tmp_path / "cache")
    with FaultServer() as s:
        cfg = make_cfg(
            s.base_url, tmp_path / "p.jsonl", sampling={"n": 1, "seed": 1, "temperature": 0.5}, cache_dir=cache
        )
        _run(cfg, tmp_path / "a", recon_for)
        other = make_cfg(s.base_url, tmp_path / "p.jsonl", cache_dir=cache, **change)
        summary = _run(other, tmp_path / "b", recon_for)
        assert len(s.log.entries) == 6  # asked again: three prompts, twice
    assert summary["cache_hits"] == 0 and summary["cache_misses"] == 3


def test_a_corrupt_entry_is_counted_asked_again_and_rewritten(tmp_path, recon_for):
    write_prompts(tmp_path / "p.jsonl", 4)
    cache = tmp_path / "cache"
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"seed": 4}, cache_dir=str(cache))
        _run(cfg, tmp_path / "a", recon_for)
        entries = sorted(cache.rglob("*.json"))
        assert len(entries) == 4
        entries[0].write_bytes(entries[0].read_bytes()[:40])  # torn
        entries[1].write_text('{"v": 1, "key": "not this one", "response": {"role": "assistant"}}')
        summary = _run(cfg, tmp_path / "b", recon_for)
        assert len(s.log.entries) == 6  # 4, then the two bad entries asked again
    assert summary["cache_corrupt"] == 2 and summary["cache_hits"] == 2 and summary["cache_misses"] == 2
    assert summary["samples"] == 4
    assert all(AnswerCache(cache).get(p.stem) is not None for p in entries)  # rewritten whole


def test_no_secret_reaches_a_cache_file(tmp_path, recon_for, monkeypatch):
    write_prompts(tmp_path / "p.jsonl", 2)
    cache = tmp_path / "cache"
    key = "sk-test-" + "a1B2c3D4" * 4
    monkeypatch.setenv("TEACHER_KEY", key)
    with FaultServer(api_key=key) as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            rollout_model={"api_key_var": "TEACHER_KEY", "headers": {"X-Custom-Auth": "hdr-" + "Zq9" * 8}},
            sampling={"extra_body": {"api_key": "sk-inbody-" + "x" * 24, "top_k": 3}},
            cache_dir=str(cache),
        )
        _run(cfg, tmp_path / "a", recon_for)
    blobs = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
    assert len(list(cache.rglob("*.json"))) == 2
    for secret in (key, "Zq9" * 8, "x" * 24):
        assert secret.encode() not in blobs
    e = json.loads(next(cache.rglob("*.json")).read_text())
    assert e["sampling"]["extra_body"]["top_k"] == 3  # the rest of the request is kept


WRITER = """
import sys
from pathlib import Path
from orchestrator.cache import AnswerCache
c = AnswerCache(Path(sys.argv[1]))
tag, rounds = sys.argv[2], int(sys.argv[3])
big = "x" * 200_000
for k in range(rounds):
    c.store([{"request_hash": f"h{j}", "sample_index": 0, "usage": {}, "usage_shared_by": 1,
              "response": {"role": "assistant", "content": f"{tag} {k} {big}"}} for j in range(4)])
print(c.writes, c.write_errors)
"""


def _writer(cache: Path, tag: str, rounds: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cache), tag, str(rounds)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_concurrent_writers_of_the_same_keys_leave_whole_entries(tmp_path):
    cache = tmp_path / "cache"
    procs = [_writer(cache, tag, 40) for tag in ("one", "two")]
    reader = AnswerCache(cache)
    seen = 0
    while any(p.poll() is None for p in procs):
        for j in range(4):
            e = reader.get(cache_key(f"h{j}", 0))
            seen += e is not None
    outs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs == [["160", "0"], ["160", "0"]]
    assert reader.corrupt == 0 and seen > 0  # read while both were writing: never half an entry
    texts = {reader.get(cache_key(f"h{j}", 0))["response"]["content"].split()[0] for j in range(4)}
    assert texts <= {"one", "two"} and reader.corrupt == 0


def test_kill_9_mid_write_leaves_no_torn_entry(tmp_path):
    cache = tmp_path / "cache"
    p = _writer(cache, "w", 100_000)
    deadline = time.time() + 30
    while not list(cache.rglob("*.json")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    reader = AnswerCache(cache)
    found = [reader.get(cache_key(f"h{j}", 0)) for j in range(4)]
    assert reader.corrupt == 0 and sum(e is not None for e in found) >= 1
    # an abandoned temporary file is no entry: it is never read
    assert all(f.name.endswith(".json") and not f.name.startswith(".") for f in cache.rglob("*.json"))


@pytest.mark.slow
def test_real_llama_cpp_teacher_then_no_teacher_at_all(tmp_path, recon_for):
    """Run 1 against the real llama-cpp-python server fills the cache; run 2, with the server stopped and
    base_url pointing at it still, is answered entirely from the cache: same answers, same tokens."""
    from support.llamacpp_server import ALIAS, llama_cpp_server

    write_prompts(tmp_path / "p.jsonl", 3)
    cache = str(tmp_path / "cache")
    sampling = {"n": 2, "seed": 7, "max_tokens": 16, "temperature": 0.8}
    with llama_cpp_server() as base_url:
        cfg = make_cfg(
            base_url, tmp_path / "p.jsonl", sampling=sampling, cache_dir=cache, reconstruction={"truncated": "keep"}
        )
        cfg.orchestrator.rollout_model.model = ALIAS
        first = _run(cfg, tmp_path / "a", recon_for)
    assert first["cache_misses"] == 6 and first["cache_writes"] == 6 and first["samples"] == 6
    second = _run(cfg, tmp_path / "b", recon_for)  # the server is gone: any request would fail
    assert second["cache_hits"] == 6 and second["requests"] == 0 and second["samples"] == 6
    assert _answers(tmp_path / "a") == _answers(tmp_path / "b")
    assert _tokens(tmp_path / "a") == _tokens(tmp_path / "b")


def test_preflight_refuses_a_cache_dir_that_is_a_file(tmp_path):
    from distill.preflight import PreflightError, check_cache_dir

    (tmp_path / "afile").write_text("x")
    assert check_cache_dir(str(tmp_path / "new" / "cache")) == []  # made on the first write
    with pytest.raises(PreflightError, match=r"orchestrator.cache_dir: .*afile is a file, not a folder"):
        from distill.preflight import preflight

        cfg = load_config(
            None, {"output_dir": str(tmp_path / "run"), "orchestrator": {"cache_dir": str(tmp_path / "afile")}}
        )
        preflight(cfg, "rollout")
