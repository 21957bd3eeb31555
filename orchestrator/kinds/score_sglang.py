"""SGLang's native API as a scorer (`[scorer] type = "sglang"`; base_url = the server ROOT, no /v1).

    SGLangScore     POST {root}/generate
                    {"input_ids": ids (one sequence) | [ids, ...] (a batch), "return_logprob": true,
                     "logprob_start_len": 0, "top_logprobs_num": k, "return_text_in_logprobs": false,
                     "sampling_params": {"max_new_tokens": 0, "temperature": 0.0}}
                    -> one result (a list of them, in order, for a batch):
                    {"text", "output_ids", "meta_info": {"prompt_tokens", "completion_tokens",
                     "input_token_logprobs": [[logprob, id, text|null], ...]  one per input token, logprob
                                               of the first null (SGLang pads it: "[None] + raw[:-1]"),
                     "input_top_logprobs": [null, [[logprob, id, text|null], ...] per position]  (k > 0)}}
    SGLangSample    POST {root}/generate {"input_ids", "return_logprob": true, "top_logprobs_num": 0,
                     "sampling_params": {"max_new_tokens": m, "temperature": 0.0}}
                    -> meta_info.output_token_logprobs [[logprob, id, text|null], ...] (the generated tokens)
    SGLangTokenize  POST {root}/tokenize {"model", "prompt": text, "add_special_tokens": false}
                    -> {"tokens": [ids], "count", "max_model_len"}

Every id SGLang says it scored must be the request's (else a non-retryable `token_mismatch`); a body
of the wrong shape (a field missing, a list of the wrong length, a NaN or positive logprob, a batch
of the wrong size) is a retried `malformed_response` naming what is wrong. Shapes follow SGLang's
tokenizer_manager (detokenize_logprob_tokens) and scheduler output processing; the path is tested
against the project's exact-logprob server only (tests/support/score_server.py), not a real SGLang.
"""

from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI

from orchestrator.kinds import score_parse as p
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


class SGLangScore:
    """Scores token ids: input_token_logprobs (+ input_top_logprobs) of a /generate with max_new_tokens 0."""

    name = "sglang_score"

    def estimate(self, req: ScoreBatch) -> tuple[float, float]:
        return float(sum(len(s.token_ids) for s in req.seqs)), 0.0

    async def send(self, client: AsyncOpenAI, model: str, req: ScoreBatch) -> RawResponse:
        ids: Any = [s.token_ids for s in req.seqs] if len(req.seqs) > 1 else req.seqs[0].token_ids
        body = {
            "input_ids": ids,
            "return_logprob": True,
            "logprob_start_len": 0,
            "top_logprobs_num": req.top_k,
            "return_text_in_logprobs": False,
            "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
        }
        return await post_json(client, "generate", body)

    def parse(self, body: bytes, req: ScoreBatch) -> ScoreAnswer:
        d = p.load_json(body, "sglang /generate")
        results = _results(d, len(req.seqs))
        seqs = [_seq(r, s.token_ids, req.top_k, n) for n, (r, s) in enumerate(zip(results, req.seqs))]
        for n, s in enumerate(seqs):
            p.check_topk(s, req.vocab, f"sglang /generate, sequence {n}: input_top_logprobs")
        prompt = sum(_count(r, "prompt_tokens", len(s.token_ids)) for r, s in zip(results, req.seqs))
        sent = sum(len(s.token_ids) for s in req.seqs)
        return ScoreAnswer(seqs=seqs, usage=p.usage(prompt, 0, sent, 0), response_id=_rid(results[0]))


def _results(d: Any, n: int) -> list[dict]:
    """The per-sequence results: a list for a batch (one per sequence, in order), an object for one."""
    if isinstance(d, dict) and n == 1:
        return [d]
    if not isinstance(d, list):
        raise p.malformed("sglang /generate", f"expected a list of {n} results, got {type(d).__name__}")
    if len(d) != n:
        raise p.malformed("sglang /generate", f"{len(d)} results for a batch of {n} sequences")
    return d


def _seq(r: Any, ids: list[int], k: int, n: int) -> SeqScores:
    where = f"sglang /generate, sequence {n}"
    meta = p.field(r, "meta_info", dict, where)
    entries = p.sized(p.field(meta, "input_token_logprobs", list, where), len(ids), f"{where}: input_token_logprobs")
    lps: list[float | None] = [None]
    for i, e in enumerate(entries):
        at = f"{where}: input_token_logprobs[{i}]"
        if not isinstance(e, (list, tuple)) or len(e) < 2:
            raise p.malformed(at, f"expected [logprob, id, text], got {e!r}")
        tid = p.token_id(e[1], at)
        if tid != ids[i]:
            raise ResponseError(
                "token_mismatch",
                f"{at}: SGLang scored token id {tid} where the request has {ids[i]} (it must score the ids sent)",
                retryable=False,
            )
        if i:
            lps.append(p.logprob(e[0], at))
    topk = None
    if k:
        tops = p.sized(p.field(meta, "input_top_logprobs", list, where), len(ids), f"{where}: input_top_logprobs")
        topk = [[]] + [_top(tops[i], ids[i], lps[i], f"{where}: input_top_logprobs[{i}]") for i in range(1, len(ids))]
    return SeqScores(logprobs=lps, topk=topk, token_ids=list(ids))


def _top(entry: Any, tid: int, lp: float | None, at: str) -> list[tuple[int, float]]:
    if not isinstance(entry, list):
        raise p.malformed(at, f"expected a list of [logprob, id, text], got {type(entry).__name__}")
    pairs = []
    for e in entry:
        if not isinstance(e, (list, tuple)) or len(e) < 2:
            raise p.malformed(at, f"expected [logprob, id, text], got {e!r}")
        pairs.append((p.token_id(e[1], at), p.logprob(e[0], at)))
    assert lp is not None
    return p.with_scored(pairs, tid, lp)


def _count(r: dict, key: str, default: int) -> int:
    v = r.get("meta_info", {}).get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _rid(r: dict) -> str | None:
    rid = r.get("meta_info", {}).get("id")
    return rid if isinstance(rid, str) else None


class SGLangSample:
    """Greedy generation with the logprob of each generated token (meta_info.output_token_logprobs)."""

    name = "sglang_sample"

    def estimate(self, req: SampleRequest) -> tuple[float, float]:
        return float(len(req.prompt.token_ids)), float(req.max_tokens)

    async def send(self, client: AsyncOpenAI, model: str, req: SampleRequest) -> RawResponse:
        body = {
            "input_ids": req.prompt.token_ids,
            "return_logprob": True,
            "top_logprobs_num": 0,
            "sampling_params": {"max_new_tokens": req.max_tokens, "temperature": 0.0},
        }
        return await post_json(client, "generate", body)

    def parse(self, body: bytes, req: SampleRequest) -> SampleAnswer:
        where = "sglang /generate (sample)"
        r = _results(p.load_json(body, where), 1)[0]
        meta = p.field(r, "meta_info", dict, where)
        out = p.field(meta, "output_token_logprobs", list, where)
        if not out:
            raise p.malformed(where, "no generated token (output_token_logprobs is empty)")
        ids, lps = [], []
        for i, e in enumerate(out):
            at = f"{where}: output_token_logprobs[{i}]"
            if not isinstance(e, (list, tuple)) or len(e) < 2:
                raise p.malformed(at, f"expected [logprob, id, text], got {e!r}")
            ids.append(p.token_id(e[1], at))
            lps.append(p.logprob(e[0], at))
        if isinstance(r.get("output_ids"), list) and r["output_ids"] != ids:
            raise p.malformed(where, f"output_ids {r['output_ids']} differ from output_token_logprobs' ids {ids}")
        sent = len(req.prompt.token_ids)
        use = p.usage(_count(r, "prompt_tokens", sent), len(ids), sent, req.max_tokens)
        return SampleAnswer(token_ids=ids, pieces=None, logprobs=lps, usage=use, response_id=_rid(r))


class SGLangTokenize:
    """The server's tokenization of a text, no special tokens added (POST {root}/tokenize)."""

    name = "sglang_tokenize"

    def estimate(self, req: TokenizeRequest) -> tuple[float, float]:
        return 0.0, 0.0  # /tokenize runs no model

    async def send(self, client: AsyncOpenAI, model: str, req: TokenizeRequest) -> RawResponse:
        return await post_json(client, "tokenize", {"model": model, "prompt": req.text, "add_special_tokens": False})

    def parse(self, body: bytes, req: TokenizeRequest) -> TokenizeAnswer:
        return parse_tokenize(body, "sglang /tokenize")


def parse_tokenize(body: bytes, where: str) -> TokenizeAnswer:
    """{"tokens": [ids], ...} (vLLM's and SGLang's /tokenize); `count`, when present, must agree."""
    d = p.load_json(body, where)
    toks = p.field(d, "tokens", list, where)
    ids = [p.token_id(t, f"{where}: tokens[{i}]") for i, t in enumerate(toks)]
    if isinstance(d.get("count"), int) and d["count"] != len(ids):
        raise p.malformed(where, f"count is {d['count']} but {len(ids)} tokens are listed")
    return TokenizeAnswer(token_ids=ids, usage=p.usage(0, 0))
