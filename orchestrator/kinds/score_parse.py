"""Defensive reading of scoring answers, shared by the scoring kinds (score_sglang.py, score_echo.py).

Every check raises ResponseError naming what is wrong and where (the request kind, sequence and position):
"malformed_response" (retried: the next answer may be fine) for a body of the wrong shape, and a
non-retryable one (`token_mismatch`, `tokenizer_mismatch`) when the server scored other tokens than asked.
"""

from __future__ import annotations

import json
import math
from typing import Any

from orchestrator.kinds.chat import not_json, token_count
from orchestrator.transport import ResponseError

#: a logprob above this is not a log-probability (a little room for rounding on the server)
MAX_LOGPROB = 1e-3


def malformed(what: str, detail: str) -> ResponseError:
    return ResponseError("malformed_response", f"{what}: {detail}")


def load_json(body: bytes | str, what: str) -> Any:
    """The decoded body (json accepts NaN/Infinity; logprob() refuses them where they matter)."""
    try:
        d = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise malformed(what, not_json(body, e)) from None
    if isinstance(d, dict) and "error" in d and len(d) <= 2:
        err = d["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise malformed(what, f"error object in a 200 response: {msg}")
    return d


def field(d: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """d[key], which must be of `kind`."""
    if not isinstance(d, dict):
        raise malformed(what, f"expected an object holding {key!r}, got {type(d).__name__}")
    if key not in d:
        raise malformed(what, f"{key!r} is missing")
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise malformed(what, f"{key!r} is a {type(v).__name__}, not a {names}")
    return v


def sized(v: Any, n: int, what: str) -> list:
    """v, a list of exactly n entries."""
    if not isinstance(v, list):
        raise malformed(what, f"expected a list, got {type(v).__name__}")
    if len(v) != n:
        raise malformed(what, f"has {len(v)} entries, expected {n} (one per token)")
    return v


def logprob(v: Any, what: str) -> float:
    """A finite log-probability (<= 0, up to rounding); NaN, inf, strings and positive values are refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise malformed(what, f"logprob is {v!r}, not a number")
    f = float(v)
    if not math.isfinite(f) or f > MAX_LOGPROB:
        raise malformed(what, f"logprob {v!r} is not a finite log-probability <= 0")
    return f


def token_id(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise malformed(what, f"token id {v!r} is not a non-negative integer")
    return v


def with_scored(top: list[tuple[int, float]], tid: int, lp: float) -> list[tuple[int, float]]:
    """The top-k pairs sorted best first, with the scored token (tid, lp) added when absent."""
    out = sorted(top, key=lambda p: -p[1])
    if all(t != tid for t, _ in out):
        out.append((tid, lp))
    return out


def usage(prompt_tokens: Any, completion_tokens: Any = 0) -> dict[str, int]:
    return {"prompt_tokens": token_count(prompt_tokens), "completion_tokens": token_count(completion_tokens)}


def body_usage(d: Any, prompt_tokens: int, completion_tokens: int = 0) -> dict[str, int]:
    """The body's `usage` where it is well formed, else the counted tokens."""
    u = d.get("usage") if isinstance(d, dict) else None
    try:
        return usage(u["prompt_tokens"], u.get("completion_tokens") or 0)
    except (TypeError, KeyError, ValueError, AttributeError, OverflowError):
        return usage(prompt_tokens, completion_tokens)
