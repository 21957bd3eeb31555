"""Shared by the resume tests (test_request_hash.py, test_rejects.py): a rollout config against the
FaultServer, with the real SmolLM2 tokenizer's Reconstructor; and the config file the CLI tests of run
dirs (test_run_lock.py, test_built_with.py, test_full_disk.py) pass to `distill rollout`."""

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


def write_rollout_toml(
    tmp_path: Path, base_url: str, tokenizer_dir, *, prompts: int, out: Path | None = None, n: int = 1
) -> str:
    """tmp_path/run.toml: `prompts` prompts (tmp_path/p.jsonl) to the FaultServer at base_url, n samples each,
    5 per shard, into `out` (default tmp_path/run), built with the tokenizer in tokenizer_dir."""
    from support.fault_server import write_prompts

    write_prompts(tmp_path / "p.jsonl", prompts)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
output_dir = "{out or tmp_path / "run"}"
[student]
tokenizer = "{tokenizer_dir}"
[orchestrator]
concurrency = 4
samples_per_shard = 5
[orchestrator.rollout_model]
base_url = "{base_url}"
model = "fault-teacher"
[orchestrator.sampling]
n = {n}
[orchestrator.source]
type = "jsonl"
path = "{tmp_path / "p.jsonl"}"
""")
    return str(cfg)
