"""Record fields that used to be read wrong without a word: a non-finite reward (NaN passed
min_reward and reached a shard as bare `NaN`), a ShareGPT turn's `weight`, and a record or turn
holding the same thing twice (`messages` and `conversations`, `value` and `content`) that differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.config import load_config
from distill.core.contract import iter_samples, list_shards
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import ReplayError, replay


def run(tmp_path: Path, tok, lines: list[str], on_error: str = "skip", fmt: str = "auto", **replay_keys) -> dict:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "run"),
            "orchestrator": {
                "source": {"type": "replay", "path": str(p), "format": fmt},
                "replay": {"on_error": on_error, **replay_keys},
            },
        },
    )
    recon = Reconstructor(tok, cfg.orchestrator.reconstruction, 1024)
    return replay(cfg, tmp_path / "run", recon, progress=False)


def bad_records(tmp_path: Path) -> list[tuple[int, str | None, str]]:
    return [(b["line"], b["field"], b["reason"]) for b in read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")]


def chat(rid: str, answer: str = "5", **extra) -> str:
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": answer}]
    return json.dumps({"id": rid, "messages": msgs, **extra})


# --- reward ------------------------------------------------------------------------------------


def test_a_non_finite_reward_is_a_bad_record_and_no_shard_holds_nan(tmp_path, smol_tokenizer):
    recording = {
        "v": 1,
        "prompt_id": "rec",
        "messages": [{"role": "user", "content": "q"}],
        "response": {"role": "assistant", "content": "a"},
        "finish_reason": "stop",
    }
    # the reward written as the bare JSON extensions Python's json reads
    lines = [chat("ok", reward=0.9)] + [
        row[:-1] + f', "reward": {bare}}}'
        for row, bare in (
            (chat("nan"), "NaN"),
            (chat("inf"), "Infinity"),
            (chat("-inf"), "-Infinity"),
            (json.dumps(recording), "NaN"),
        )
    ]
    summary = run(tmp_path, smol_tokenizer, lines, min_reward=0.5)
    assert bad_records(tmp_path) == [(n, "reward", "bad_field") for n in (2, 3, 4, 5)]
    errors = [b["error"] for b in read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")]
    assert all("expected a finite number" in e for e in errors)
    assert summary["outcomes"]["trained"] == 1 and summary["bad_records"] == 4
    assert [s.sample_id for s in iter_samples(tmp_path / "run" / "samples")] == ["ok/0"]
    shard_text = "".join(p.read_text() for p in list_shards(tmp_path / "run" / "samples"))
    assert "NaN" not in shard_text and "Infinity" not in shard_text


def test_on_error_fail_stops_at_a_nan_reward_naming_the_field(tmp_path, smol_tokenizer):
    with pytest.raises(ReplayError) as ei:
        run(tmp_path, smol_tokenizer, [chat("a"), chat("nan")[:-1] + ', "reward": NaN}'], on_error="fail")
    assert (ei.value.line, ei.value.field, ei.value.reason) == (2, "reward", "bad_field")
    assert "expected a finite number, got nan" in str(ei.value)
