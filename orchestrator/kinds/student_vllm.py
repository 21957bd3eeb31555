"""Sampling on the student's own vLLM server (`on_policy.sampler = "server"`; docs/on_policy.md,
"Student inference server"): one completion of given prompt token ids with every sampled token's id and
its logprob under the sampling policy.

    VLLMStudentSample  POST {base_url}/completions
        {"prompt": ids, "max_tokens": n, "temperature": T, "top_p": p, "top_k": 0, "min_p": 0,
         "repetition_penalty": 1, "presence_penalty": 0, "frequency_penalty": 0, "seed": s,
         "stop_token_ids": eos ids, "logprobs": 0, "return_token_ids": true,
         "return_tokens_as_token_ids": true, "skip_special_tokens": false}
        -> StudentSampleAnswer(token_ids, logprobs, finish_reason)

Every sampling parameter is sent explicitly, so the server's defaults (a model's generation_config.json:
top-k, repetition penalty, ...) never shape the distribution. The answer's `choices[0].token_ids` are the
sampled ids (the EOS that stopped it included), `logprobs.token_logprobs[j]` the logprob of token j. What
that logprob is depends on the server's `--logprobs-mode`: with `processed_logprobs` it is the logprob
after temperature and top-p (the distribution the token was drawn from: mu_t); with the default
`raw_logprobs` it is the untempered, untruncated model's (mu_t only at temperature 1, top-p 1). The
student-server client checks the mode (GET /server_info) before sampling.

A body this module cannot use is a `malformed_response` ResponseError (retried): no choice, no token ids,
token ids and logprobs of different lengths, a logprob that is not a finite number <= 0, a usage count that
is not a whole number >= 0 or is far above the request's tokens (score_parse.count), a finish reason
other than "stop" / "length", or a "stop" whose last token is not an end-of-sequence id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI

from orchestrator.kinds.chat import json_object
from orchestrator.kinds.score_vllm import _choices_by_index, _sampled_ids, _str_or_none, _token_logprobs, _usage
from orchestrator.transport import RawResponse, ResponseError, post_json


@dataclass(frozen=True)
class StudentSampleRequest:
    """One sample: the prompt's ids, the sampling policy, the sequence's seed and the end-of-sequence ids."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_token_ids: tuple[int, ...]


@dataclass
class StudentSampleAnswer:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (ended with an end-of-sequence id) or "length"
    usage: dict[str, int]
    response_id: str | None


class VLLMStudentSample:
    """Implements transport.RequestKind[StudentSampleRequest, StudentSampleAnswer]."""

    name = "vllm_student_sample"

    def estimate(self, req: StudentSampleRequest) -> tuple[float, float]:
        return float(len(req.prompt_ids)), float(req.max_tokens)

    def body(self, model: str, req: StudentSampleRequest) -> dict[str, Any]:
        if not req.prompt_ids:
            raise ValueError("a student sample needs a prompt")
        return {
            "model": model,
            "prompt": list(req.prompt_ids),
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": 0,  # 0 = off (vLLM 0.32; -1 is accepted too)
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": req.seed,
            "n": 1,
            "stop_token_ids": list(req.stop_token_ids),
            "ignore_eos": False,
            "logprobs": 0,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }

    async def send(self, client: AsyncOpenAI, model: str, req: StudentSampleRequest) -> RawResponse:
        return await post_json(client, "/completions", self.body(model, req))

    def parse(self, body: bytes, req: StudentSampleRequest) -> StudentSampleAnswer:
        d = json_object(body)
        c = _choices_by_index(d, 1)[0]
        lp, logprobs = _token_logprobs(c, nonempty=False)
        ids = _sampled_ids(c, lp) if logprobs else []
        if len(ids) != len(logprobs) or not ids:
            raise ResponseError(
                "malformed_response",
                f"choice 0 has {len(ids)} sampled token ids and {len(logprobs)} token_logprobs "
                "(one each per sampled token, at least one)",
            )
        if len(ids) > req.max_tokens:
            raise ResponseError("malformed_response", f"{len(ids)} tokens sampled, max_tokens was {req.max_tokens}")
        reason = c.get("finish_reason")
        if reason not in ("stop", "length"):
            raise ResponseError("malformed_response", f"choice 0's finish_reason is {reason!r}, not 'stop' or 'length'")
        if reason == "stop" and ids[-1] not in req.stop_token_ids:
            raise ResponseError(
                "malformed_response",
                f"choice 0 stopped on token {ids[-1]}, not an end-of-sequence id {sorted(req.stop_token_ids)} "
                "(a stop string set on the server?)",
            )
        return StudentSampleAnswer(
            token_ids=ids,
            logprobs=logprobs,
            finish_reason=reason,
            usage=_usage(d, len(req.prompt_ids), req.max_tokens),
            response_id=_str_or_none(d.get("id")),
        )
