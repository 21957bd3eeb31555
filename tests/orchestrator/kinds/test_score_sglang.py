"""The SGLang scoring kinds through the real Transport against the exact-logprob score server
(SmolLM2-135M in fp32 in this process): values equal to the same weights evaluated directly, top-k,
batches, retried 5xx, every malformed body a clear error, and an off-by-one server caught."""

from __future__ import annotations

import pytest
import torch

from orchestrator.kinds import SCORERS
from orchestrator.kinds.score_sglang import SGLangSample, SGLangScore, SGLangTokenize
from orchestrator.kinds.score_types import SampleRequest, ScoreBatch, ScoreSeq, TokenizeRequest
from orchestrator.transport import NonRetryableError
from support.score_helpers import ask, ask_error, chat_ids

TOL = 1e-5  # same weights, same process, fp32: only the JSON round trip in between (exact for floats)


@pytest.fixture(scope="module")
def seqs(exact_model):
    """A multi-turn chat, a single turn and a plain sentence: three lengths."""
    tok = exact_model.tokenizer
    return [chat_ids(tok, 2), chat_ids(tok, 1), exact_model.encode("The capital of France is Paris.")]


def close(a: list, b: list) -> bool:
    return len(a) == len(b) and a[0] is None and b[0] is None and max(abs(x - y) for x, y in zip(a[1:], b[1:])) < TOL


def test_registered():
    assert SCORERS["sglang"].score is SGLangScore
    assert SCORERS["sglang"].sample is SGLangSample
    assert SCORERS["sglang"].tokenize is SGLangTokenize


def test_scores_every_position_of_a_multi_turn_chat_exactly(score_server, exact_model, seqs):
    ids = seqs[0]
    d = ask(score_server.root, SGLangScore(), ScoreBatch([ScoreSeq(ids)]))
    (s,) = d.answer.seqs
    assert s.token_ids == ids and s.topk is None
    assert close(s.logprobs, exact_model.direct(ids))
    assert d.answer.usage == {"prompt_tokens": len(ids), "completion_tokens": 0}
    path, body = score_server.requests_seen[-1]
    assert path == "/generate" and body["input_ids"] == ids  # one sequence: a flat list
    assert body["sampling_params"]["max_new_tokens"] == 0 and body["logprob_start_len"] == 0


def test_top_k_is_the_models_top_k_with_the_scored_token_added(score_server, exact_model, seqs):
    ids, k = seqs[0], 5
    (s,) = ask(score_server.root, SGLangScore(), ScoreBatch([ScoreSeq(ids)], top_k=k)).answer.seqs
    rows = exact_model.rows(ids)
    assert s.topk[0] == []
    added = 0
    for i in range(1, len(ids)):
        v, j = torch.topk(rows[i - 1], k)
        want = list(zip(j.tolist(), v.tolist()))
        if ids[i] not in j.tolist():
            want.append((ids[i], float(rows[i - 1, ids[i]])))
            added += 1
        assert [t for t, _ in s.topk[i]] == [t for t, _ in want], i
        assert max(abs(a - b) for (_, a), (_, b) in zip(s.topk[i], want)) < TOL
    assert added > 0  # the sequence has tokens outside the top 5: the "added" path is exercised


def test_a_batch_is_one_request_answered_in_order(score_server, exact_model, seqs):
    before = len(score_server.requests_seen)
    d = ask(score_server.root, SGLangScore(), ScoreBatch([ScoreSeq(x) for x in seqs], top_k=2))
    assert len(score_server.requests_seen) == before + 1
    assert score_server.requests_seen[-1][1]["input_ids"] == seqs  # a list of lists
    for x, s in zip(seqs, d.answer.seqs):
        assert s.token_ids == x and close(s.logprobs, exact_model.direct(x))
    assert d.answer.usage["prompt_tokens"] == sum(map(len, seqs))


def test_5xx_is_retried(make_score_server, exact_model, seqs):
    srv = make_score_server(fail_first=2)
    d = ask(srv.root, SGLangScore(), ScoreBatch([ScoreSeq(seqs[2])]), attempts=3)
    assert d.attempts == 3 and close(d.answer.seqs[0].logprobs, exact_model.direct(seqs[2]))


@pytest.mark.parametrize(
    "kind, reason, says",
    [
        ("not_json", "malformed_response", "not JSON"),
        ("missing", "malformed_response", "'input_token_logprobs' is missing"),
        ("short", "malformed_response", "entries, expected"),
        ("nan", "malformed_response", "input_token_logprobs[1]: logprob nan is not a finite"),
        ("ids", "token_mismatch", "input_token_logprobs[1]: SGLang scored token id"),
        ("count", "malformed_response", "1 results for a batch of 2 sequences"),
        ("topk", "malformed_response", "input_top_logprobs[1]: expected a list"),
    ],
)
def test_a_malformed_body_is_a_clear_error(make_score_server, seqs, kind, reason, says):
    srv = make_score_server(malformed=kind)
    e = ask_error(srv.root, SGLangScore(), ScoreBatch([ScoreSeq(seqs[2]), ScoreSeq(seqs[1])], top_k=3), attempts=2)
    assert e.reason == reason and says in e.detail, e
    # a wrong token is final (retrying cannot make the server score the ids sent); the rest is retried
    assert isinstance(e, NonRetryableError) == (kind == "ids")
    assert len(srv.requests_seen) == (1 if kind == "ids" else 2)


def test_a_malformed_body_once_is_retried_to_the_right_answer(make_score_server, exact_model, seqs):
    srv = make_score_server(malformed="nan", malformed_requests=1)
    d = ask(srv.root, SGLangScore(), ScoreBatch([ScoreSeq(seqs[1])]), attempts=2)
    assert d.attempts == 2 and close(d.answer.seqs[0].logprobs, exact_model.direct(seqs[1]))


def test_sample_then_score_agree_and_a_shifted_server_does_not(make_score_server, exact_model, seqs):
    """What the alignment self-test does: the logprobs reported while generating equal the scores of the
    same tokens; a server scoring one position late (llama.cpp's echo) is off by far more."""
    prompt = seqs[1][:-2] + exact_model.encode("<|im_start|>assistant\n")
    for shift, agree in ((0, True), (1, False)):
        srv = make_score_server(shift=shift)
        sa = ask(srv.root, SGLangSample(), SampleRequest(ScoreSeq(prompt), max_tokens=6)).answer
        gen, glps, _ = exact_model.generate(prompt, 6)
        assert sa.token_ids == gen and max(abs(a - b) for a, b in zip(sa.logprobs, glps)) < TOL
        (s,) = ask(srv.root, SGLangScore(), ScoreBatch([ScoreSeq(prompt + gen)])).answer.seqs
        diff = max(abs(s.logprobs[len(prompt) + i] - lp) for i, lp in enumerate(sa.logprobs))
        assert (diff < TOL) == agree, (shift, diff)
        if not agree:
            assert diff > 0.5


def test_tokenize_is_the_servers_tokenization(score_server, exact_model):
    text = "<|im_start|>user\nHello, wörld!<|im_end|>"
    a = ask(score_server.root, SGLangTokenize(), TokenizeRequest(text)).answer
    assert a.token_ids == exact_model.encode(text) and a.token_ids[0] == 1  # <|im_start|> is one special token
    assert score_server.requests_seen[-1][1]["add_special_tokens"] is False


@pytest.mark.parametrize("kind, says", [("missing", "'tokens' is missing"), ("nan", "tokens[0]: token id nan")])
def test_tokenize_malformed(make_score_server, kind, says):
    srv = make_score_server(malformed=kind)
    e = ask_error(srv.root, SGLangTokenize(), TokenizeRequest("Hello"))
    assert e.reason == "malformed_response" and says in e.detail, e


@pytest.mark.parametrize(
    "kind, says",
    [
        ("not_json", "not JSON"),
        ("missing", "'output_token_logprobs' is missing"),
        ("short", "differ from output_token_logprobs' ids"),
        ("nan", "output_token_logprobs[1]: logprob nan is not a finite"),
        ("ids", "differ from output_token_logprobs' ids"),
    ],
)
def test_sample_malformed(make_score_server, seqs, kind, says):
    srv = make_score_server(malformed=kind)
    e = ask_error(srv.root, SGLangSample(), SampleRequest(ScoreSeq(seqs[2]), max_tokens=3))
    assert e.reason == "malformed_response" and says in e.detail, e
