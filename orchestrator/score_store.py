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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distill.core.jsonl import iter_lines
from orchestrator.kinds.score_parse import MAX_LOGPROB, count, topk_problem
from orchestrator.kinds.score_types import SeqScores
from orchestrator.recording import RecordingError, _drop_torn_tail
from orchestrator.transport import ResponseError

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


def record_problem(rec: dict[str, Any], vocab: int = 0) -> str | None:
    """Why a recorded answer fails the checks an answer gets when it is read (score_parse), or None: a
    distill before them, or a hand-edited file, may have recorded one a scorer should have refused."""
    lps, topk, n = rec.get("logprobs"), rec.get("topk"), rec.get("n", len(rec.get("logprobs") or []))
    if not isinstance(lps, list) or n != len(lps) or (lps and lps[0] is not None):
        return f"its logprobs are not one per token ({n}), the first null"
    for j, x in enumerate(lps[1:], 1):
        if x is not None and (
            isinstance(x, bool) or not isinstance(x, (int, float)) or not -math.inf < x <= MAX_LOGPROB
        ):
            return f"logprob {x!r} at position {j} is not a finite log-probability <= 0"
    if topk is None:
        return None
    if not isinstance(topk, list) or len(topk) != n:
        return f"its top-k is not one list per token ({n})"
    for j, row in enumerate(topk):
        why = topk_problem(row, vocab)
        if why:
            return f"top-k at position {j}: {why}"
    return None


def recorded_tokens(rec: dict[str, Any], shared: int) -> float:
    """The prompt tokens a record's request is charged: its share of the reported usage where that is a count
    of tokens a request of its length can have (score_parse.count), else its length (a distill before that
    check recorded a negative count, which would credit `[scorer.budget]` on every rerun)."""
    n = rec.get("n") if isinstance(rec.get("n"), int) else len(rec.get("logprobs") or [])
    try:
        return count((rec.get("usage") or {}).get("prompt_tokens"), n * shared, "prompt_tokens") / shared or n
    except ResponseError:
        return n


@dataclass
class LoadedScores:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: float = 0.0  # requests these answers came from (a batch's share on each line)
    prompt_tokens: float = 0.0
    torn_tail: bytes = b""
    # keys whose only records fail `check` (they are asked again) -> "line N: why" of the first
    failing: dict[str, str] = field(default_factory=dict)


def load_scores(
    path: str | os.PathLike, repair: bool = True, check: Callable[[dict[str, Any]], str | None] | None = None
) -> LoadedScores:
    """Read OUTPUT_DIR/scores.jsonl (absent: empty). A torn last line is dropped (and, with `repair`,
    saved beside the file and cut off); any other bad line is a RecordingError naming file:line. A
    record `check` finds wrong (record_problem) is not used, but its request still counts as spent."""
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
        why = check(rec) if check else None
        if why is None and rec["key"] in out.records:
            continue  # written twice (two runs raced): the first stands
        shared = max(1, int(rec.get("usage_shared_by") or 1))
        out.requests += 1 / shared
        out.prompt_tokens += recorded_tokens(rec, shared)
        if why is not None:
            out.failing.setdefault(rec["key"], f"line {ln.number}: {why}")
            continue
        out.records[rec["key"]] = rec
    out.failing = {k: why for k, why in out.failing.items() if k not in out.records}  # asked again since
    if out.torn_tail.strip():
        _drop_torn_tail(p, out.torn_tail, good_end, repair)
    return out
