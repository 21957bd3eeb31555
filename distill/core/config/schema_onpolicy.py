"""Run configuration schema, part 4: `[on_policy]`, on-policy distillation (the student samples, the
`[scorer]` grades each sampled token, a teacher-logprob loss trains on it; docs/on_policy.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .schema import Strict
from .schema_student_server import StudentServer


class OnPolicy(Strict):
    """On-policy distillation. Off by default: `distill run` then trains on teacher samples (SFT mode)."""

    # Sample from the student instead of asking orchestrator.rollout_model; needs a [scorer] and one
    # of the on-policy losses (reverse_kl, iw_opd, kd_rl) or topk_kl.
    enabled: bool = False
    # Where the student's samples come from: "in_process" generates with the trainer's current weights
    # (batched, KV cache; exact on-policy, no weight transfer); "server" asks the student's own inference
    # server ([on_policy.student_server]), refreshed from the saved weights after every optimizer step.
    sampler: Literal["in_process", "server"] = "in_process"
    # The student's inference server, with on_policy.sampler = "server" (unset: none).
    student_server: StudentServer | None = None
    # Samples per prompt, one group (group-relative losses such as kd_rl compare them);
    # trainer.samples_per_step must be a multiple of it.
    samples_per_prompt: int = Field(4, ge=1)
    # Most new tokens per student sample.
    max_new_tokens: int = Field(128, ge=1)
    # Sampling temperature and nucleus; the sampled tokens' logprobs under exactly this policy are kept.
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # Sequences generated together in one batched generate call.
    generation_batch_size: int = Field(8, ge=1)
    # Most optimizer steps between the weights that sampled a batch and the weights that train on it
    # (0 = strictly on-policy: sample, score, train in turn; 1 lets sampling of step t+1 overlap step t).
    max_off_policy_steps: int = Field(1, ge=0)
    # Held-out prompts (taken first from the prompt source, never trained) on which the student's
    # samples are scored every eval_every steps: their mean reverse KL is logged as eval_reverse_kl.
    eval_prompts: int = Field(0, ge=0)
    eval_every: int = Field(0, ge=0)
    # Mixing (docs/on_policy.md, "Mixing teacher samples"): this fraction of each step's samples,
    # round(teacher_fraction x trainer.samples_per_step) rows (halves up), are the teacher's own samples
    # from on_policy.teacher_samples, trained with masked NLL (or topk_kl when trainer.loss.type is topk_kl);
    # the rest are the student's, with trainer.loss.type. 0 = purely on-policy.
    teacher_fraction: float = Field(0.0, ge=0, lt=1)
    # With teacher_fraction > 0: a samples folder (shard-*.jsonl, as written by `distill rollout` or
    # `distill replay`; scored by `distill score` for topk_kl) whose rows are taken in order, wrapping around.
    teacher_samples: str | None = None
