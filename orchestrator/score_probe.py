"""What scoring an endpoint supports (`distill probe URL --scorer TYPE`): rows (feature, result, detail).

prompt logprobs (one short sequence scored), the largest top-k that works (of TOPK_TRIES), the tokenize
request, and the three self-tests (orchestrator/score_check.py), each a row; one failing row does not
stop the others.
"""

from __future__ import annotations

from typing import Any

from distill.core.redact import redact_url
from orchestrator.kinds.score_types import ScoreBatch, TokenizeRequest
from orchestrator.score_check import run_self_tests
from orchestrator.scoring import (
    ScoreError,
    check_answer,
    make_kinds,
    make_score_kind,
    make_seq,
    make_transport,
    scorer_api_key,
)
from orchestrator.transport import TeacherError

TOPK_TRIES = (1, 5, 20, 50, 100)
_TEXT = "The sea is calm tonight."


def url_hint(kind: str, base_url: str) -> str:
    """What to try when the first request failed and the URL does not have the shape the kind wants (a 404
    says only "no route"): SGLang's native API sits at the server root, vLLM's and echo's under /v1."""
    url = base_url.rstrip("/")
    if kind == "sglang" and url.endswith("/v1"):
        return f". Hint: an SGLang scorer's base_url is the server root, without /v1: try {redact_url(url[:-3])}"
    if kind in ("vllm", "echo") and not url.endswith("/v1"):
        return f". Hint: a {kind} scorer's base_url ends in /v1: try {redact_url(url + '/v1')}"
    return ""


async def probe_scoring(sc: Any, tok: Any) -> list[tuple[str, str, str]]:
    t = make_transport(sc, scorer_api_key(sc))
    rows: list[tuple[str, str, str]] = []
    try:
        seq = make_seq(tok.encode(_TEXT, add_special_tokens=False), tok, sc.type == "echo")
        kind = make_score_kind(sc, tok)

        async def score(k: int) -> str:
            ans = (await t.request(kind, ScoreBatch([seq], k))).answer
            check_answer(seq, ans.seqs[0], k, "probe sequence")
            n = sum(1 for x in ans.seqs[0].logprobs if x is not None)
            return f"{n} of {len(seq.token_ids)} positions scored"

        try:
            rows.append(("prompt logprobs", "yes", await score(0)))
        except (TeacherError, ScoreError, IndexError) as e:
            rows.append(("prompt logprobs", "no", str(e)[:300] + url_hint(sc.type, sc.base_url)))
            return rows
        best, why = 0, ""
        for k in TOPK_TRIES:
            try:
                await score(k)
                best = k
            except (TeacherError, ScoreError, IndexError) as e:
                why = f"; k={k} failed: {str(e)[:160]}"
                break
        rows.append(("max top_k", str(best), f"tried {', '.join(map(str, TOPK_TRIES))}{why}"))
        try:
            tk = make_kinds(sc, tok)[2]
            ans = (await t.request(tk, TokenizeRequest(_TEXT))).answer
            got = len(ans.token_ids if ans.token_ids is not None else ans.pieces or [])
            rows.append(("/tokenize", "yes", f"{got} tokens for {_TEXT!r}"))
        except TeacherError as e:
            rows.append(("/tokenize", "no", str(e)[:300]))
        rows += [
            (f"self-test: {name}", result, detail)
            for name, result, detail in await run_self_tests(sc, t, tok, stop_at_failure=False)
        ]
        return rows
    finally:
        await t.close()
