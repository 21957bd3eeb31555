"""Run configuration schema, part 3: `[scorer]`, the teacher as a scorer of given token ids.

A scorer returns the teacher's log-probability of every token of a sequence (and optionally
its top-k alternatives at each position). It is what teacher-logprob losses (`topk_kl`, the
on-policy ones) need; an endpoint that only returns messages cannot provide it. The section is a
union keyed on `type`, one model per request kind (orchestrator/kinds/score_*.py); docs/scoring.md
has each kind's request and response shape and the self-tests every scorer must pass.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .schema import Retry, Strict
from .url_checks import check_api_key_var, check_http_url, check_http_urls, check_headers, check_model_name


class ScoreBudget(Strict):
    """Spend limits of the scorer; scoring stops cleanly at the first one reached (and resumes)."""

    # Most scoring requests sent (retries included).
    max_requests: int | None = Field(None, ge=1)
    # Most prompt tokens scored, as reported by usage (or counted, when the server reports none).
    max_prompt_tokens: int | None = Field(None, ge=1)
    # Price per 1k scored tokens, for the cost estimate and max_cost.
    cost_per_1k_prompt: float = Field(0.0, ge=0)
    # Most estimated spend, in the currency of the price above.
    max_cost: float | None = Field(None, gt=0)


class _ScorerBase(Strict):
    # Base URL of the scoring endpoint (vllm/echo: up to and including /v1; sglang: the server root).
    base_url: str = "http://127.0.0.1:8000/v1"
    # Extra endpoints serving the same model; requests go to the least-loaded one.
    extra_base_urls: list[str] = []
    # Model name sent with each request.
    model: str = "teacher"
    # NAME of the environment variable holding the API key (never the key itself).
    api_key_var: str | None = None
    # Extra HTTP headers; every value is redacted in dumps (names kept).
    headers: dict[str, str] = {}
    # Seconds before one request times out (then retried).
    timeout: float = Field(120.0, gt=0)
    # Top-k alternatives kept per scored position (0 = only the logprob of the token itself).
    # `topk_kl` needs k >= 1; servers cap k (vLLM: --max-logprobs, 20 by default).
    top_k: int = Field(0, ge=0, le=1000)
    # Sequences sent in one request where the API takes a list (vLLM and echo: a prompt list;
    # SGLang: a batch of input_ids).
    sequences_per_request: int = Field(1, ge=1)
    # Requests in flight at once (across all endpoints).
    concurrency: int = Field(4, ge=1)
    # Rate limits across all endpoints (unset: none).
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    budget: ScoreBudget = ScoreBudget()
    retry: Retry = Retry()
    # Self-test "alignment": a sequence the teacher just generated is scored, and each token's
    # scored logprob must be within this many nats of the one it reported while sampling.
    alignment_tolerance: float = Field(0.05, gt=0)
    # Self-test "determinism": the same sequence scored twice must agree within this many nats.
    determinism_tolerance: float = Field(0.01, gt=0)

    @field_validator("api_key_var")
    @classmethod
    def _check_api_key_var(cls, v: str | None) -> str | None:
        return check_api_key_var(v, "MY_SCORER_KEY")

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        return check_model_name(v, "MY_SCORER_KEY", "scorer.api_key_var")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, url: str) -> str:
        return check_http_url(url)

    @field_validator("extra_base_urls")
    @classmethod
    def _check_extra_base_urls(cls, urls: list[str]) -> list[str]:
        return check_http_urls(urls)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers)


class VLLMScorer(_ScorerBase):
    """`type = "vllm"`: POST {base_url}/completions with token ids, `prompt_logprobs: k`, `max_tokens: 1`."""

    # The request kind, keyed on this name.
    type: Literal["vllm"] = "vllm"


class SGLangScorer(_ScorerBase):
    """`type = "sglang"`: POST {base_url}/generate with `input_ids`, `return_logprob`, `max_new_tokens: 0`."""

    # The request kind, keyed on this name.
    type: Literal["sglang"] = "sglang"
    base_url: str = "http://127.0.0.1:30000"


class EchoScorer(_ScorerBase):
    """`type = "echo"`: POST {base_url}/completions with the text, `echo: true`, `logprobs: k` (legacy
    OpenAI completions); the teacher tokenises the text itself, so the tokenizer self-test must pass."""

    # The request kind, keyed on this name.
    type: Literal["echo"] = "echo"
    # max_tokens sent with the echo request: 0 where the API allows it, else 1 (the extra
    # generated token is paid for and ignored).
    echo_max_tokens: Literal[0, 1] = 1


# `[scorer]`: the model chosen by `type` (a new kind adds its model here and in SCORER_CONFIGS).
Scorer = Annotated[VLLMScorer | SGLangScorer | EchoScorer, Field(discriminator="type")]
SCORER_CONFIGS = {"vllm": VLLMScorer, "sglang": SGLangScorer, "echo": EchoScorer}
