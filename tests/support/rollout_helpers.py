"""Shared by the resume tests (test_request_hash.py, test_rejects.py): a rollout config against the
FaultServer, with the real SmolLM2 tokenizer's Reconstructor."""

from __future__ import annotations

from pathlib import Path

from distill.core.config import load_config
from distill.core.contract import iter_samples

FAST_RETRY = {"max_attempts": 40, "initial_backoff": 0.001, "max_backoff": 0.01}


def make_cfg(base_url: str, prompts: Path, **orch):
    o = {
        "rollout_model": {"base_url": base_url, "model": "fault-teacher"},
        "source": {"type": "jsonl", "path": str(prompts)},
        "retry": FAST_RETRY,
        "samples_per_shard": 4,
    }
    for k, v in orch.items():
        o[k] = {**o[k], **v} if isinstance(v, dict) and isinstance(o.get(k), dict) else v
    return load_config(None, {"orchestrator": o, "trainer": {"seq_len": 512}})


def sample_ids(run_dir: Path) -> list[str]:
    return [s.sample_id for s in iter_samples(run_dir / "samples")]
