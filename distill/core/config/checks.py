"""Run configuration cross-checks: the product's mode (external teacher) and checks between
sections. Every problem is reported at once, with its key path and fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.core.redact import redact_url

if TYPE_CHECKING:
    from .schema_run import RunConfig


# ---------------------------------------------------------------------------
# Cross-checks
# ---------------------------------------------------------------------------

KNOWN_NON_SFT_LOSSES = ("forward_kl", "reverse_kl", "kl", "jsd", "grpo", "ppo", "dpo", "logit_distill")
# Losses trained on teacher scores of given tokens (a `[scorer]`): name -> the least scorer.top_k it needs.
SCORED_LOSSES: dict[str, int] = {"topk_kl": 1}
# Losses trained on the teacher's scores of the student's own samples: on-policy mode only (checks_onpolicy.py).
ON_POLICY_LOSSES = ("reverse_kl", "iw_opd", "kd_rl")


class Problem(tuple):
    """(key path, message with the fix)."""

    def __new__(cls, key: str, message: str) -> Problem:
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
    why = f"the teacher is an external endpoint ({redact_url(url)}) that returns messages only"
    if cfg.orchestrator.source.type == "replay" and "rollout_model" not in cfg.orchestrator.model_fields_set:
        # no teacher is asked: its answers are read from files (the default base_url was never set)
        why = (
            'the teacher\'s answers are replayed from files (orchestrator.source.type = "replay") that hold '
            "messages only"
        )
    if cfg.on_policy.enabled:  # the student samples, the [scorer] grades: its own loss and broadcast rules
        from .checks_onpolicy import check_on_policy_mode

        problems += check_on_policy_mode(cfg)
    else:
        problems += _check_loss_mode(cfg, why)
    wb = cfg.weight_broadcast.type
    if wb != "none" and not cfg.on_policy.enabled:
        problems.append(
            Problem(
                "weight_broadcast.type",
                f"{wb!r} would push trained weights to the inference server, but {why} and its weights "
                'are not ours to update. Fix: remove [weight_broadcast] or set type = "none".',
            )
        )
    client = cfg.orchestrator.rollout_model.client
    if client != "chat":
        problems.append(
            Problem(
                "orchestrator.rollout_model.client",
                f"{client!r} is a token-id client; {why}, and the student's tokens are rebuilt from them "
                'with its own tokenizer. Fix: set orchestrator.rollout_model.client = "chat".',
            )
        )
    extra = cfg.orchestrator.sampling.extra_body
    for key in ("prompt_token_ids", "prompt_ids", "input_ids"):
        if key in extra:
            problems.append(
                Problem(
                    f"orchestrator.sampling.extra_body.{key}",
                    f"sending token ids to the teacher is a token-id client; {why}. Fix: remove {key} from extra_body.",
                )
            )
    return problems


def _check_loss_mode(cfg: RunConfig, why: str) -> list[Problem]:
    """SFT always; a scored loss (SCORED_LOSSES) only with a `[scorer]` that gives what it needs; nothing else."""
    problems: list[Problem] = []
    loss = cfg.trainer.loss.type
    scorer = getattr(cfg, "scorer", None)
    if loss in SCORED_LOSSES and scorer is not None:
        # The teacher's logprobs come from the scorer (self-tested before a run: docs/scoring.md).
        if scorer.top_k < SCORED_LOSSES[loss]:
            problems.append(
                Problem(
                    "scorer.top_k",
                    f"is {scorer.top_k}, but trainer.loss.type = {loss!r} trains on the teacher's top-k "
                    f"alternatives. Fix: set scorer.top_k >= {SCORED_LOSSES[loss]} (e.g. 20).",
                )
            )
    elif loss in ON_POLICY_LOSSES and scorer is not None:
        problems.append(
            Problem(
                "trainer.loss.type",
                f"{loss!r} trains on the student's own samples (with the logprobs they were sampled with), "
                "scored by the teacher: on-policy mode, which is off (on_policy.enabled = false); a [scorer] here "
                "scores teacher samples. Fix: set on_policy.enabled = true (the student samples, the [scorer] "
                'grades them; docs/on_policy.md), or trainer.loss.type = "topk_kl" or "sft".',
            )
        )
    elif loss != "sft":
        kind = (
            "a known non-SFT loss"
            if loss in KNOWN_NON_SFT_LOSSES + tuple(SCORED_LOSSES) + ON_POLICY_LOSSES
            else "not a loss this mode has"
        )
        fix = 'Fix: set trainer.loss.type = "sft"'
        if loss in SCORED_LOSSES:
            fix += " or add a [scorer] section: a same-tokenizer teacher that scores given tokens (docs/scoring.md)"
        elif loss in ON_POLICY_LOSSES:
            fix += (
                ", or set on_policy.enabled = true with a [scorer]: the student samples, the teacher grades "
                "its tokens (docs/on_policy.md)"
            )
        problems.append(
            Problem(
                "trainer.loss.type",
                f"{loss!r} is {kind}; {why}, so only masked-NLL SFT on its tokens can be trained. {fix}.",
            )
        )
    return problems


def check_cross_fields(cfg: RunConfig) -> list[Problem]:
    """Checks between fields and sections: the trainer's needs, reconstruction, the orchestrator's inputs."""
    return _check_trainer_needs(cfg) + _check_reconstruction(cfg) + _check_orchestrator_inputs(cfg) + _check_paths(cfg)


#: Config keys that hold a path: a key in one would be printed, and saved with the run's config.
PATH_KEYS = ("output_dir", "student.path", "student.tokenizer", "student.chat_template", "orchestrator.source.path")


def _check_paths(cfg: RunConfig) -> list[Problem]:
    """output_dir set (`--output_dir "$OUT"` with OUT unset put the whole run in the working folder), and
    no path holding an API key: a path is printed and saved with the run's config (config.toml, the
    samples' provenance), and the run dir's names a tracker's run when none is set."""
    if not cfg.output_dir.strip():
        return [
            Problem("output_dir", 'is empty. Fix: set it to a folder for this run (e.g. "runs/my-run"; "." for here)')
        ]
    from distill.core.redact import path_holds_api_key

    named = [k for k, on in (("wandb.name", cfg.wandb.enabled and not cfg.wandb.name),
                             ("trackers.trackio_run", cfg.trackers.trackio and not cfg.trackers.trackio_run)) if on]  # fmt: skip
    out = []
    for key in PATH_KEYS:
        value: object = cfg
        for part in key.split("."):
            value = getattr(value, part, None)
        if path_holds_api_key(value):
            tracker = f"; {' and '.join(named)} would be named after it too" if named and key == "output_dir" else ""
            out.append(Problem(key, key_in_path_message(tracker)))
    return out


def key_in_path_message(note: str = "") -> str:
    return (
        "a part of it looks like an API key; a path is printed and saved with the run's config and samples"
        f"{note}. The value is not shown. Fix: rename that folder or file (an API key goes in the environment "
        "variable that teacher.api_key_var names)"
    )


def _check_trainer_needs(cfg: RunConfig) -> list[Problem]:
    """What the trainer needs: enough samples ahead for its first step, both held-out eval keys."""
    problems: list[Problem] = []
    t, o = cfg.trainer, cfg.orchestrator
    need = t.eval_samples + t.samples_per_step
    if need > o.max_ahead:
        problems.append(
            Problem(
                "orchestrator.max_ahead",
                f"{o.max_ahead} is less than what the trainer needs before its first step "
                f"(trainer.eval_samples + trainer.samples_per_step = {need}); sampling would wait for the "
                f"trainer and the trainer for samples. Fix: set orchestrator.max_ahead >= {need}.",
            )
        )
    if bool(t.eval_every) != bool(t.eval_samples):
        unset = "trainer.eval_samples" if t.eval_every else "trainer.eval_every"
        problems.append(
            Problem(
                unset,
                "held-out eval needs both trainer.eval_every and trainer.eval_samples. "
                f"Fix: set {unset} too, or leave both at 0 (no eval).",
            )
        )
    return problems


def _check_reconstruction(cfg: RunConfig) -> list[Problem]:
    """orchestrator.reconstruction: trainable roles, a max_seq_len the trainer can take."""
    problems: list[Problem] = []
    o = cfg.orchestrator
    unknown = [r for r in o.reconstruction.train_roles if r not in ("system", "user", "assistant", "tool")]
    if unknown:
        problems.append(
            Problem(
                "orchestrator.reconstruction.train_roles",
                f"{unknown} is not a chat role (system, user, assistant, tool; lower case); every conversation "
                'would be rejected. Fix: e.g. train_roles = ["assistant"].',
            )
        )
    r = cfg.orchestrator.reconstruction
    if r.max_seq_len is not None and r.max_seq_len > cfg.trainer.seq_len:
        problems.append(
            Problem(
                "orchestrator.reconstruction.max_seq_len",
                f"{r.max_seq_len} is longer than trainer.seq_len ({cfg.trainer.seq_len}); such samples could "
                "not be trained. Fix: lower it or raise trainer.seq_len (leave it unset to use trainer.seq_len).",
            )
        )
    return problems


def _check_orchestrator_inputs(cfg: RunConfig) -> list[Problem]:
    """The orchestrator's source, local teacher and budget."""
    problems: list[Problem] = []
    src = cfg.orchestrator.source
    # (replay may take its inputs from the command line: `distill replay CONFIG INPUT...`; with neither,
    # replay stops naming orchestrator.source.path)
    if src.type == "jsonl" and not src.path:
        problems.append(
            Problem(
                "orchestrator.source.path",
                f'source type {src.type!r} reads a file. Fix: set orchestrator.source.path = "FILE.jsonl".',
            )
        )
    lt = cfg.orchestrator.local_teacher
    if lt.enabled:
        expected = f"http://{lt.host}:{lt.port}/v1"
        if cfg.orchestrator.rollout_model.base_url.rstrip("/") != expected:
            problems.append(
                Problem(
                    "orchestrator.rollout_model.base_url",
                    f"the local teacher listens on {expected}, but base_url is "
                    f'{redact_url(cfg.orchestrator.rollout_model.base_url)}. Fix: set base_url = "{expected}".',
                )
            )
    b, bc = cfg.orchestrator.budget, cfg.orchestrator.batch
    problems += _check_batch(cfg)
    batch_priced = bc.enabled and bool(bc.cost_per_1k_prompt or bc.cost_per_1k_completion)  # batch prices set
    if b.max_cost is not None and b.cost_per_1k_prompt == 0 and b.cost_per_1k_completion == 0 and not batch_priced:
        problems.append(
            Problem(
                "orchestrator.budget.max_cost",
                "is set but no price is: spend would always be 0. Fix: set orchestrator.budget.cost_per_1k_prompt "
                "and/or cost_per_1k_completion.",
            )
        )
    sb = cfg.scorer.budget if cfg.scorer is not None else None
    if sb is not None and sb.max_cost is not None and sb.cost_per_1k_prompt == 0:
        problems.append(
            Problem(
                "scorer.budget.max_cost",
                "is set but no price is: spend would always be 0 and scoring would never stop. Fix: set "
                "scorer.budget.cost_per_1k_prompt (the price of 1k scored tokens), or use max_prompt_tokens.",
            )
        )
    return problems


def _check_batch(cfg: RunConfig) -> list[Problem]:
    """A Batch API run: its budget needs a completion-token bound, and its input file holds extra_body as sent."""
    from distill.core.redact import redact

    problems: list[Problem] = []
    b, bc, sp = cfg.orchestrator.budget, cfg.orchestrator.batch, cfg.orchestrator.sampling
    if not bc.enabled:
        return problems
    oc = cfg.orchestrator
    if oc.local_teacher.enabled or oc.source.type == "replay":  # (BatchRollout refuses `rollout --batch` so too)
        key = "local_teacher.enabled = true" if oc.local_teacher.enabled else 'source.type = "replay"'
        problems.append(
            Problem(
                "orchestrator.batch.enabled",
                f"is true, which does not go with orchestrator.{key} (a Batch API needs a hosted teacher and prompts). "
                "Fix: set orchestrator.batch.enabled = false, or use a prompt source and a hosted rollout_model",
            )
        )
    if sp.max_tokens is None and (b.max_cost is not None or b.max_completion_tokens is not None):
        which = "max_cost" if b.max_cost is not None else "max_completion_tokens"
        problems.append(
            Problem(
                "orchestrator.sampling.max_tokens",
                f"is unset, but orchestrator.batch.enabled = true with orchestrator.budget.{which}: a whole batch is "
                "sent before any answer is back, so without a completion-token bound per line the budget could be "
                "overshot by a batch. Fix: set orchestrator.sampling.max_tokens (or drop the budget).",
            )
        )
    shown = redact(sp.extra_body)
    for key, value in sp.extra_body.items():
        if shown.get(key) != value:
            problems.append(
                Problem(
                    f"orchestrator.sampling.extra_body.{key}",
                    "looks like a secret (by its name or value), and with orchestrator.batch.enabled = true every "
                    "request body, extra_body included, is written to the batch input file (run_dir/batch/"
                    "round-N.input.jsonl) and uploaded as it is. Fix: pass credentials through "
                    "orchestrator.rollout_model.api_key_var or headers (never written to files), and remove "
                    f"{key} from extra_body.",
                )
            )
    return problems
