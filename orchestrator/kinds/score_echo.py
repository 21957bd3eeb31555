"""Hosted legacy completions as a scorer (`[scorer] type = "echo"`; base_url up to and including /v1).

    EchoScore     POST {base_url}/completions
                  {"model", "prompt": text (one sequence) | [text, ...] (several), "echo": true,
                   "logprobs": max(k, 1), "max_tokens": echo_max_tokens (0 or 1), "temperature": 0}
                  -> choices[i] (`index` = the prompt's position) .logprobs:
                     {"tokens": [str], "token_logprobs": [null, float, ...], "top_logprobs": [null,
                      {token string: logprob}, ...], "text_offset": [int]}
                  the prompt's tokens first, then up to echo_max_tokens generated ones (ignored)
    EchoSample    POST {base_url}/completions {"model", "prompt": text, "max_tokens": m, "temperature": 0,
                   "logprobs": 1} -> choices[0].logprobs.tokens / token_logprobs of the generated tokens
    EchoTokenize  the EchoScore request with logprobs 1 -> the echoed token strings that spell the text

The server tokenises the text itself and answers in ITS tokens, as strings. A score is usable only when
they are the student's: parse compares the server's strings with ScoreSeq.pieces one by one, and the
first difference is a non-retryable `tokenizer_mismatch` naming the position and both strings
(cross-tokenizer distillation is not supported). Top-k strings map to ids through `piece_to_id`, the
student's token text -> id table (`piece_table`); a string that is not there, or that several ids share,
is left out of that position's top-k (the tail bucket of topk_kl absorbs its mass). The first position
has no logprob (null), like everywhere else.

llama-cpp-python's server: its echo logprobs are shifted by one position (token i scored under the
distribution of token i+1; the alignment self-test refuses it, tests/orchestrator/kinds/test_score_echo.py
shows it on the real server), it treats `max_tokens: 0` as "no limit" (keep echo_max_tokens = 1) and it
refuses a prompt list (keep sequences_per_request = 1).
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
    ScoreSeq,
    SeqScores,
    TokenizeAnswer,
    TokenizeRequest,
)
from orchestrator.transport import RawResponse, ResponseError, post_json


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text alone (what a legacy-completions `tokens` entry shows): ScoreSeq.pieces."""
    return [tokenizer.decode([t]) for t in ids]


def piece_table(tokenizer: Any) -> dict[str, int]:
    """token text -> id for every token whose text no other token shares (EchoScore's `piece_to_id`)."""
    seen: dict[str, int] = {}
    shared: set[str] = set()
    for t in range(len(tokenizer)):
        s = tokenizer.decode([t])
        if s in seen:
            shared.add(s)
        seen[s] = t
    return {s: t for s, t in seen.items() if s not in shared}


def _check_seq(s: ScoreSeq) -> None:
    if s.text is None or s.pieces is None or len(s.pieces) != len(s.token_ids):
        raise ValueError("the echo scorer needs each ScoreSeq's text and one piece per token id (token_pieces)")


def _completions_body(model: str, prompt: Any, k: int, max_tokens: int, echo: bool) -> dict:
    body = {"model": model, "prompt": prompt, "logprobs": max(k, 1), "max_tokens": max_tokens, "temperature": 0}
    if echo:
        body["echo"] = True
    return body


class EchoScore:
    """Scores a text through echo + logprobs, mapped onto the student's tokens (see the module docstring)."""

    name = "echo_score"

    def __init__(self, piece_to_id: dict[str, int] | None = None, echo_max_tokens: int = 1):
        self.piece_to_id = piece_to_id or {}
        self.echo_max_tokens = echo_max_tokens

    def estimate(self, req: ScoreBatch) -> tuple[float, float]:
        for s in req.seqs:
            _check_seq(s)
        return float(sum(len(s.token_ids) for s in req.seqs)), float(self.echo_max_tokens * len(req.seqs))

    async def send(self, client: AsyncOpenAI, model: str, req: ScoreBatch) -> RawResponse:
        texts = [s.text for s in req.seqs]
        prompt = texts if len(texts) > 1 else texts[0]
        return await post_json(
            client, "completions", _completions_body(model, prompt, req.top_k, self.echo_max_tokens, True)
        )

    def parse(self, body: bytes, req: ScoreBatch) -> ScoreAnswer:
        d = p.load_json(body, "echo /completions")
        choices = _choices(d, len(req.seqs), "echo /completions")
        seqs = [self._seq(c, s, req.top_k, n) for n, (c, s) in enumerate(zip(choices, req.seqs))]
        for n, s in enumerate(seqs):
            p.check_topk(s, req.vocab, f"echo /completions, sequence {n}: top_logprobs")
        counted = sum(len(s.token_ids) for s in req.seqs)
        return ScoreAnswer(
            seqs=seqs, usage=p.body_usage(d, counted, 0, self.echo_max_tokens * len(req.seqs)), response_id=_rid(d)
        )

    def _seq(self, c: Any, s: ScoreSeq, k: int, n: int) -> SeqScores:
        where = f"echo /completions, sequence {n}"
        toks, tlps, tops = _logprobs(c, where, k > 0)
        pieces = s.pieces or []
        _same_tokens(toks, pieces, self.echo_max_tokens, where)
        lps: list[float | None] = [None] + [
            p.logprob(tlps[i], f"{where}: token_logprobs[{i}]") for i in range(1, len(pieces))
        ]
        topk = None
        if k:
            topk = [[]]
            for i in range(1, len(pieces)):
                lp = lps[i]
                assert lp is not None
                topk.append(p.with_scored(self._top(tops[i], f"{where}: top_logprobs[{i}]"), s.token_ids[i], lp))
        return SeqScores(logprobs=lps, topk=topk, token_ids=list(s.token_ids))

    def _top(self, entry: Any, at: str) -> list[tuple[int, float]]:
        if not isinstance(entry, dict):
            raise p.malformed(at, f"expected an object token string -> logprob, got {type(entry).__name__}")
        out = []
        for piece, v in entry.items():
            lp = p.logprob(v, f"{at}[{piece!r}]")
            tid = self.piece_to_id.get(piece)
            if tid is not None:  # unknown or shared strings are left out (the tail bucket takes their mass)
                out.append((tid, lp))
        return out


def _choices(d: Any, n: int, where: str) -> list:
    """The choices in prompt order: by `index` when it numbers them 0..n-1, else by position."""
    raw = p.field(d, "choices", list, where)
    if len(raw) != n:
        raise p.malformed(where, f"{len(raw)} choices for {n} prompts")
    idx = [c.get("index") if isinstance(c, dict) else None for c in raw]
    if sorted(i for i in idx if type(i) is int) == list(range(n)):
        return [c for _, c in sorted(zip(idx, raw), key=lambda t: t[0])]
    return raw


def _logprobs(c: Any, where: str, want_top: bool) -> tuple[list, list, list]:
    lp = p.field(c, "logprobs", dict, where)
    toks = p.field(lp, "tokens", list, f"{where}: logprobs")
    tlps = p.sized(p.field(lp, "token_logprobs", list, f"{where}: logprobs"), len(toks), f"{where}: token_logprobs")
    tops: list = []
    if want_top:
        tops = p.sized(p.field(lp, "top_logprobs", list, f"{where}: logprobs"), len(toks), f"{where}: top_logprobs")
    for i, t in enumerate(toks):
        if not isinstance(t, str):
            raise p.malformed(f"{where}: tokens[{i}]", f"{t!r} is not a string")
    return toks, tlps, tops


def _same_tokens(toks: list[str], pieces: list[str], extra: int, where: str) -> None:
    """The server's first len(pieces) token strings must be the student's pieces; at most `extra` more."""
    for i, (a, b) in enumerate(zip(toks, pieces)):
        if a != b:
            raise ResponseError(
                "tokenizer_mismatch",
                f"{where}: at token {i} the teacher has {a!r} where the student has {b!r}: the teacher tokenises "
                "the text differently; cross-tokenizer distillation is not supported",
                retryable=False,
            )
    if len(toks) < len(pieces):
        raise ResponseError(
            "tokenizer_mismatch",
            f"{where}: the teacher echoed {len(toks)} tokens where the student has {len(pieces)} "
            f"(first missing: {pieces[len(toks)]!r}); cross-tokenizer distillation is not supported",
            retryable=False,
        )
    if len(toks) > len(pieces) + extra:
        raise ResponseError(
            "tokenizer_mismatch",
            f"{where}: the teacher echoed {len(toks)} tokens, {len(toks) - len(pieces)} more than the student's "
            f"{len(pieces)} (first extra: {toks[len(pieces)]!r}; at most echo_max_tokens = {extra} generated ones "
            "are expected; llama-cpp-python takes max_tokens 0 as no limit: set echo_max_tokens = 1)",
            retryable=False,
        )


def _rid(d: Any) -> str | None:
    rid = d.get("id") if isinstance(d, dict) else None
    return rid if isinstance(rid, str) else None


class EchoSample:
    """Greedy generation with the logprob of each generated token, as token strings (legacy logprobs)."""

    name = "echo_sample"

    def estimate(self, req: SampleRequest) -> tuple[float, float]:
        return float(len(req.prompt.token_ids)), float(req.max_tokens)

    async def send(self, client: AsyncOpenAI, model: str, req: SampleRequest) -> RawResponse:
        if req.prompt.text is None:
            raise ValueError("the echo scorer samples from text: SampleRequest.prompt.text is needed")
        return await post_json(
            client, "completions", _completions_body(model, req.prompt.text, 0, req.max_tokens, False)
        )

    def parse(self, body: bytes, req: SampleRequest) -> SampleAnswer:
        where = "echo /completions (sample)"
        d = p.load_json(body, where)
        toks, tlps, _ = _logprobs(_choices(d, 1, where)[0], where, False)
        if not toks:
            raise p.malformed(where, "no generated token")
        lps = [p.logprob(v, f"{where}: token_logprobs[{i}]") for i, v in enumerate(tlps)]
        return SampleAnswer(
            token_ids=None,
            pieces=toks,
            logprobs=lps,
            usage=p.body_usage(d, len(req.prompt.token_ids), len(toks), req.max_tokens),
            response_id=_rid(d),
        )


class EchoTokenize:
    """The teacher's tokens of a text as strings: the echoed tokens up to the text's end (the generated
    token, if listed, is dropped); they must spell the text exactly."""

    name = "echo_tokenize"

    def __init__(self, echo_max_tokens: int = 1):
        self.echo_max_tokens = echo_max_tokens

    def estimate(self, req: TokenizeRequest) -> tuple[float, float]:
        return len(req.text) / 4.0, float(self.echo_max_tokens)

    async def send(self, client: AsyncOpenAI, model: str, req: TokenizeRequest) -> RawResponse:
        return await post_json(client, "completions", _completions_body(model, req.text, 0, self.echo_max_tokens, True))

    def parse(self, body: bytes, req: TokenizeRequest) -> TokenizeAnswer:
        where = "echo /completions (tokenize)"
        d = p.load_json(body, where)
        toks, _, _ = _logprobs(_choices(d, 1, where)[0], where, False)
        kept, text = [], ""
        for t in toks:
            if len(text) >= len(req.text):
                break
            kept.append(t)
            text += t
        if text != req.text:
            raise ResponseError(
                "tokenizer_mismatch",
                f"{where}: the echoed tokens spell {text!r}, not the text sent {req.text!r}",
                retryable=False,
            )
        return TokenizeAnswer(
            token_ids=None, pieces=kept, usage=p.body_usage(d, len(kept), 0, self.echo_max_tokens), response_id=_rid(d)
        )
