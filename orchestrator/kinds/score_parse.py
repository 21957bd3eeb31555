"""Defensive reading of scoring answers, shared by the scoring kinds (score_sglang.py, score_echo.py).

Every check raises ResponseError naming what is wrong and where (the request kind, sequence and position):
"malformed_response" (retried: the next answer may be fine) for a body of the wrong shape, and a
non-retryable one (`token_mismatch`, `tokenizer_mismatch`) when the server scored other tokens than asked.
"""

from __future__ import annotations

import json
import math
from typing import Any

from orchestrator.kinds.chat import MAX_USAGE_TOKENS, not_json, token_count
from orchestrator.kinds.score_types import SeqScores
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


def topk_problem(row: Any, vocab: int) -> str | None:
    """Why one position's top-k [(id, logprob), ...] cannot be used, or None: an entry that is not a pair, an
    id that is not a token of the student's vocabulary (0 <= id < vocab; vocab 0: the upper bound is not
    checked), one id twice, a logprob that is not a finite log-probability. Also checks recorded answers."""
    if not isinstance(row, (list, tuple)):
        return f"expected a list of (id, logprob), got {type(row).__name__}"
    seen: set[int] = set()
    for pair in row:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return f"entry {pair!r} is not an (id, logprob) pair"
        t, lp = pair
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            return f"token id {t!r} is not a non-negative integer"
        if vocab and t >= vocab:
            return f"token id {t} is not in the student's vocabulary (ids 0..{vocab - 1})"
        if t in seen:
            return f"token id {t} is listed twice"
        seen.add(t)
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not math.isfinite(lp) or lp > MAX_LOGPROB:
            return f"logprob {lp!r} of token {t} is not a finite log-probability <= 0"
    return None


def check_topk(scores: SeqScores, vocab: int, what: str) -> None:
    """Refuse (malformed_response: the next answer may be fine) a top-k row topk_problem finds wrong."""
    for j, row in enumerate(scores.topk or []):
        why = topk_problem(row, vocab)
        if why:
            raise malformed(what, f"top-k at position {j}: {why}")


def with_scored(top: list[tuple[int, float]], tid: int, lp: float) -> list[tuple[int, float]]:
    """The top-k pairs sorted best first, with the scored token (tid, lp) added when absent."""
    out = sorted(top, key=lambda p: -p[1])
    if all(t != tid for t, _ in out):
        out.append((tid, lp))
    return out


#: A reported count above this many times what the request can use is not believed (room for a server that
#: counts a little differently, e.g. a BOS it adds; the chat path's rule is chat.completion_cap).
USAGE_SLACK = 4


def count(v: Any, cap: int | None, key: str) -> int:
    """A `usage` count (0 when absent) of at most USAGE_SLACK x `cap` (the tokens the request can use; None:
    MAX_USAGE_TOKENS); else malformed_response: a negative count would credit `[scorer.budget]`, an absurd
    one spend it, and scores.jsonl would pass either on to every later run."""
    try:
        n = token_count(v)
    except (TypeError, ValueError, OverflowError):
        raise malformed("usage", f"{key} = {v!r} is not a count of tokens (a whole number >= 0)") from None
    limit = MAX_USAGE_TOKENS if cap is None else min(MAX_USAGE_TOKENS, USAGE_SLACK * max(cap, 1))
    if n > limit:
        raise malformed("usage", f"{key} = {n} is more than {limit} ({USAGE_SLACK} x the {cap} the request can use)")
    return n


def usage(
    prompt_tokens: Any, completion_tokens: Any = 0, prompt_cap: int | None = None, completion_cap: int | None = None
) -> dict[str, int]:
    """{"prompt_tokens", "completion_tokens"}, each a `count` within its cap (malformed_response otherwise)."""
    return {
        "prompt_tokens": count(prompt_tokens, prompt_cap, "prompt_tokens"),
        "completion_tokens": count(completion_tokens, completion_cap, "completion_tokens"),
    }


def body_usage(d: Any, prompt_tokens: int, completion_tokens: int = 0, completion_cap: int | None = None) -> dict:
    """The body's `usage` where it is well formed and within the caps (the counted tokens), else the counted
    tokens."""
    u = d.get("usage") if isinstance(d, dict) else None
    try:
        return usage(u["prompt_tokens"], u.get("completion_tokens") or 0, prompt_tokens, completion_cap)
    except (TypeError, KeyError, AttributeError, ResponseError):
        return usage(prompt_tokens, completion_tokens)
