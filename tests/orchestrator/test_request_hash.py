"""Edited prompts are not answered from stale recordings: request_hash on every record, checked on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import read_jsonl
from support.rollout_helpers import make_cfg, sample_ids

from distill.core.config import load_config
from distill.core.contract import iter_samples
from orchestrator.recording import load_recording
from orchestrator.replay import replay
from orchestrator.request_hash import base_sampling, request_hash, what_changed
from orchestrator.scheduler import RolloutError, rollout
from support.fault_server import FaultServer, write_prompts


@pytest.fixture
def recon_for(smol_tokenizer):
    from orchestrator.reconstruct import Reconstructor

    return lambda cfg: Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)


MSGS = [{"role": "user", "content": "What is 2 plus 2?"}]


def test_hash_is_canonical_and_covers_what_changes_the_answer():
    h = request_hash("m", MSGS, None, {"temperature": 0.7, "max_tokens": 64})
    assert h == request_hash(
        "m", [{"content": "What is 2 plus 2?", "role": "user"}], None, {"max_tokens": 64, "temperature": 0.7}
    )  # key order does not matter
    assert h == request_hash("m", MSGS, [], {"temperature": 0.7, "max_tokens": 64})  # no tools == empty tools
    assert (
        len(
            {
                h,
                request_hash("m2", MSGS, None, {"temperature": 0.7, "max_tokens": 64}),
                request_hash(
                    "m",
                    [{"role": "user", "content": "What is 2 plus 3?"}],
                    None,
                    {"temperature": 0.7, "max_tokens": 64},
                ),
                request_hash(
                    "m", MSGS, [{"type": "function", "function": {"name": "f"}}], {"temperature": 0.7, "max_tokens": 64}
                ),
                request_hash("m", MSGS, None, {"temperature": 0.8, "max_tokens": 64}),
                request_hash("m", MSGS, None, base_sampling({"temperature": 0.7, "max_tokens": 64}, {"top_k": 5})),
            }
        )
        == 6
    )
    # n follows from which indices are missing, and a secret in extra_body is not part of the prompt
    assert base_sampling({"n": 4, "temperature": 0.7, "max_tokens": 64}, {}) == {"temperature": 0.7, "max_tokens": 64}
    assert request_hash("m", MSGS, None, base_sampling({}, {"api_key": "sk-one"})) == request_hash(
        "m", MSGS, None, base_sampling({}, {"api_key": "sk-two"})
    )


def _edit_prompt(path: Path, pid: str, text: str) -> None:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for d in lines:
        if d["id"] == pid:
            d["prompt"] = text
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))


def _run(server, prompts, run, recon_for, **orch):
    cfg = make_cfg(server.base_url, prompts, sampling={"n": 2, "max_tokens": 32}, **orch)
    return rollout(cfg, run, recon_for(cfg), progress=False, backpressure=False)


def test_edited_prompt_is_an_error_then_rerequested_by_option(tmp_path, recon_for):
    prompts, run = tmp_path / "p.jsonl", tmp_path / "run"
    ids = write_prompts(prompts, 5)
    with FaultServer() as s:
        _run(s, prompts, run, recon_for)
        first = len(s.log.entries)
        rec = read_jsonl(run / "recording.jsonl")
        assert len(rec) == 10 and all(len(r["request_hash"]) == 64 for r in rec)
        # a rerun of the unchanged source asks for nothing
        assert _run(s, prompts, run, recon_for)["requests"] == first and len(s.log.entries) == first

        _edit_prompt(prompts, "p3", "Question number 3, edited: what is 3 times 3?")
        with pytest.raises(RolloutError) as err:
            _run(s, prompts, run, recon_for)
        msg = str(err.value)
        assert "p3" in msg and "p1" not in msg and "recording.jsonl" in msg and "on_prompt_change" in msg
        assert "here p3's messages differ from the recorded ones" in msg
        assert len(s.log.entries) == first  # nothing re-requested
        assert len(read_jsonl(run / "recording.jsonl")) == 10

        summary = _run(s, prompts, run, recon_for, on_prompt_change="rerequest")
        new = s.log.entries[first:]
        assert new and all("edited" in e["messages"][-1]["content"] for e in new)  # only p3 was asked again
        assert summary["stale_rerequested"] == 2
    rec = read_jsonl(run / "recording.jsonl")
    assert len(rec) == 12  # the stale answers stay in the file (paid for) ...
    loaded = load_recording(run / "recording.jsonl")
    assert loaded.superseded == 2 and len(loaded.records) == 10  # ... but the newer ones are used
    assert "edited" in loaded.records[("p3", 0)]["messages"][-1]["content"]
    assert "edited" in loaded.records[("p3", 1)]["messages"][-1]["content"]
    assert set(sample_ids(run)) == {f"{p}/{i}" for p in ids for i in range(2)}

    with FaultServer() as s2:  # and the next rerun (default policy) accepts the newer answers
        assert _run(s2, prompts, run, recon_for)["stop_reason"] == "completed"
        assert s2.log.entries == []

    # distill replay of the recording (one pass, first record per id) skips the superseded lines too
    cfg = load_config(
        None,
        {
            "orchestrator": {"source": {"type": "replay", "path": str(run / "recording.jsonl")}},
            "trainer": {"seq_len": 512},
        },
    )
    summary = replay(cfg, tmp_path / "replayed", recon_for(cfg), progress=False)
    assert summary["filtered"].get("superseded") == 2 and "duplicate_id" not in summary["filtered"]
    replayed = {smp.sample_id: smp for smp in iter_samples(tmp_path / "replayed" / "samples")}
    assert set(replayed) == {f"{p}/{i}" for p in ids for i in range(2)}
    tok = recon_for(cfg).tokenizer
    assert all("edited" in tok.decode(replayed[f"p3/{i}"].prompt_ids) for i in range(2))  # the newer answers
    assert "edited" not in tok.decode(replayed["p2/0"].prompt_ids)


def test_changed_sampling_is_a_change_too_and_old_records_are_trusted(tmp_path, recon_for, capsys):
    prompts, run = tmp_path / "p.jsonl", tmp_path / "run"
    write_prompts(prompts, 3)
    with FaultServer() as s:
        _run(s, prompts, run, recon_for)
        with pytest.raises(
            RolloutError, match=r"3 prompt.*here sampling changed: temperature \(recorded unset, now 0\.1\)"
        ):
            cfg = make_cfg(s.base_url, prompts, sampling={"n": 2, "max_tokens": 32, "temperature": 0.1})
            rollout(cfg, run, recon_for(cfg), progress=False, backpressure=False)
        # a recording written before request_hash existed: reused, with one warning
        path = run / "recording.jsonl"
        old = [{k: v for k, v in r.items() if k != "request_hash"} for r in read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in old))
        n = len(s.log.entries)
        capsys.readouterr()
        cfg = make_cfg(s.base_url, prompts, sampling={"n": 2, "max_tokens": 32, "temperature": 0.1})
        assert rollout(cfg, run, recon_for(cfg), progress=False, backpressure=False)["stop_reason"] == "completed"
        assert len(s.log.entries) == n
        assert "6 recorded answer(s) have no request_hash" in capsys.readouterr().err


def test_what_changed_names_the_model_the_tools_or_the_sampling_key():
    sampling = base_sampling({"max_tokens": 32, "seed": 3}, {})
    prompt = {"prompt_id": "p1", "messages": MSGS, "tools": None}
    rec = {"messages": MSGS, "tools": None, "model": "teacher-a", "sampling": {"max_tokens": 32, "n": 2, "seed": 4}}
    rec["request_hash"] = request_hash("teacher-a", MSGS, None, sampling)
    assert (
        what_changed(prompt, rec, "teacher-b", sampling) == "the model changed (recorded 'teacher-a', now 'teacher-b')"
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert (
        what_changed(dict(prompt, tools=tools), rec, "teacher-a", sampling)
        == "p1's tools differ from the recorded ones"
    )
    top_p = base_sampling({"max_tokens": 32, "seed": 3, "top_p": 0.5}, {})
    assert what_changed(prompt, rec, "teacher-a", top_p) == "sampling changed: top_p (recorded unset, now 0.5)"
    # the server names another model than the one asked for (an alias): not called a model change
    rec_alias = dict(rec, model="teacher-a-2024", request_hash=request_hash("teacher-a", MSGS, None, sampling))
    assert what_changed(prompt, rec_alias, "teacher-a", top_p).startswith("sampling changed: top_p")
    # an alias, and now another model asked for: the record cannot prove which changed, so both
    # are named, with the model the recorded answers came from
    alias_b = dict(rec_alias, request_hash=request_hash("teacher-b", MSGS, None, sampling))
    assert what_changed(prompt, alias_b, "teacher-c", sampling) == (
        "the model or the sampling settings changed (the recorded answers came from 'teacher-a-2024'; now 'teacher-c')"
    )
