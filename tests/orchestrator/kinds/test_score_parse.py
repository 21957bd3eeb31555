"""The checks every scoring kind shares (orchestrator/kinds/score_parse.py): a top-k row must hold ids of the
student's vocabulary, each once, with finite log-probabilities; SGLang's and echo's answers go through it."""

from __future__ import annotations

import json

import pytest

from orchestrator.kinds.score_parse import body_usage, topk_problem
from orchestrator.kinds.score_sglang import SGLangScore
from orchestrator.kinds.score_types import ScoreBatch, ScoreSeq
from orchestrator.transport import ResponseError


@pytest.mark.parametrize(
    "row, words",
    [
        ([(5, -0.1), (10, -2.0)], "token id 10 is not in the student's vocabulary (ids 0..9)"),
        ([(5, -0.1), (-1, -2.0)], "token id -1 is not a non-negative integer"),
        ([(5, -0.1), (5, -2.0)], "token id 5 is listed twice"),
        ([(5, float("nan"))], "logprob nan of token 5"),
        ([(5, 0.5)], "logprob 0.5 of token 5"),
        ([[5]], "is not an (id, logprob) pair"),
    ],
)
def test_topk_problem_names_what_is_wrong(row, words):
    assert words in (topk_problem(row, 10) or "")


def test_a_good_row_passes_and_vocab_0_leaves_the_upper_bound_unchecked():
    assert topk_problem([(5, -0.1), (9, -2.0)], 10) is None
    assert topk_problem([(10_000_000, -0.1)], 0) is None


def _sglang_body(top: list, prompt_tokens=3) -> bytes:
    ids = [1, 2, 3]
    meta = {
        "prompt_tokens": prompt_tokens,
        "input_token_logprobs": [[None, 1, None], [-0.5, 2, None], [-0.25, 3, None]],
        "input_top_logprobs": [None, [[-0.5, 2, None], [-1.5, 4, None]], top],
    }
    return json.dumps({"text": "", "output_ids": [], "meta_info": meta, "ids": ids}).encode()


@pytest.mark.parametrize(
    "top, words",
    [
        ([[-0.25, 3, None], [-1.0, 10_000_000, None]], "token id 10000000 is not in the student's vocabulary"),
        ([[-0.25, 3, None], [-1.0, 4, None], [-1.0, 4, None]], "token id 4 is listed twice"),
    ],
)
def test_sglang_refuses_an_id_beyond_the_vocabulary_or_listed_twice(top, words):
    req = ScoreBatch([ScoreSeq([1, 2, 3])], 2, vocab=100)
    with pytest.raises(ResponseError) as ei:
        SGLangScore().parse(_sglang_body(top), req)
    assert ei.value.reason == "malformed_response" and ei.value.retryable
    assert "input_top_logprobs: top-k at position 2" in ei.value.detail and words in ei.value.detail
    good = SGLangScore().parse(_sglang_body([[-0.25, 3, None], [-1.0, 4, None]]), req)
    assert good.seqs[0].topk[2] == [(3, -0.25), (4, -1.0)]


@pytest.mark.parametrize(
    "count, words", [(-(10**9), "is not a count of tokens"), (10**15, "is more than 12 (4 x the 3")]
)
def test_sglang_refuses_a_usage_that_would_credit_or_drain_the_budget(count, words):
    req = ScoreBatch([ScoreSeq([1, 2, 3])], 2, vocab=100)
    with pytest.raises(ResponseError) as ei:
        SGLangScore().parse(_sglang_body([[-0.25, 3, None]], prompt_tokens=count), req)
    assert ei.value.reason == "malformed_response" and words in ei.value.detail


def test_echo_counts_the_tokens_itself_when_the_usage_is_absurd():
    body = {"usage": {"prompt_tokens": 10**15, "completion_tokens": 10**15}}
    assert body_usage(body, 7, 1, completion_cap=1) == {"prompt_tokens": 7, "completion_tokens": 1}
    body = {"usage": {"prompt_tokens": 8, "completion_tokens": 1}}  # a BOS the server adds is believed
    assert body_usage(body, 7, 1, completion_cap=1) == {"prompt_tokens": 8, "completion_tokens": 1}
