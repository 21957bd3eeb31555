"""The scoring recording: every scoring answer, one durable JSON line per scored sequence.

    {"v": 1, "key": sha256, "kind": "vllm", "model": "teacher", "top_k": 5, "n": <tokens>,
     "logprobs": [null, -1.2, ...], "topk": [[], [[id, lp], ...], ...] | null,
     "usage": {...}, "usage_shared_by": k, "endpoint": ..., "request_id": ..., "t_start": ..., "t_end": ...}

`key` = sha256 of (kind, model, top_k, token ids) (`score_key`): the same sequence scored by the same
teacher with the same k is the same answer, so a rerun (or a resume after kill -9) finds it here and
never sends that request again. Lines are appended and fsynced by orchestrator.recording's
RecordingWriter before the answer is used; the file is read with the one torn-line policy
(distill/core/jsonl.py): a half-written last line is ignored (and cut off), that sequence is scored
again. Nothing secret is written: no key, no headers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.jsonl import iter_lines
from orchestrator.kinds.score_types import SeqScores
from orchestrator.recording import RecordingError, _drop_torn_tail

SCORES_FILE = "scores.jsonl"
SCORES_VERSION = 1
_NO_LIMIT = 1 << 62  # our own file: no line length limit


def score_key(kind: str, model: str, top_k: int, token_ids: list[int]) -> str:
    """The name of one scoring answer across runs: sha256 of (kind, model, top_k, token ids)."""
    blob = json.dumps([kind, model, int(top_k), list(token_ids)], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def make_score_record(key: str, kind: str, model: str, top_k: int, scores: SeqScores, **meta: Any) -> dict[str, Any]:
    return {
        "v": SCORES_VERSION,
        "key": key,
        "kind": kind,
        "model": model,
        "top_k": top_k,
        "n": len(scores.logprobs),
        "logprobs": scores.logprobs,
        "topk": [[[int(t), float(lp)] for t, lp in row] for row in scores.topk] if scores.topk is not None else None,
        **meta,
    }


def record_scores(rec: dict[str, Any]) -> SeqScores:
    """The SeqScores a record holds (token ids are those of its key, checked when it was written)."""
    topk = rec.get("topk")
    return SeqScores(
        logprobs=list(rec["logprobs"]),
        topk=[[(int(t), float(lp)) for t, lp in row] for row in topk] if topk is not None else None,
    )


@dataclass
class LoadedScores:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: float = 0.0  # requests these answers came from (a batch's share on each line)
    prompt_tokens: float = 0.0
    torn_tail: bytes = b""


def load_scores(path: str | os.PathLike, repair: bool = True) -> LoadedScores:
    """Read OUTPUT_DIR/scores.jsonl (absent: empty). A torn last line is dropped (and, with `repair`,
    saved beside the file and cut off); any other bad line is a RecordingError naming file:line."""
    p = Path(path)
    out = LoadedScores()
    if not p.exists():
        return out
    with open(p, "rb") as f:
        lines = list(iter_lines(f, _NO_LIMIT, strict_tail=True))
    good_end = lines[-1].start + lines[-1].size if lines else 0
    if lines and lines[-1].torn:
        out.torn_tail = lines.pop().raw
        good_end -= len(out.torn_tail)
    for ln in lines:
        if ln.blank:
            continue
        rec = ln.value if ln.reason is None else None
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("key"), str)
            or not isinstance(rec.get("logprobs"), list)
        ):
            why = ln.problem if ln.reason is not None else "not a scoring record (no key / logprobs)"
            raise RecordingError(
                f"{p}:{ln.number}: {why}; only the last line may be half-written. "
                "Fix: move the damaged line out of the file (or restore it) and run again"
            )
        if rec.get("v", 1) > SCORES_VERSION:
            raise RecordingError(f"{p}:{ln.number}: scoring record version {rec['v']} is newer than this distill reads")
        if rec["key"] in out.records:
            continue  # written twice (two runs raced): the first stands
        out.records[rec["key"]] = rec
        shared = max(1, int(rec.get("usage_shared_by") or 1))
        out.requests += 1 / shared
        out.prompt_tokens += ((rec.get("usage") or {}).get("prompt_tokens") or rec.get("n") or 0) / shared
    if out.torn_tail.strip():
        _drop_torn_tail(p, out.torn_tail, good_end, repair)
    return out
