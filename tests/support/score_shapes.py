"""The answer bodies of tests/support/score_server.py, built from ExactModel's exact logprobs.

Each function takes the parsed request and returns the JSON payload the real server would send
(docs/scoring.md has the shapes and where each comes from):

    sglang_generate(m, req, shift)    SGLang POST /generate: one result (a list of them for a batch)
    completions(m, req, shift)        POST /v1/completions: legacy echo/generation logprobs, and vLLM's
                                      prompt_logprobs when the request has `prompt_logprobs`
    tokenize(m, req)                  POST /tokenize (vLLM's and SGLang's shape)

A request the real server would refuse raises BadRequest(message) (the server answers 400).
"""

from __future__ import annotations

from typing import Any

from support.score_model import ExactModel

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs; larger k is refused with a 400, as vLLM does
MAX_MODEL_LEN = 8192


class BadRequest(ValueError):
    pass


def _k(v: Any, name: str) -> int:
    if v is None or v is False:
        return 0
    if v is True:
        return 1
    if not isinstance(v, int) or v < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    if v > MAX_LOGPROBS:
        raise BadRequest(f"{name}={v} is greater than the maximum allowed ({MAX_LOGPROBS})")
    return v


def _ids_list(v: Any, name: str) -> list[int]:
    if not isinstance(v, list) or not v or not all(type(t) is int for t in v):
        raise BadRequest(f"{name} must be a non-empty list of token ids")
    return v


# --- SGLang /generate -----------------------------------------------------------------------------


def sglang_generate(m: ExactModel, req: dict, shift: int = 0) -> dict | list[dict]:
    """SGLang's native /generate. `input_ids` (list, or list of lists = a batch) or `text` (str or list);
    sampling_params.max_new_tokens (0 = score only); return_logprob; logprob_start_len (-1: the last
    token only); top_logprobs_num; return_text_in_logprobs (triples carry the token text, else None).
    meta_info.input_token_logprobs: [logprob, id, text] for ids[start:], the first logprob None;
    input_top_logprobs: per position None or a list of triples (only when top_logprobs_num > 0)."""
    if "input_ids" in req:
        raw = req["input_ids"]
        batch = isinstance(raw, list) and bool(raw) and isinstance(raw[0], list)
        seqs = [_ids_list(s, "input_ids") for s in (raw if batch else [raw])]
    elif "text" in req:
        raw = req["text"]
        batch = isinstance(raw, list)
        texts = raw if batch else [raw]
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest("text must be a string or a list of strings")
        seqs = [m.encode(t) for t in texts]
    else:
        raise BadRequest("Either text or input_ids should be provided.")
    sp = req.get("sampling_params") or {}
    max_new = sp.get("max_new_tokens", 128)
    if not isinstance(max_new, int) or max_new < 0:
        raise BadRequest("max_new_tokens must be a non-negative integer")
    k = _k(req.get("top_logprobs_num", 0), "top_logprobs_num")
    out = [_sglang_one(m, ids, req, max_new, k, shift, n) for n, ids in enumerate(seqs)]
    return out if batch else out[0]


def _sglang_one(m: ExactModel, ids: list[int], req: dict, max_new: int, k: int, shift: int, n: int) -> dict:
    gen, glps, gtops = m.generate(ids, max_new, k)
    text = bool(req.get("return_text_in_logprobs"))
    meta: dict[str, Any] = {
        "id": f"sgl-{n}",
        "prompt_tokens": len(ids),
        "completion_tokens": len(gen),
        "finish_reason": {"type": "stop", "matched": m.eos_id}
        if gen and gen[-1] == m.eos_id
        else {"type": "length", "length": len(gen)},
    }
    if req.get("return_logprob"):
        start = req.get("logprob_start_len", -1)
        start = len(ids) - 1 if start is None or start < 0 else min(start, len(ids) - 1)
        lps, tops, _ = m.score(ids, k, shift)

        def tri(lp, t):
            return [lp, t, m.piece(t) if text else None]

        meta["input_token_logprobs"] = [tri(None, ids[start])] + [
            tri(lps[i], ids[i]) for i in range(start + 1, len(ids))
        ]
        meta["output_token_logprobs"] = [tri(lp, t) for lp, t in zip(glps, gen)]
        if k:
            meta["input_top_logprobs"] = [None] + [
                [tri(lp, t) for t, lp in tops[i]] for i in range(start + 1, len(ids))
            ]
            meta["output_top_logprobs"] = [[tri(lp, t) for t, lp in top] for top in gtops]
    return {"text": m.tokenizer.decode(gen), "output_ids": gen, "meta_info": meta}


# --- /v1/completions: legacy logprobs (echo or generated) and vLLM prompt_logprobs ----------------------


def _prompts(m: ExactModel, p: Any) -> list[tuple[list[int], str]]:
    """(ids, text) of each prompt: a string, a list of strings, a list of ids or a list of id lists."""
    if isinstance(p, str):
        return [(m.encode(p), p)]
    if isinstance(p, list) and p and all(type(t) is int for t in p):
        return [(p, m.tokenizer.decode(p))]
    if isinstance(p, list) and p:
        out = []
        for q in p:
            if isinstance(q, str):
                out.append((m.encode(q), q))
            else:
                q = _ids_list(q, "prompt")
                out.append((q, m.tokenizer.decode(q)))
        return out
    raise BadRequest("prompt must be a string, a list of strings, a list of token ids or a list of those")


def completions(m: ExactModel, req: dict, shift: int = 0) -> dict:
    """One choice per prompt (`index` = its position; n is always 1). `echo` puts the prompt's tokens
    (token_logprobs[0] and top_logprobs[0] null) before the generated ones; `logprobs: k` gives the
    legacy object (top_logprobs: dicts token string -> logprob, the chosen token added);
    `prompt_logprobs: k` gives vLLM's per-prompt-token dicts keyed by token id string
    ({"logprob", "rank", "decoded_token"}: the top k by rank, then the actual token if not among them);
    `return_tokens_as_token_ids` writes tokens as "token_id:<id>"."""
    max_tokens = req.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise BadRequest("max_tokens must be a non-negative integer")
    want_lp = req.get("logprobs") is not None
    k = _k(req.get("logprobs"), "logprobs")
    pk = req.get("prompt_logprobs")
    pk = None if pk is None else _k(pk, "prompt_logprobs")
    choices, usage_p, usage_c = [], 0, 0
    for i, (ids, text) in enumerate(_prompts(m, req.get("prompt"))):
        gen, glps, gtops = m.generate(ids, max_tokens, k)
        usage_p, usage_c = usage_p + len(ids), usage_c + len(gen)
        echo = bool(req.get("echo"))
        c: dict[str, Any] = {
            "index": i,
            "text": (text if echo else "") + m.tokenizer.decode(gen),
            "logprobs": None,
            "finish_reason": "stop" if gen and gen[-1] == m.eos_id else "length",
        }
        need = echo and want_lp or pk is not None
        lps, tops, ranks = m.score(ids, max(k, pk or 0), shift) if need else (None, None, None)
        if want_lp:
            c["logprobs"] = _legacy(m, req, ids, text, lps if echo else None, tops, k, gen, glps, gtops)
        if pk is not None:
            c["prompt_logprobs"] = [None] + [
                _vllm_entry(m, ids[j], lps[j], ranks[j], tops[j][:pk]) for j in range(1, len(ids))
            ]
            if req.get("return_token_ids"):
                c["prompt_token_ids"] = ids
        choices.append(c)
    usage = {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c}
    return {
        "id": "cmpl-score",
        "object": "text_completion",
        "model": req.get("model"),
        "choices": choices,
        "usage": usage,
    }


def _legacy(m, req, ids, text, lps, tops, k, gen, glps, gtops) -> dict:
    """The legacy logprobs object; the prompt's positions first when echoing (lps given)."""
    as_ids = bool(req.get("return_tokens_as_token_ids"))

    def name(t: int) -> str:
        return f"token_id:{t}" if as_ids else m.piece(t)

    def top(t: int, lp: float, pairs: list[tuple[int, float]]) -> dict[str, float]:
        d: dict[str, float] = {}
        for a, b in pairs[:k]:
            d.setdefault(name(a), b)  # two ids with the same text: the more likely one keeps the key
        d.setdefault(name(t), lp)
        return d

    toks, tlps, ttops, offs = [], [], [], []
    pos = 0 if lps is not None else len(text)
    if lps is not None:
        for j, t in enumerate(ids):
            toks.append(name(t))
            tlps.append(lps[j])
            ttops.append(None if j == 0 else top(t, lps[j], tops[j]))
            offs.append(pos)
            pos += len(m.piece(t))
    for t, lp, pairs in zip(gen, glps, gtops):
        toks.append(name(t))
        tlps.append(lp)
        ttops.append(top(t, lp, pairs))
        offs.append(pos)
        pos += len(m.piece(t))
    return {"tokens": toks, "token_logprobs": tlps, "top_logprobs": ttops if k else None, "text_offset": offs}


def _vllm_entry(m: ExactModel, t: int, lp: float, rank: int, top: list[tuple[int, float]]) -> dict:
    d = {str(a): {"logprob": b, "rank": r + 1, "decoded_token": m.piece(a)} for r, (a, b) in enumerate(top)}
    d.setdefault(str(t), {"logprob": lp, "rank": rank, "decoded_token": m.piece(t)})
    return d


# --- /tokenize -----------------------------------------------------------------------------------------


def tokenize(m: ExactModel, req: dict) -> dict:
    """vLLM's and SGLang's POST /tokenize: {"prompt": text, "add_special_tokens"} -> tokens, count, max_model_len."""
    p = req.get("prompt")
    if not isinstance(p, str):
        raise BadRequest("prompt must be a string")
    ids = list(m.tokenizer(p, add_special_tokens=bool(req.get("add_special_tokens", True)))["input_ids"])
    return {"tokens": ids, "count": len(ids), "max_model_len": MAX_MODEL_LEN}
