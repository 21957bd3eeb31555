"""rejects.jsonl stays exact across resumes: samples + rejects = pairs done, no pair in both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import read_jsonl
from support.rollout_helpers import make_cfg, sample_ids

from orchestrator.rejects import RejectLog, pair_of
from orchestrator.scheduler import rollout
from support.fault_server import FaultServer, Faults, write_prompts


@pytest.fixture
def recon_for(smol_tokenizer):
    from orchestrator.reconstruct import Reconstructor

    return lambda cfg: Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)


def _pairs(run: Path) -> tuple[set[str], list[str]]:
    published = {pair_of(i) for i in sample_ids(run)}
    listed = [r["item_id"] for r in read_jsonl(run / "rejects.jsonl")] if (run / "rejects.jsonl").exists() else []
    return published, listed


def test_pairs_a_later_run_completed_leave_rejects(tmp_path, recon_for):
    prompts, run = tmp_path / "p.jsonl", tmp_path / "run"
    ids = write_prompts(prompts, 12)
    every = {f"{p}/{i}" for p in ids for i in range(2)}
    one_try = {"max_attempts": 1, "initial_backoff": 0.001, "max_backoff": 0.01}
    with FaultServer(Faults(rate_500=0.5), seed=5) as s:  # half the pairs fail: tolerated here, to be retried
        cfg = make_cfg(s.base_url, prompts, sampling={"n": 2, "max_tokens": 32}, retry=one_try, max_failed_fraction=1.0)
        first = rollout(cfg, run, recon_for(cfg), progress=False, backpressure=False)
    published, listed = _pairs(run)
    assert listed and published, "some pairs failed, some made it"
    assert published.isdisjoint(listed) and published | set(listed) == every
    assert first["pairs_done"] == 24 and first["pairs_rejected"] == len(listed)

    # a crash can leave a pair-level line of a pair that is published (and repeated / torn lines)
    stale = sorted(published)[0]
    with open(run / "rejects.jsonl", "a") as f:
        f.write(json.dumps({"item_id": stale, "reason": "http_500", "detail": "old"}) + "\n")
        f.write(json.dumps({"item_id": listed[0], "reason": "http_500", "detail": "again"}) + "\n")
        f.write('{"item_id": "p1/0", "rea')

    with FaultServer() as s:  # the failures are retried, and succeed
        cfg = make_cfg(s.base_url, prompts, sampling={"n": 2, "max_tokens": 32}, retry=one_try)
        second = rollout(cfg, run, recon_for(cfg), progress=False, backpressure=False)
    published, listed = _pairs(run)
    assert published == every and listed == []
    assert second["pairs_done"] == second["pairs_published"] == 24 and second["pairs_rejected"] == 0
    assert second["rejections"] == {}


def test_an_earlier_runs_line_gives_way_to_the_pairs_newest_outcome(tmp_path):
    path = tmp_path / "rejects.jsonl"
    path.write_text(
        "".join(
            json.dumps({"item_id": i, "reason": r, "detail": ""}) + "\n"
            for i, r in [("a/0", "http_500"), ("b/0", "timeout"), ("c/0/turn2", "truncated"), ("d/0", "low_reward")]
        )
    )
    log = RejectLog(path, published={"c/0"})  # turn-level: a split pair can have a published and a rejected turn
    log.add("b/0", "connection_error")  # b failed again, differently: only the new reason stays
    log.add("d/0", "low_reward")  # d was rebuilt and rejected again for the same reason: listed once
    counts = log.close(published={"a/0", "c/0"}, published_this_run={"a/0"})  # a succeeded this run
    assert [(r["item_id"], r["reason"]) for r in read_jsonl(path)] == [
        ("c/0/turn2", "truncated"),
        ("d/0", "low_reward"),
        ("b/0", "connection_error"),
    ]
    assert counts == {"pairs_published": 2, "pairs_rejected": 2, "pairs_done": 4}
