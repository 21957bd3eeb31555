"""The echo (legacy completions) scoring kinds through the real Transport against the exact-logprob score
server, and what the REAL llama-cpp-python server's echo answers (shifted by one: the case the
alignment self-test must refuse)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from orchestrator.kinds import SCORERS
from orchestrator.kinds.score_echo import EchoSample, EchoScore, EchoTokenize, piece_table, token_pieces
from orchestrator.kinds.score_types import SampleRequest, ScoreBatch, ScoreSeq, TokenizeRequest
from orchestrator.transport import NonRetryableError
from support.score_helpers import ask, ask_error, chat_ids, post

TOL = 1e-5
GOLDEN = Path(__file__).parent / "golden" / "llamacpp_echo.json"


@pytest.fixture(scope="module")
def table(exact_model):
    return piece_table(exact_model.tokenizer)


def seq(tok, ids: list[int]) -> ScoreSeq:
    return ScoreSeq(ids, text=tok.decode(ids), pieces=token_pieces(tok, ids))


def close(a: list, b: list) -> bool:
    return len(a) == len(b) and a[0] is None and b[0] is None and max(abs(x - y) for x, y in zip(a[1:], b[1:])) < TOL


def test_registered():
    k = SCORERS["echo"]
    assert (k.score, k.sample, k.tokenize) == (EchoScore, EchoSample, EchoTokenize)


@pytest.mark.parametrize("echo_max_tokens", [0, 1])
def test_scores_a_multi_turn_chat_exactly_in_the_students_tokens(score_server, exact_model, table, echo_max_tokens):
    tok = exact_model.tokenizer
    ids = chat_ids(tok, 2)
    d = ask(score_server.base_url, EchoScore(table, echo_max_tokens), ScoreBatch([seq(tok, ids)]))
    (s,) = d.answer.seqs
    assert s.token_ids == ids and s.topk is None
    assert close(s.logprobs, exact_model.direct(ids))
    body = score_server.requests_seen[-1][1]
    assert body["echo"] is True and body["max_tokens"] == echo_max_tokens and body["prompt"] == tok.decode(ids)


def test_top_k_strings_map_to_ids_and_unknown_ones_are_left_out(score_server, exact_model, table):
    tok, k = exact_model.tokenizer, 5
    ids = chat_ids(tok, 1)
    (s,) = ask(score_server.base_url, EchoScore(table), ScoreBatch([seq(tok, ids)], top_k=k)).answer.seqs
    rows = exact_model.rows(ids)
    for i in range(1, len(ids)):
        v, j = torch.topk(rows[i - 1], k)
        want = [(t, lp) for t, lp in zip(j.tolist(), v.tolist()) if table.get(tok.decode([t])) == t]
        if ids[i] not in [t for t, _ in want]:
            want.append((ids[i], float(rows[i - 1, ids[i]])))
        assert [t for t, _ in s.topk[i]] == [t for t, _ in want], i
        assert max(abs(a - b) for (_, a), (_, b) in zip(s.topk[i], want)) < TOL
    # an empty table keeps only the scored token at every position
    (s0,) = ask(score_server.base_url, EchoScore({}), ScoreBatch([seq(tok, ids)], top_k=k)).answer.seqs
    assert all(s0.topk[i] == [(ids[i], s.logprobs[i])] for i in range(1, len(ids)))


def test_a_prompt_list_is_one_request_and_choices_are_read_by_index(score_server, exact_model, table):
    tok = exact_model.tokenizer
    seqs = [seq(tok, chat_ids(tok, 1)), seq(tok, exact_model.encode("Hello there, friend."))]
    d = ask(score_server.base_url, EchoScore(table), ScoreBatch(seqs, top_k=1))
    assert [s.token_ids for s in d.answer.seqs] == [x.token_ids for x in seqs]
    assert all(close(s.logprobs, exact_model.direct(x.token_ids)) for s, x in zip(d.answer.seqs, seqs))
    # the same answer with its choices in reverse order parses to the same scores
    body = post(score_server.base_url + "/completions", score_server.requests_seen[-1][1])
    body["choices"].reverse()
    again = EchoScore(table).parse(json.dumps(body).encode(), ScoreBatch(seqs, top_k=1))
    assert [s.logprobs for s in again.seqs] == [s.logprobs for s in d.answer.seqs]


def test_a_different_tokenization_is_refused_naming_the_position(score_server, exact_model, table):
    """The student splits "Paris" letter by letter; the teacher's echo has " Paris": refused, not retried."""
    tok = exact_model.tokenizer
    ids = exact_model.encode("The capital is") + [exact_model.encode(" P")[0]] + exact_model.encode("aris")
    assert tok.decode(ids) == "The capital is Paris" and ids != exact_model.encode("The capital is Paris")
    e = ask_error(score_server.base_url, EchoScore(table), ScoreBatch([seq(tok, ids)]))
    assert isinstance(e, NonRetryableError) and e.reason == "tokenizer_mismatch"
    assert "at token 3 the teacher has ' Paris' where the student has ' P'" in e.detail
    assert "cross-tokenizer distillation is not supported" in e.detail


def test_5xx_is_retried(make_score_server, exact_model, table):
    srv = make_score_server(fail_first=1)
    ids = exact_model.encode("One two three four.")
    d = ask(srv.base_url, EchoScore(table), ScoreBatch([seq(exact_model.tokenizer, ids)]), attempts=2)
    assert d.attempts == 2 and close(d.answer.seqs[0].logprobs, exact_model.direct(ids))


@pytest.mark.parametrize(
    "kind, reason, says",
    [
        ("not_json", "malformed_response", "not JSON"),
        ("missing", "malformed_response", "'logprobs' is a NoneType, not a dict"),
        ("short", "malformed_response", "token_logprobs: has 7 entries, expected 8"),
        ("nan", "malformed_response", "token_logprobs[1]: logprob nan is not a finite"),
        ("ids", "tokenizer_mismatch", "at token 1 the teacher has ' capital#' where the student has ' capital'"),
        ("count", "malformed_response", "1 choices for 2 prompts"),
        ("topk", "malformed_response", "top_logprobs[1]: expected an object token string -> logprob, got list"),
    ],
)
def test_a_malformed_body_is_a_clear_error(make_score_server, exact_model, table, kind, reason, says):
    srv = make_score_server(malformed=kind)
    tok = exact_model.tokenizer
    seqs = [seq(tok, exact_model.encode("The capital of France is Paris.")), seq(tok, exact_model.encode("Hi."))]
    e = ask_error(srv.base_url, EchoScore(table), ScoreBatch(seqs, top_k=2), attempts=2)
    assert e.reason == reason and says in e.detail, e
    assert isinstance(e, NonRetryableError) == (kind == "ids")


def test_sample_then_score_agree_and_a_shifted_server_does_not(make_score_server, exact_model, table):
    tok = exact_model.tokenizer
    prompt = exact_model.encode("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    for shift, agree in ((0, True), (1, False)):
        srv = make_score_server(shift=shift)
        sa = ask(srv.base_url, EchoSample(), SampleRequest(seq(tok, prompt), max_tokens=6)).answer
        gen, glps, _ = exact_model.generate(prompt, 6)
        assert sa.token_ids is None and sa.pieces == token_pieces(tok, gen)
        assert max(abs(a - b) for a, b in zip(sa.logprobs, glps)) < TOL
        (s,) = ask(srv.base_url, EchoScore(table), ScoreBatch([seq(tok, prompt + gen)])).answer.seqs
        diff = max(abs(s.logprobs[len(prompt) + i] - lp) for i, lp in enumerate(sa.logprobs))
        assert (diff < TOL) == agree and (agree or diff > 0.5), (shift, diff)


def test_tokenize_gives_the_teachers_pieces_without_the_generated_token(score_server, exact_model):
    text = "<|im_start|>user\nHello, wörld!<|im_end|>"
    a = ask(score_server.base_url, EchoTokenize(), TokenizeRequest(text)).answer
    assert a.token_ids is None and a.pieces == token_pieces(exact_model.tokenizer, exact_model.encode(text))


@pytest.mark.parametrize(
    "kind, says",
    [
        ("not_json", "not JSON"),
        ("missing", "'logprobs' is a NoneType, not a dict"),
        ("short", "token_logprobs: has 2 entries, expected 3"),
        ("nan", "token_logprobs[1]: logprob nan is not a finite"),
    ],
)
def test_sample_malformed(make_score_server, exact_model, kind, says):
    srv = make_score_server(malformed=kind)
    ids = exact_model.encode("Count: one, two,")
    e = ask_error(srv.base_url, EchoSample(), SampleRequest(seq(exact_model.tokenizer, ids), max_tokens=3))
    assert e.reason == "malformed_response" and says in e.detail, e


def test_tokenize_malformed_and_misspelt(make_score_server, exact_model):
    e = ask_error(make_score_server(malformed="missing").base_url, EchoTokenize(), TokenizeRequest("Hello there"))
    assert e.reason == "malformed_response" and "'logprobs' is a NoneType" in e.detail
    e = ask_error(make_score_server(malformed="ids").base_url, EchoTokenize(), TokenizeRequest("Hello there"))
    assert isinstance(e, NonRetryableError) and e.reason == "tokenizer_mismatch"
    assert "spell 'Hello there#'" in e.detail


def test_llama_cpp_golden_echo_is_shifted_by_one(exact_model, table):
    """The recorded answer of the real llama-cpp-python server parses (same tokenizer), and its echo scores are
    the NEXT position's: near the exact model's shifted values, far from the true ones and from the
    logprob the same server reported for " Paris" while generating. The alignment self-test refuses it."""
    g = json.loads(GOLDEN.read_text())
    tok = exact_model.tokenizer
    text = g["echo_request"]["prompt"]
    ids = exact_model.encode(text)
    (s,) = EchoScore(table).parse(json.dumps(g["echo_response"]).encode(), ScoreBatch([seq(tok, ids)], top_k=3)).seqs
    gap_shifted, gap_true = shift_gaps(exact_model, ids, s.logprobs)
    assert gap_shifted < 1.0 < 5.0 < gap_true, (gap_shifted, gap_true)  # Q4_1 vs fp32 noise << the shift
    paris = ids.index(exact_model.encode(" Paris")[0])
    sampled = g["sample_response"]["choices"][0]["logprobs"]
    assert sampled["tokens"][0] == " Paris"
    assert abs(sampled["token_logprobs"][0] - s.logprobs[paris]) > 5.0  # alignment tolerance is 0.05


def shift_gaps(exact_model, ids: list[int], lps: list) -> tuple[float, float]:
    """(largest gap to the exact model's shifted scores, largest gap to its true ones)."""
    true, (shifted, _, _) = exact_model.direct(ids), exact_model.score(ids, 0, shift=1)
    return max(abs(a - b) for a, b in zip(lps[1:], shifted[1:])), max(abs(a - b) for a, b in zip(lps[1:], true[1:]))


@pytest.mark.slow
def test_real_llama_cpp_server_echo_is_shifted_by_one(exact_model, table, tmp_path):
    """Starts llama_cpp.server (free port): its echo has the golden body's shape and is shifted by one.
    DISTILL_WRITE_GOLDEN=1 rewrites the golden body from this server."""
    from support.llamacpp_server import ALIAS, llama_cpp_server

    g = json.loads(GOLDEN.read_text())
    tok = exact_model.tokenizer
    ids = exact_model.encode(g["echo_request"]["prompt"])
    with llama_cpp_server(log_path=str(tmp_path / "llama.log")) as url:
        echo = post(url + "/completions", dict(g["echo_request"], model=ALIAS))
        sample = post(url + "/completions", dict(g["sample_request"], model=ALIAS))
        live = ask(url, EchoScore(table), ScoreBatch([seq(tok, ids)], top_k=3), model=ALIAS).answer.seqs[0]
        e = ask_error(url, EchoScore(table), ScoreBatch([seq(tok, ids)] * 2), model=ALIAS, attempts=1)
    if os.environ.get("DISTILL_WRITE_GOLDEN") == "1":
        for d in (echo, sample):
            d.update(id="cmpl-golden", created=0, model="SmolLM2-135M-Instruct.Q4_1.gguf")
        GOLDEN.write_text(json.dumps(dict(g, echo_response=echo, sample_response=sample), indent=1) + "\n")
    lp = echo["choices"][0]["logprobs"]
    want = g["echo_response"]["choices"][0]["logprobs"]
    assert lp["tokens"] == want["tokens"] == token_pieces(tok, ids)  # the generated token is not listed
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(len(d) == 4 for d in lp["top_logprobs"][1:])  # k + the scored token, keyed by token string
    gap_shifted, gap_true = shift_gaps(exact_model, ids, live.logprobs)
    assert gap_shifted < 1.0 < 5.0 < gap_true, (gap_shifted, gap_true)
    got = sample["choices"][0]["logprobs"]
    assert (
        got["tokens"][0] == " Paris"
        and abs(got["token_logprobs"][0] - live.logprobs[ids.index(exact_model.encode(" Paris")[0])]) > 5.0
    )
    assert e.reason == "http_500"  # a prompt list is refused: sequences_per_request must stay 1
