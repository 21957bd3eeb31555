"""The teacher rows of a mixed on-policy step (`on_policy.teacher_fraction` > 0; docs/on_policy.md,
"Mixing teacher samples"; the combined loss is trainer/mix.py's).

Step i (0-based) takes n = round(teacher_fraction x trainer.samples_per_step) rows of the folder
`on_policy.teacher_samples` (its shards in order, their samples in file order; the folder's rows
i*n .. i*n+n-1, wrapping around: an epoch of the teacher samples per len(folder)/n steps). They are
written to OUTPUT_DIR/on_policy/teacher-<i>.jsonl before the step trains, and a resumed run reads them
back from there: each step trains on the same teacher rows as the uninterrupted run. Rows answering a
held-out eval prompt (the first on_policy.eval_prompts of orchestrator.source) are left out of the
folder's order, and counted (`left_out`; the loop prints the count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.core.config.checks_onpolicy import teacher_rows_per_step
from distill.core.contract import Sample, iter_samples
from distill.on_policy_parts import OnPolicyError, StepFiles, read_samples, write_samples


class TeacherRows:
    """`rows(i)`: step i's teacher rows (module docstring). The folder is read and checked at once, so
    that a wrong folder fails before anything is sampled or scored."""

    def __init__(
        self, cfg: Any, files: StepFiles, vocab_size: int | None = None, held_out: frozenset[str] = frozenset()
    ):
        from trainer.losses import LossInputError, check_inputs
        from trainer.mix import teacher_loss_config

        self.n = teacher_rows_per_step(cfg)
        self.files = files
        self.loss_type = teacher_loss_config(cfg.trainer.loss).type
        folder = Path(cfg.on_policy.teacher_samples)
        where = f"on_policy.teacher_samples = {str(folder)!r}"
        if not folder.is_dir():
            raise OnPolicyError(f"{where}: no such folder. Fix: make it with `distill rollout CFG` (the teacher's "
                                "samples) or point the key at an existing samples folder")  # fmt: skip
        rows = list(iter_samples(folder))
        # rows answering a held-out eval prompt would teach the student the eval's answers: left out, counted
        self.pool: list[Sample] = [s for s in rows if s.prompt_id not in held_out]
        self.left_out = len(rows) - len(self.pool)
        if len(self.pool) < self.n:
            raise OnPolicyError(
                f"{where} holds {len(self.pool)} samples (shard-*.jsonl; {self.left_out} more answer held-out "
                f"eval prompts and are left out), but a step takes {self.n} teacher rows "
                "(on_policy.teacher_fraction x trainer.samples_per_step). Fix: add teacher samples "
                "(distill rollout CFG) or lower on_policy.teacher_fraction"
            )
        if vocab_size is not None:
            self._check_vocab(where, vocab_size)
        try:  # a topk_kl teacher row needs the teacher's top-k (a scored folder); an sft row needs nothing more
            check_inputs(self.loss_type, self.pool)
        except LossInputError as e:
            raise OnPolicyError(f"{where}: {e}") from None

    def _check_vocab(self, where: str, vocab_size: int) -> None:
        bad = [s for s in self.pool if max(s.prompt_ids + s.completion_ids, default=0) >= vocab_size]
        if bad:
            top = max(max(s.prompt_ids + s.completion_ids) for s in bad)
            raise OnPolicyError(
                f"{where}: sample {bad[0].sample_id} holds token id {top}, but the student's vocabulary has "
                f"{vocab_size} tokens ({len(bad)} of {len(self.pool)} samples are out of it): the folder was made "
                "with another tokenizer. Fix: make it with this student (distill rollout CFG, same [student])"
            )

    def path(self, step: int) -> Path:
        return self.files.dir / f"teacher-{step:06d}.jsonl"

    def rows(self, step: int) -> list[Sample]:
        written = read_samples(self.path(step))
        if written is not None:  # a resumed run: the rows this step was first given
            return written
        start = step * self.n
        rows = [self.pool[(start + j) % len(self.pool)] for j in range(self.n)]
        write_samples(self.path(step), rows)
        return rows
