"""Mode checks for on-policy distillation (`on_policy.enabled = true`; docs/on_policy.md, "Validation").

The student samples in-process with its current weights, the `[scorer]` grades every sampled token, and
an on-policy loss trains on those grades. Every problem is reported at once, with its key path and fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checks import ON_POLICY_LOSSES, SCORED_LOSSES, Problem

if TYPE_CHECKING:
    from .schema_run import RunConfig

#: What on-policy mode trains: the on-policy losses, and the scored losses on the student's own samples.
ON_POLICY_MODE_LOSSES = ON_POLICY_LOSSES + tuple(SCORED_LOSSES)


def check_on_policy_mode(cfg: RunConfig) -> list[Problem]:
    """The scorer, the loss (and what it needs), group-sized steps, no weight transfer, eval keys."""
    problems = _check_scorer_and_loss(cfg)
    op, t = cfg.on_policy, cfg.trainer
    n = op.samples_per_prompt
    if t.samples_per_step % n:
        problems.append(
            Problem(
                "trainer.samples_per_step",
                f"{t.samples_per_step} is not a multiple of on_policy.samples_per_prompt ({n}); a step must "
                f"take whole groups (the samples of one prompt). Fix: set trainer.samples_per_step to a "
                f"multiple of {n} (e.g. {max(n, t.samples_per_step - t.samples_per_step % n)}).",
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
