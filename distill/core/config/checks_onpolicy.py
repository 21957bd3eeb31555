"""Mode checks for on-policy distillation (`on_policy.enabled = true`; docs/on_policy.md, "Validation").

The student samples in-process with its current weights, the `[scorer]` grades every sampled token, and
an on-policy loss trains on those grades. Every problem is reported at once, with its key path and fix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from distill.core.redact import redact_url

from .checks import ON_POLICY_LOSSES, SCORED_LOSSES, Problem

if TYPE_CHECKING:
    from .schema_run import RunConfig

#: What on-policy mode trains: the on-policy losses, and the scored losses on the student's own samples.
ON_POLICY_MODE_LOSSES = ON_POLICY_LOSSES + tuple(SCORED_LOSSES)


def check_on_policy_mode(cfg: RunConfig) -> list[Problem]:
    """The scorer, the loss (and what it needs), group-sized steps, no weight transfer, eval keys."""
    problems = _check_scorer_and_loss(cfg) + _check_student_server(cfg)
    op, t = cfg.on_policy, cfg.trainer
    problems += _check_group_sized_steps(cfg) if op.teacher_fraction == 0 else check_mixing(cfg)
    if op.teacher_samples and op.teacher_fraction == 0:
        problems.append(
            Problem(
                "on_policy.teacher_samples",
                "is set, but on_policy.teacher_fraction = 0 takes no teacher row: the folder would be ignored. "
                "Fix: set on_policy.teacher_fraction > 0 (e.g. 0.25), or remove on_policy.teacher_samples.",
            )
        )
    if op.max_new_tokens >= t.seq_len:
        problems.append(
            Problem(
                "on_policy.max_new_tokens",
                f"{op.max_new_tokens} leaves no room for the prompt in trainer.seq_len ({t.seq_len}); a long "
                "sample could not be trained. Fix: lower on_policy.max_new_tokens or raise trainer.seq_len.",
            )
        )
    wb = cfg.weight_broadcast.type
    if wb != "none":
        problems.append(
            Problem(
                "weight_broadcast.type",
                f"{wb!r} would push trained weights to an inference server, but the in-process sampler "
                "samples with the trainer's own weights (no transfer), and the teacher's weights are never "
                'ours to update. Fix: remove [weight_broadcast] or set type = "none".',
            )
        )
    if bool(op.eval_every) != bool(op.eval_prompts):
        unset = "on_policy.eval_prompts" if op.eval_every else "on_policy.eval_every"
        problems.append(
            Problem(
                unset,
                "the held-out reverse-KL eval needs both on_policy.eval_every and on_policy.eval_prompts. "
                f"Fix: set {unset} too, or leave both at 0 (no eval).",
            )
        )
    return problems


def teacher_rows_per_step(cfg: RunConfig) -> int:
    """round(on_policy.teacher_fraction x trainer.samples_per_step), halves rounded up."""
    return math.floor(cfg.on_policy.teacher_fraction * cfg.trainer.samples_per_step + 0.5)


def _check_group_sized_steps(cfg: RunConfig, what: str = "trainer.samples_per_step") -> list[Problem]:
    op, t = cfg.on_policy, cfg.trainer
    n, student = op.samples_per_prompt, t.samples_per_step - teacher_rows_per_step(cfg)
    if student % n == 0:
        return []
    if what == "trainer.samples_per_step":
        what, fix = (
            str(student),
            f"set trainer.samples_per_step to a multiple of {n} (e.g. {max(n, student - student % n)})",
        )
    else:
        what += f" = {student}"
        fix = f"change on_policy.teacher_fraction or trainer.samples_per_step so that {what} is a multiple of {n}"
    return [
        Problem(
            "trainer.samples_per_step",
            f"{what} is not a multiple of on_policy.samples_per_prompt ({n}); a step must "
            f"take whole groups (the samples of one prompt). Fix: {fix}.",
        )
    ]


def check_mixing(cfg: RunConfig) -> list[Problem]:
    """teacher_fraction > 0: a teacher samples folder, at least one row of each kind, whole groups."""
    op, t = cfg.on_policy, cfg.trainer
    n_t = teacher_rows_per_step(cfg)
    problems: list[Problem] = []
    if not op.teacher_samples:
        problems.append(
            Problem(
                "on_policy.teacher_samples",
                f"is unset, but on_policy.teacher_fraction = {op.teacher_fraction} takes {n_t} of each step's rows "
                'from teacher samples. Fix: set on_policy.teacher_samples = "DIR", a samples folder made by '
                "`distill rollout` (or `distill replay`; scored by `distill score` for topk_kl), or "
                "on_policy.teacher_fraction = 0.",
            )
        )
    if n_t < 1 or n_t >= t.samples_per_step:
        kind = "no teacher row" if n_t < 1 else "no student row"
        problems.append(
            Problem(
                "on_policy.teacher_fraction",
                f"{op.teacher_fraction} x trainer.samples_per_step ({t.samples_per_step}) rounds to {n_t} teacher rows "
                f"per step: {kind}. Fix: choose teacher_fraction so that 1 <= round(teacher_fraction x "
                f"{t.samples_per_step}) <= {t.samples_per_step - op.samples_per_prompt}.",
            )
        )
    else:
        problems += _check_group_sized_steps(cfg, "the student rows per step (samples_per_step - teacher rows)")
    return problems


def _check_scorer_and_loss(cfg: RunConfig) -> list[Problem]:
    problems: list[Problem] = []
    loss, scorer = cfg.trainer.loss.type, cfg.scorer
    if scorer is None:
        problems.append(
            Problem(
                "scorer",
                "on-policy mode grades every token the student samples with the teacher's logprob of it, "
                "and only a [scorer] gives those. Fix: add a [scorer] section: a same-tokenizer teacher "
                "that scores given tokens (docs/scoring.md).",
            )
        )
    if loss not in ON_POLICY_MODE_LOSSES:
        names = ", ".join(f'"{x}"' for x in ON_POLICY_MODE_LOSSES)
        problems.append(
            Problem(
                "trainer.loss.type",
                f"{loss!r} does not train on the teacher's grades of the student's own samples, which is all "
                f"on-policy mode gives. Fix: set trainer.loss.type to one of {names} "
                "(or on_policy.enabled = false to train on teacher samples).",
            )
        )
    elif loss in SCORED_LOSSES and scorer is not None and scorer.top_k < SCORED_LOSSES[loss]:
        problems.append(
            Problem(
                "scorer.top_k",
                f"is {scorer.top_k}, but trainer.loss.type = {loss!r} trains on the teacher's top-k "
                f"alternatives. Fix: set scorer.top_k >= {SCORED_LOSSES[loss]} (e.g. 20).",
            )
        )
    if loss == "kd_rl" and getattr(cfg.trainer.loss, "w_rl", 0) > 0:
        # A loss that needs rewards needs a reward function, and a group to compare them in.
        if not cfg.orchestrator.reward_fn:
            problems.append(
                Problem(
                    "orchestrator.reward_fn",
                    "is unset, but kd_rl's policy-gradient term (trainer.loss.w_rl > 0) needs a reward for "
                    'every sample. Fix: set orchestrator.reward_fn = "module:function" (e.g. '
                    '"orchestrator.rewards:gsm_symbolic_score"), or trainer.loss.w_rl = 0.',
                )
            )
        if cfg.on_policy.samples_per_prompt < 2:
            problems.append(
                Problem(
                    "on_policy.samples_per_prompt",
                    "is 1, but kd_rl's advantage is a sample's reward minus its group's mean: with one "
                    "sample per prompt it is always 0 and trainer.loss.w_rl does nothing. "
                    "Fix: set on_policy.samples_per_prompt >= 2 (e.g. 4), or trainer.loss.w_rl = 0.",
                )
            )
    return problems


def _norm_url(url: str) -> str:
    """A base URL compared loosely: scheme and host lower-cased, localhost = 127.0.0.1, no trailing / or /v1."""
    from urllib.parse import urlsplit

    u = urlsplit(url.strip())
    host = (u.hostname or "").lower()
    host = "127.0.0.1" if host in ("localhost", "0.0.0.0", "::1") else host
    port = u.port or (443 if u.scheme == "https" else 80)
    path = u.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    return f"{host}:{port}{path}"


def _teacher_urls(cfg: RunConfig) -> list[tuple[str, str]]:
    """(key path, URL) of every teacher endpoint: the rollout model's and the scorer's."""
    rm = cfg.orchestrator.rollout_model
    out = [("orchestrator.rollout_model.base_url", rm.base_url)]
    out += [(f"orchestrator.rollout_model.extra_base_urls[{i}]", u) for i, u in enumerate(rm.extra_base_urls)]
    if cfg.scorer is not None:
        out.append(("scorer.base_url", cfg.scorer.base_url))
        out += [(f"scorer.extra_base_urls[{i}]", u) for i, u in enumerate(cfg.scorer.extra_base_urls)]
    return out


def _check_student_server(cfg: RunConfig) -> list[Problem]:
    """`on_policy.sampler = "server"` needs a student server that is no teacher's, with a refresh that
    fits the trainer (full weights or a LoRA adapter)."""
    op = cfg.on_policy
    srv = op.student_server
    if op.sampler != "server":
        if srv is not None:
            return [
                Problem(
                    "on_policy.student_server",
                    f'is set, but on_policy.sampler = "{op.sampler}" samples in the trainer\'s process and '
                    'would never use it. Fix: set on_policy.sampler = "server", or remove [on_policy.student_server].',
                )
            ]
        return []
    if srv is None:
        return [
            Problem(
                "on_policy.student_server",
                'is unset, but on_policy.sampler = "server" samples on the student\'s own inference server. '
                'Fix: add [on_policy.student_server] with type = "vllm" and its base_url '
                '(docs/on_policy.md, "Student inference server"), or set on_policy.sampler = "in_process".',
            )
        ]
    problems: list[Problem] = []
    # A refresh writes the student's weights into that server: never a teacher's.
    mine = _norm_url(srv.base_url)
    for key, url in _teacher_urls(cfg):
        if _norm_url(url) == mine:
            problems.append(
                Problem(
                    "on_policy.student_server.base_url",
                    f"is the teacher's server ({key} = {redact_url(url)!r}); after every step the trainer loads the "
                    "student's weights into the student server, and a teacher's weights are never ours to "
                    "replace. Fix: start a separate server for the student and point "
                    "on_policy.student_server.base_url at it.",
                )
            )
    lora = cfg.trainer.lora.enabled
    if srv.refresh == "lora_adapter" and not lora:
        problems.append(
            Problem(
                "on_policy.student_server.refresh",
                '"lora_adapter" loads the trained LoRA adapter, but trainer.lora.enabled = false trains every '
                'weight. Fix: set refresh = "reload_weights", or trainer.lora.enabled = true.',
            )
        )
    if srv.refresh == "reload_weights" and lora:
        problems.append(
            Problem(
                "on_policy.student_server.refresh",
                '"reload_weights" reloads full weights, but trainer.lora.enabled = true trains an adapter. '
                'Fix: set refresh = "lora_adapter" (the server started with --enable-lora).',
            )
        )
    return problems
