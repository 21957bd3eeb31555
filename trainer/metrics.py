"""metrics.jsonl on rank 0, truncated to the resumed step (the always-on tracker of trainer/trackers.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from distill.core import contract
from distill.core.jsonl import read_jsonl


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
