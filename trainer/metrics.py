"""Training metrics: metrics.jsonl on rank 0 (truncated to the resumed step) and, optionally, wandb."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from distill.core import contract
from distill.core.config import RunConfig, redacted_dict
from distill.core.jsonl import read_jsonl
from trainer import dist


class MetricsLog:
    """metrics.jsonl on rank 0: one JSON line per logged step, flushed and fsynced."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            _truncate_after(path, resume_step)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after `step` (a crash after logging, before the checkpoint)."""
    if not path.exists():
        return
    keep = []
    for ln in read_jsonl(path):  # a half-written last line is dropped (distill/core/jsonl.py)
        if ln.ok and ln.value.get("step", 0) <= step:
            keep.append(ln.raw.decode("utf-8").rstrip("\r\n"))
    contract.atomic_write_text(path, "".join(x + "\n" for x in keep))


def open_wandb(cfg: RunConfig, run_dir: Path, ctx: dist.DistContext):
    if not (cfg.wandb.enabled and ctx.is_main):
        return None
    try:
        import wandb
    except ImportError:
        warnings.warn(
            "wandb.enabled = true but the wandb package is not installed; "
            "metrics go to metrics.jsonl only. Fix: pip install wandb"
        )
        return None
    return wandb.init(
        project=cfg.wandb.project,
        name=cfg.wandb.name or run_dir.name,
        config=redacted_dict(cfg),
        dir=str(run_dir),
        resume="allow",
    )
