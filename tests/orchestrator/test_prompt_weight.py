"""A prompt file's per-message "weight" (OpenAI fine-tuning's format) in live rollouts: kept in the
recording and honoured by reconstruction, never sent to the teacher (a strict API such as OpenAI's
refuses a message key it does not know; the FaultServer does the same)."""

from __future__ import annotations

import json

from support.helpers import read_jsonl

from distill.core.contract import iter_samples
from orchestrator.kinds.chat import ChatRequest, request_body, wire_messages
from orchestrator.reconstruct import Reconstructor
from orchestrator.scheduler import rollout
from support.fault_server import FaultServer
from support.rollout_helpers import make_cfg

FEW_SHOT = "Example answer: seven"


def _prompt(pid: str, weight: int | None) -> dict:
    shot = {"role": "assistant", "content": FEW_SHOT}
    if weight is not None:
        shot["weight"] = weight
    return {
        "id": pid,
        "messages": [
            {"role": "user", "content": "What is three plus four?", "weight": 0},
            shot,
            {"role": "user", "content": "What is two plus two?"},
        ],
    }


def test_weight_stays_off_the_wire_and_in_the_recording(tmp_path, smol_tokenizer):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(_prompt(p, w)) + "\n" for p, w in [("w0", 0), ("w1", 1), ("none", None)]))
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, prompts, sampling={"max_tokens": 16})
        summary = rollout(
            cfg, tmp_path / "run", Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction), progress=False
        )
    assert summary["stop_reason"] == "completed" and summary["samples"] == 3
    assert s.log.entries and all(e["outcome"] == "ok" for e in s.log.entries)
    assert all("weight" not in m for e in s.log.entries for m in e["messages"])
    rec = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "run" / "recording.jsonl")}
    assert rec["w0"]["messages"][1]["weight"] == 0 and "weight" not in rec["none"]["messages"][1]
    trained = {}
    for smp in iter_samples(tmp_path / "run" / "samples"):
        kept = [t for t, m in zip(smp.completion_ids, smp.completion_mask) if m]
        trained[smp.sample_id.split("/")[0]] = smol_tokenizer.decode(kept)
    answer = rec["w0"]["response"]["content"]
    assert FEW_SHOT not in trained["w0"] and answer in trained["w0"]  # weight 0: context only
    assert trained["w1"] == trained["none"]  # weight 1 is the default
    assert FEW_SHOT in trained["w1"] and rec["w1"]["response"]["content"] in trained["w1"]


def test_request_body_and_sdk_messages_drop_only_local_keys():
    msgs = [{"role": "user", "content": "q", "name": "ann", "weight": 0}, {"role": "assistant", "content": "a"}]
    body = request_body("m", ChatRequest(msgs))
    assert body["messages"] == [{"role": "user", "content": "q", "name": "ann"}, {"role": "assistant", "content": "a"}]
    assert msgs[0]["weight"] == 0  # the caller's (recorded) messages are untouched
    plain = [{"role": "user", "content": "q"}]
    assert wire_messages(plain) is plain  # nothing to drop: no copy
