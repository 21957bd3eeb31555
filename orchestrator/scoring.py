"""Teacher scoring of samples: Samples -> ScoreBatches -> the transport -> Samples with teacher fields.

    scorer = Scorer(cfg.scorer, api_key, tokenizer, run_dir / SCORES_FILE)
    out = await scorer.score(samples)        # ScoreResult: scored samples (input order), stop reason
    await scorer.aclose()

Each sample's whole sequence (prompt_ids + completion_ids, multi-turn included) is scored once by the
`[scorer] type`'s score kind (orchestrator/kinds/score_*.py, SCORERS), `sequences_per_request` sequences
per request, through ONE transport built from `[scorer]` (endpoints, key, concurrency, rate limits,
retries) with the `[scorer.budget]` gate. Positions (orchestrator/kinds/score_types.py): the answer's
logprobs[i] is log p(ids[i] | ids[:i]), so completion token j is position len(prompt_ids) + j:
`teacher_logprobs[j] = logprobs[P + j]` for every completion token, and with top_k > 0
`teacher_topk_*[j] = topk[P + j]` at trained positions (completion_mask 1), [] elsewhere.

An answer whose token ids differ from the request's, or whose lengths are wrong, is refused
(ScoreError naming the sample). Every answer is recorded (orchestrator/score_store.py) before use; a
sequence already recorded is never sent again, unless its record fails today's checks (record_problem: e.g.
a top-k id beyond the student's vocabulary, recorded by an older distill): it is noted and asked again. A
budget stop ends the call cleanly (the stop reason is returned; what was answered is recorded, so a rerun
resumes).
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from distill.core.config import key_from_env
from distill.core.contract import Sample
from distill.core.redact import redact_url
from orchestrator.budget import BudgetGate
from orchestrator.kinds import SCORERS
from orchestrator.kinds.score_types import ScoreBatch, ScoreSeq, SeqScores
from orchestrator.limits import RetryPolicy
from orchestrator.recording import RecordingWriter
from orchestrator.score_store import load_scores, make_score_record, record_problem, record_scores, score_key
from orchestrator.transport import StopRequested, TeacherError, Transport


_FIX = (
    ". Fix: check the scorer (is it up, serving scorer.model? `distill probe URL --scorer TYPE` runs its "
    "self-tests), then rerun the same command: it resumes, answers recorded in scores.jsonl are not asked again"
)


class ScoreError(Exception):
    """Scoring cannot go on: a wrong answer (naming the sample), a request failed for good, a bad setup."""


def scorer_api_key(sc: Any) -> str:
    """The key from the environment variable named by scorer.api_key_var ("EMPTY" when none is named)."""
    if not sc.api_key_var:
        return "EMPTY"
    return key_from_env(sc.api_key_var, lambda fix: ScoreError(f"scorer.api_key_var {fix}"))


def make_transport(sc: Any, key: str) -> Transport:
    """The scorer's transport: its endpoint(s), concurrency, retries and rate limits."""
    return Transport(
        [sc.base_url, *sc.extra_base_urls],
        sc.model,
        key,
        headers=sc.headers,
        timeout=sc.timeout,
        concurrency=sc.concurrency,
        retry=RetryPolicy(sc.retry.max_attempts, sc.retry.initial_backoff, sc.retry.max_backoff),
        requests_per_minute=sc.requests_per_minute,
        tokens_per_minute=sc.tokens_per_minute,
    )


def scorer_kinds(sc: Any):
    kinds = SCORERS.get(sc.type)
    if kinds is None:
        known = ", ".join(sorted(SCORERS)) or "none installed"
        raise ScoreError(f"scorer.type = {sc.type!r} has no request kind in this distill (known: {known})")
    return kinds


def piece_to_id(tokenizer: Any) -> dict[str, int]:
    """The student's token text -> id map the echo kind reads the teacher's token strings with."""
    from orchestrator.kinds.score_echo import piece_table

    return piece_table(tokenizer)


def make_kinds(sc: Any, tokenizer: Any, pieces: dict[str, int] | None = None) -> tuple[Any, Any, Any]:
    """The `[scorer] type`'s score, sample and tokenize kinds (the echo ones with the student's piece table)."""
    kinds = scorer_kinds(sc)
    if sc.type != "echo":
        return kinds.score(), kinds.sample(), kinds.tokenize()
    pieces = pieces if pieces is not None else piece_to_id(tokenizer)
    return (
        kinds.score(piece_to_id=pieces, echo_max_tokens=sc.echo_max_tokens),
        kinds.sample(),
        kinds.tokenize(echo_max_tokens=sc.echo_max_tokens),
    )


def make_score_kind(sc: Any, tokenizer: Any):
    return make_kinds(sc, tokenizer)[0]


def make_seq(token_ids: list[int], tokenizer: Any, with_text: bool) -> ScoreSeq:
    """A sequence to score; with its text and per-token pieces (the student's) for the echo kind."""
    if not with_text:
        return ScoreSeq(list(token_ids))
    from orchestrator.kinds.score_echo import token_pieces

    return ScoreSeq(list(token_ids), text=tokenizer.decode(token_ids), pieces=token_pieces(tokenizer, token_ids))


class ScoreGate:
    """The `[scorer.budget]` gate: orchestrator.budget.BudgetGate counting scored (prompt) tokens where it
    counts completion tokens, so max_prompt_tokens and max_cost are never exceeded and max_requests is exact.
    A server that reports no usage is charged the request's token count."""

    _REASONS = {"budget:max_completion_tokens": "budget:max_prompt_tokens"}

    def __init__(self, budget: Any, prior_requests: float = 0, prior_tokens: float = 0, stop_event=None):
        adapted = type(
            "B",
            (),
            dict(
                max_requests=budget.max_requests,
                max_completion_tokens=budget.max_prompt_tokens,
                cost_per_1k_prompt=0.0,
                cost_per_1k_completion=budget.cost_per_1k_prompt,
                max_cost=budget.max_cost,
            ),
        )
        self.inner = BudgetGate(adapted, prior_requests=int(prior_requests), prior_completion=prior_tokens)
        self.inner.stop_event = stop_event

    @property
    def stop_reason(self) -> str | None:
        r = self.inner.stop_reason
        return self._REASONS.get(r, r) if r else None

    def stopped(self) -> bool:
        return self.inner.stopped()

    def cost(self) -> float:
        return self.inner.cost()

    async def reserve(self, est_p: float, est_c: float) -> None:
        try:
            await self.inner.reserve(est_c, est_p)
        except StopRequested as e:
            raise StopRequested(self._REASONS.get(str(e), str(e))) from None

    def settle(self, est_p: float, est_c: float, usage: dict[str, int] | None) -> None:
        swapped = None
        if usage is not None:
            swapped = {"prompt_tokens": 0, "completion_tokens": usage.get("prompt_tokens") or int(est_p)}
        self.inner.settle(est_c, est_p, swapped)


def check_answer(seq: ScoreSeq, got: SeqScores, top_k: int, who: str) -> None:
    """Refuse (ScoreError naming `who`) an answer that is not about the request's tokens."""
    ids = seq.token_ids
    if got.token_ids is not None and list(got.token_ids) != list(ids):
        i = next((i for i, (a, b) in enumerate(zip(ids, got.token_ids)) if a != b), min(len(ids), len(got.token_ids)))
        a = ids[i] if i < len(ids) else "(end)"
        b = got.token_ids[i] if i < len(got.token_ids) else "(end)"
        raise ScoreError(
            f"{who}: the scorer scored other tokens than were sent (first difference at position {i}: sent {a}, "
            f"scored {b}; {len(ids)} sent, {len(got.token_ids)} scored). The teacher must use the student's "
            "tokenizer; run `distill probe URL --scorer TYPE` to see which self-test fails"
        )
    if len(got.logprobs) != len(ids):
        raise ScoreError(f"{who}: the scorer returned {len(got.logprobs)} logprobs for {len(ids)} tokens")
    if top_k > 0 and (got.topk is None or len(got.topk) != len(ids)):
        n = "none" if got.topk is None else len(got.topk)
        raise ScoreError(f"{who}: scorer.top_k = {top_k} but the scorer returned top-k for {n} of {len(ids)} tokens")


def fill(sample: Sample, got: SeqScores, top_k: int) -> Sample:
    """`sample` with its teacher fields from the scores of its whole sequence (see the module docstring)."""
    p = len(sample.prompt_ids)
    lps: list[float | None] = []
    for j, trained in enumerate(sample.completion_mask):
        x = got.logprobs[p + j]
        ok = isinstance(x, (int, float)) and math.isfinite(x)
        if trained and not ok:
            raise ScoreError(
                f"sample {sample.sample_id}: the scorer gave no finite logprob at trained position {p + j} "
                f"(completion token {j}): {x!r}"
            )
        lps.append(float(x) if ok else None)
    if top_k <= 0:
        return replace(sample, teacher_logprobs=lps)
    assert got.topk is not None
    ids = [[int(t) for t, _ in got.topk[p + j]] if m else [] for j, m in enumerate(sample.completion_mask)]
    tlp = [[float(lp) for _, lp in got.topk[p + j]] if m else [] for j, m in enumerate(sample.completion_mask)]
    return replace(sample, teacher_logprobs=lps, teacher_topk_ids=ids, teacher_topk_logprobs=tlp)


def note_failing(path: str | os.PathLike, failing: dict[str, str]) -> None:
    """Tell once that recorded answers fail today's checks and are asked for again."""
    if failing:
        first = next(iter(failing.values()))
        print(
            f"distill: note: {len(failing)} answer(s) recorded in {path} fail the checks of this distill "
            f"(first, {first}); they are not reused: those sequences are scored again",
            file=sys.stderr,
        )


@dataclass
class ScoreResult:
    scored: list[Sample] = field(default_factory=list)  # in input order; those not scored are left out
    stop_reason: str | None = None  # a budget or stop signal ended the call early
    sent: int = 0  # requests answered in this call
    reused: int = 0  # sequences found in the recording (not sent)


class Scorer:
    """Scores samples with the `[scorer]` teacher, recording every answer (module docstring)."""

    def __init__(self, sc: Any, api_key: str, tokenizer: Any, scores_path: str | os.PathLike, stop_event=None):
        self.sc = sc
        self.tokenizer = tokenizer
        self.kind = make_score_kind(sc, tokenizer)
        self.vocab = len(tokenizer)  # a top-k id at or beyond it is refused (ScoreBatch.vocab)
        self.loaded = load_scores(scores_path, check=lambda rec: record_problem(rec, self.vocab))
        self.records = self.loaded.records
        note_failing(scores_path, self.loaded.failing)
        self.transport = make_transport(sc, api_key)
        self.gate = ScoreGate(sc.budget, self.loaded.requests, self.loaded.prompt_tokens, stop_event)
        self.writer = RecordingWriter(Path(scores_path))
        self.short_topk = 0  # trained positions answered with fewer top-k entries than scorer.top_k

    def key(self, ids: list[int]) -> str:
        return score_key(self.sc.type, self.sc.model, self.sc.top_k, ids)

    async def score(self, samples: list[Sample], on_scored: Callable[[int], None] | None = None) -> ScoreResult:
        """Score `samples` (recorded answers reused); raises ScoreError on a wrong answer or a failed request."""
        res = ScoreResult()
        keys = [self.key(s.prompt_ids + s.completion_ids) for s in samples]
        todo: dict[str, Sample] = {}
        for k, s in zip(keys, samples):
            if k in self.records:
                res.reused += 1
            else:
                todo.setdefault(k, s)
        if on_scored and res.reused:
            on_scored(res.reused)
        items = list(todo.items())
        n = self.sc.sequences_per_request
        batches = [items[i : i + n] for i in range(0, len(items), n)]
        errors: list[ScoreError] = []
        await asyncio.gather(*(self._one(b, res, errors, on_scored) for b in batches))
        res.stop_reason = self.gate.stop_reason
        if errors:
            raise errors[0]
        for k, s in zip(keys, samples):
            if k in self.records:
                res.scored.append(fill(s, record_scores(self.records[k]), self.sc.top_k))
        return res

    async def _one(self, batch, res: ScoreResult, errors: list, on_scored) -> None:
        if errors:
            return
        with_text = self.sc.type == "echo"
        seqs = [make_seq(s.prompt_ids + s.completion_ids, self.tokenizer, with_text) for _, s in batch]
        try:
            d = await self.transport.request(self.kind, ScoreBatch(seqs, self.sc.top_k, self.vocab), gate=self.gate)
        except StopRequested:
            return
        except TeacherError as e:
            ids = ", ".join(s.sample_id for _, s in batch)
            errors.append(
                ScoreError(f"scoring sample(s) {ids} failed at {self._where()}: {e.reason}: {e.detail}{_FIX}")
            )
            return
        try:
            if len(d.answer.seqs) != len(seqs):
                raise ScoreError(f"the scorer answered {len(d.answer.seqs)} sequences for {len(seqs)} sent")
            for (_, s), seq, got in zip(batch, seqs, d.answer.seqs):
                check_answer(seq, got, self.sc.top_k, f"sample {s.sample_id}")
                # fill refuses a missing logprob at a trained position before recording
                self._note_short_topk(fill(s, got, self.sc.top_k))
        except ScoreError as e:
            errors.append(e)
            return
        except ValueError as e:  # the sample contract refused the teacher fields (a kind let a bad value through)
            errors.append(ScoreError(f"the scorer's answer cannot be used: {e}"))
            return
        meta = dict(
            usage=d.answer.usage,
            usage_shared_by=len(seqs),
            endpoint=d.endpoint,
            request_id=d.request_id,
            t_start=d.t_start,
            t_end=d.t_end,
        )
        recs = [
            make_score_record(k, self.sc.type, self.sc.model, self.sc.top_k, got, **meta)
            for (k, _), got in zip(batch, d.answer.seqs)
        ]
        await self.writer.append(recs)
        for r in recs:
            self.records[r["key"]] = r
        res.sent += 1
        if on_scored:
            on_scored(len(batch))

    def _note_short_topk(self, filled: Sample) -> None:
        """Count trained positions whose top-k is shorter than scorer.top_k (kept: the loss's tail bucket takes
        the rest of the teacher's mass); the first is told once per run."""
        want = min(self.sc.top_k, self.vocab)
        rows = filled.teacher_topk_ids or []
        short = [(j, len(r)) for j, (r, m) in enumerate(zip(rows, filled.completion_mask)) if m and len(r) < want]
        if short and not self.short_topk:
            j, n = short[0]
            print(
                f"distill: warning: the scorer answered fewer than scorer.top_k = {self.sc.top_k} alternatives at "
                f"a trained position (first: sample {filled.sample_id}, completion token {j}: {n}); such positions "
                "are kept, and topk_kl puts the rest of the teacher's mass in its tail bucket. A server may cap k "
                "(vLLM: --max-logprobs); the echo kind leaves out token strings the student's tokenizer lacks",
                file=sys.stderr,
            )
        self.short_topk += len(short)

    def _where(self) -> str:
        """The scorer's endpoint(s), redacted."""
        more = len(self.sc.extra_base_urls)
        return f"the scorer {redact_url(self.sc.base_url)}" + (f" (or one of {more} more endpoints)" if more else "")

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.transport.close()
