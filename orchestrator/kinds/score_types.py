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
    """One sequence to score: the student's token ids and, for the echo kind (which sends text and gets the
    teacher's own token strings back), the text they decode to and each token's text piece."""

    token_ids: list[int]
    text: str | None = None
    pieces: list[str] | None = None


@dataclass(frozen=True)
class ScoreBatch:
    """One scoring request: sequences sent together (a prompt list where the API takes one), and top-k."""

    seqs: list[ScoreSeq]
    top_k: int = 0
    # The student's vocabulary size (len of its tokenizer): a top-k id at or beyond it is a malformed answer
    # (score_parse.check_topk). 0: not known, not checked.
    vocab: int = 0


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


# --- the two requests the self-tests need besides scoring (orchestrator/score_check.py) ---


@dataclass(frozen=True)
class SampleRequest:
    """Let the teacher generate up to `max_tokens` tokens greedily after `prompt` (ids; text for echo),
    reporting the logprob of each generated token as computed while sampling (the alignment self-test)."""

    prompt: ScoreSeq
    max_tokens: int = 16


@dataclass
class SampleAnswer:
    # The generated tokens: ids where the server gives them (vLLM, SGLang), else their text pieces (echo).
    token_ids: list[int] | None
    pieces: list[str] | None
    # The sampling-time logprob of each generated token.
    logprobs: list[float]
    usage: dict[str, int] = field(default_factory=dict)
    response_id: str | None = None


@dataclass(frozen=True)
class TokenizeRequest:
    """How the teacher tokenises `text` (no special tokens added): the tokenizer-identity self-test."""

    text: str


@dataclass
class TokenizeAnswer:
    # Token ids where the server gives them (vLLM /tokenize, SGLang), else the token text pieces (echo).
    token_ids: list[int] | None
    pieces: list[str] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    response_id: str | None = None


@dataclass(frozen=True)
class ScorerKinds:
    """The three request kinds of one `[scorer] type` (each a transport.RequestKind, built without arguments
    except `score`, which the echo kind builds with `piece_to_id`, the student's token text -> id map)."""

    score: type  # RequestKind[ScoreBatch, ScoreAnswer]
    sample: type  # RequestKind[SampleRequest, SampleAnswer]
    tokenize: type  # RequestKind[TokenizeRequest, TokenizeAnswer]
