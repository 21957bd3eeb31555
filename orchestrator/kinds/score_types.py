"""What every scoring kind takes and gives back (orchestrator/kinds/score_*.py).

A scoring request asks the teacher for the log-probability of every token of one or more given
sequences. The kinds differ in how they ask (vLLM prompt_logprobs, SGLang input_token_logprobs,
legacy-completions echo) but all answer in the same shape, position by position over the whole
sequence: position 0 has no logprob (nothing precedes it), position i > 0 holds
log p_teacher(ids[i] | ids[:i]) and, when top_k > 0, the teacher's top-k alternatives for that
same position (the distribution that produced ids[i]), as (token id, logprob) pairs sorted by
logprob, highest first, with the scored token added when it is not among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreSeq:
    """One sequence to score: the student's token ids, and (echo kind only) the text they decode to."""

    token_ids: list[int]
    text: str | None = None


@dataclass(frozen=True)
class ScoreBatch:
    """One scoring request: sequences sent together (a prompt list where the API takes one), and top-k."""

    seqs: list[ScoreSeq]
    top_k: int = 0


@dataclass
class SeqScores:
    """The teacher's scores of one sequence, one entry per token (see the module docstring)."""

    # logprobs[0] is None; logprobs[i] = log p(ids[i] | ids[:i])
    logprobs: list[float | None]
    # topk[i]: [(token id, logprob), ...] for position i ([] at 0); None when top_k == 0
    topk: list[list[tuple[int, float]]] | None = None
    # The token ids the server says it scored (vLLM/SGLang echo them back; echo kind: mapped from its
    # token strings). Checked against the request's ids by the caller.
    token_ids: list[int] | None = None


@dataclass
class ScoreAnswer:
    """A kind's parse() result for one ScoreBatch: one SeqScores per sequence, in request order."""

    seqs: list[SeqScores]
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens
    response_id: str | None = None
