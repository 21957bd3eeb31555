"""Validation of a `Sample`'s optional per-token fields (teacher fields, on-policy fields): each
refusal names the sample, the field and the position. Used by `Sample.__post_init__`
(distill/core/contract.py); standard library only."""

from __future__ import annotations

import math
from typing import Any


def _check_per_token_logprobs(s: Any, name: str) -> None:
    """A per-completion-token logprob list: one entry per token, finite where trained, null allowed elsewhere."""
    v, n, where = getattr(s, name), len(s.completion_ids), f"sample {s.sample_id}"
    if not isinstance(v, list) or len(v) != n:
        got = f"{len(v)} entries" if isinstance(v, list) else type(v).__name__
        raise ValueError(f"{where}: {name} must be a list with one entry per completion token ({n}), got {got}")
    for j, (x, trained) in enumerate(zip(v, s.completion_mask)):
        if not (x is None and not trained) and not _finite(x):
            raise ValueError(
                f"{where}: {name}[{j}] is {x!r}; "
                + ("a trained token needs a finite number" if trained else "expected a number or null")
            )


def check_on_policy_fields(s: Any) -> None:
    """Refuse, naming the field and position, on-policy fields that do not fit the sample."""
    if s.sampling_logprobs is not None:
        _check_per_token_logprobs(s, "sampling_logprobs")
    if s.group_id is not None and (not isinstance(s.group_id, str) or not s.group_id):
        raise ValueError(f"sample {s.sample_id}: group_id is {s.group_id!r}; expected a non-empty string")


def check_teacher_fields(s: Any, names: tuple[str, ...]) -> None:
    """Refuse, naming the field and position, per-token teacher fields that do not fit the sample."""
    n = len(s.completion_ids)
    where = f"sample {s.sample_id}"
    for name in names:
        v = getattr(s, name)
        if v is not None and (not isinstance(v, list) or len(v) != n):
            got = f"{len(v)} entries" if isinstance(v, list) else type(v).__name__
            raise ValueError(f"{where}: {name} must be a list with one entry per completion token ({n}), got {got}")
    if s.teacher_logprobs is not None:
        _check_per_token_logprobs(s, "teacher_logprobs")
    ids, lps = s.teacher_topk_ids, s.teacher_topk_logprobs
    if (ids is None) != (lps is None):
        raise ValueError(
            f"{where}: teacher_topk_ids and teacher_topk_logprobs come together; only "
            f"{'teacher_topk_ids' if lps is None else 'teacher_topk_logprobs'} is set"
        )
    for j, (i_row, lp_row) in enumerate(zip(ids or (), lps or ())):
        if not isinstance(i_row, list) or not isinstance(lp_row, list) or len(i_row) != len(lp_row):
            raise ValueError(
                f"{where}: teacher_topk_ids[{j}] and teacher_topk_logprobs[{j}] must be lists of "
                f"the same length, got {i_row!r} and {lp_row!r}"
            )
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in i_row):
            raise ValueError(f"{where}: teacher_topk_ids[{j}] is {i_row!r}; expected token ids (integers >= 0)")
        if not all(_finite(x) for x in lp_row):
            raise ValueError(f"{where}: teacher_topk_logprobs[{j}] is {lp_row!r}; expected finite numbers")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_token_fields(d: dict[str, Any]) -> None:
    """A sample line's token ids are lists of non-negative integers and its mask a list of 0 and 1
    (ValueError naming the field and the first bad value): a float id would be cut to an int, a negative
    or string one would stop training with a traceback deep in torch."""
    for name in ("prompt_ids", "completion_ids", "completion_mask"):
        v = d[name]
        if not isinstance(v, list):
            raise ValueError(f"{name} is {'null' if v is None else 'a ' + type(v).__name__}, not a list")
        ok = {0, 1} if name == "completion_mask" else None
        if set(map(type, v)) <= {int} and (set(v) <= ok if ok else not v or min(v) >= 0):
            continue
        k, bad = next((k, x) for k, x in enumerate(v) if type(x) is not int or (x not in ok if ok else x < 0))
        raise ValueError(f"{name}[{k}] = {bad!r} is not " + ("0 or 1" if ok else "a token id (an integer >= 0)"))
