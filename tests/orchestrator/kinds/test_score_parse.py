"""The checks every scoring kind shares (orchestrator/kinds/score_parse.py): a top-k row must hold ids of the
student's vocabulary, each once, with finite log-probabilities; SGLang's and echo's answers go through it."""

from __future__ import annotations

import json

import pytest

from orchestrator.kinds.score_parse import topk_problem
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


def _sglang_body(top: list) -> bytes:
    ids = [1, 2, 3]
    meta = {
        "prompt_tokens": 3,
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
