"""`distill run` with `on_policy.enabled = true`: the on-policy distillation loop (docs/on_policy.md, "The loop").

Per train step i (0-based; the step that turns weights i into weights i+1):

    prompts   the step's prompts from orchestrator.source (the first on_policy.eval_prompts held out),
              rendered as reconstruction renders a trained turn's prompt (Reconstructor.prompt_ids); those
              it rejects are left out at the start, listed in rejects.jsonl
    sample    StudentSampler (trainer/sampler.py) with the current weights, in this thread, between
              optimizer steps; meta.policy_step = the step of the weights that sampled
    score     the [scorer] grades every sampled token (orchestrator/scoring.py) in the scoring thread;
              with orchestrator.reward_fn each sample also gets its reward (kd_rl's advantages)
    train     one optimizer step with trainer.loss.type through the SFT trainer's step (trainer/step.py)

Overlap and staleness: with K = on_policy.max_off_policy_steps, the samples of steps i+1 .. i+K are drawn
before step i trains (with weights i or older) and scored while it trains; step i never trains on samples
drawn by weights older than i - K (checked: policy_lag_max in the metrics). K = 0 is strictly sequential:
sample, score, train. Generation always runs between optimizer steps, never while the optimizer writes
the weights (no weight snapshot needed; on CPU generation and training would share the same cores).

Durability: every step's samples are written before scoring and again, scored, before training
(distill/on_policy_parts.py, StepFiles); every scoring answer is in scores.jsonl before it is used.
Checkpoints as in SFT (trainer.checkpoint). A resumed run (after Ctrl-C or kill -9) starts from the last
checkpoint and re-trains the steps after it on the samples already written: nothing is sampled or scored
twice, and the weights of each step are those of the uninterrupted run.

Under torchrun (several processes, FSDP2) the ranks share the sampling, rank 0 alone scores, writes and logs
(distill/on_policy_dist.py).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from distill.core.config import RunConfig
from distill.on_policy_parts import (
    OnPolicyError,
    Renderer,
    ScoringThread,
    StepFiles,
    load_prompt_pool,
    make_rewarder,
    prompts_per_step,
    read_samples,
    sample_stats,
    step_prompts,
    usable_prompts,
    write_samples,
)
from distill.on_policy_dist import RankZeroStopped, broadcast, from_rank0, result_from_rank0, sample_shared
from distill.student_server import make_samplers

__all__ = ["OnPolicyError", "cmd_run_on_policy", "run_on_policy"]

#: Eval statistics logged (sample_stats with the "eval_" prefix).
EVAL_KEYS = ("eval_reverse_kl", "eval_teacher_logprob_mean", "eval_student_logprob_mean", "eval_sample_len_mean")


def cmd_run_on_policy(cfg: RunConfig, no_resume: bool) -> int:
    """`distill run CFG` in on-policy mode (after preflight): self-tests, the loop, the summary."""
    from distill.cli_score import prepare_scoring_run
    from distill.core.student import resolve_student
    from distill.run import prepare_run_dir, print_locations

    rank = int(os.environ.get("RANK", "0"))
    # under torchrun rank 0 alone writes the run folder and runs the self-tests (paid requests)
    run_dir = prepare_run_dir(cfg, "run", ("sample", "score", "train")) if rank == 0 else Path(cfg.output_dir)
    resolve_student(cfg.student.path)  # builds the builtin (or weak) student once
    if rank == 0:
        prepare_scoring_run(cfg, run_dir)  # the scorer's self-tests: ScoreCheckError refuses the run
    try:
        summary = run_on_policy(cfg, run_dir, resume=not no_resume)
    except RankZeroStopped as e:  # rank 0 fails with the message and the exit code (distill/on_policy_dist.py)
        print(f"distill: {e}", file=sys.stderr)
        return 0
    if rank != 0:
        return 0
    keys = (
        "steps",
        "samples_seen",
        "final_loss",
        "eval_reverse_kl",
        "scoring_requests",
        "answers_reused",
        "resumed_from",
    )
    print("on-policy: " + "  ".join(f"{k}={summary[k]}" for k in keys if summary.get(k) is not None))
    print_locations(run_dir, summary)
    return 0


def run_on_policy(cfg: RunConfig, run_dir: Path, *, resume: bool = True, progress: bool = True) -> dict:
    """The loop (module docstring); returns the summary dict (steps, checkpoint, metrics, ...)."""
    loop = _Loop(cfg, Path(run_dir), resume, progress)
    try:
        return loop.run()
    finally:
        loop.close()


class _Loop:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool, progress: bool):
        from trainer import checkpoint as ckpt_io
        from trainer.train import _setup

        self.cfg, self.op = cfg, cfg.on_policy
        self.files = StepFiles(run_dir)
        self.eval_prompts, self.pool = load_prompt_pool(cfg)
        if ckpt_io.latest(run_dir / "checkpoints") is None and os.environ.get("RANK", "0") == "0":
            # nothing trained yet: an earlier attempt's step-0 eval line would stay beside the new one
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        # The SFT trainer's setup: model, optimizer, schedule, resumed state, trackers, progress bar.
        self.s = _setup(cfg, run_dir, self.files.samples_dir, resume, lambda: True, progress)
        self.scoring = self.server = None
        try:
            self._init_parts(cfg, run_dir)
        except BaseException:  # what was opened so far (trackers, a student server) is closed, then the error
            self.close()
            raise
        self.pending: dict[int, tuple[Future, float]] = {}
        # True from the optimizer step until the step counter has moved with it: a Ctrl-C or error in
        # between leaves weights one step ahead of state.step, which must not be checkpointed as that step.
        self.updating = False
        self.next_launch = self.s.state.step

    def _init_parts(self, cfg: RunConfig, run_dir: Path) -> None:
        """The loop's parts after the trainer's setup: renderer, samplers, scoring thread, teacher rows."""
        from distill.run import make_reconstructor

        tok, self.main = self.s.tokenizer, self.s.ctx.is_main
        self.render = Renderer(make_reconstructor(cfg, tok, prompts_only=True))
        self.eval_prompts, self.pool = usable_prompts(
            self.render, self.eval_prompts, self.pool, cfg, run_dir if self.main else None, self.main
        )
        # on_policy.sampler: in-process, or the student's own server refreshed after every step.
        self.sampler, self.eval_sampler, self.refresh, self.server = make_samplers(cfg, run_dir, self.s)
        if self.main:  # under torchrun rank 0 alone scores: each sample is paid for once
            self.scoring = ScoringThread(cfg, run_dir, tok, make_rewarder(cfg, tok, self.eval_prompts + self.pool))
        self.mix = None  # on_policy.teacher_fraction > 0: teacher rows in every step (distill/on_policy_mix.py)
        if self.op.teacher_fraction > 0:
            from distill.on_policy_mix import TeacherRows

            held_out = frozenset(p["prompt_id"] for p in self.eval_prompts)
            self.mix = TeacherRows(cfg, self.files, self.s.model.lm.config.vocab_size, held_out)
            if self.mix.left_out and self.main:
                print(f"on-policy: {self.mix.left_out} teacher samples answer held-out eval prompts: left out",
                      file=sys.stderr)  # fmt: skip

    def close(self) -> None:
        if self.s.bar is not None:
            self.s.bar.close()
        if self.scoring is not None:
            self.scoring.close()
        if self.server is not None:
            self.server.close()
        for tr in self.s.trackers:  # metrics.jsonl, and TensorBoard / trackio / W&B when configured
            tr.close()
        from trainer import dist

        dist.shutdown(self.s.ctx)

    # --- sampling and scoring -------------------------------------------------------------------------

    def launch(self, i: int) -> None:
        """Start step i's samples: read back when written (a resumed run), else sample them now with the
        current weights and hand them to the scoring thread. Under torchrun rank 0 reads, writes and scores,
        and tells the other ranks whether to sample (they hold no future: one_step receives the samples)."""
        f, t0 = self.files, time.perf_counter()
        scored = sampled = None
        if self.main:
            scored = read_samples(f.scored(i))
            sampled = read_samples(f.sampled(i)) if scored is None else None
        if broadcast(scored is None and sampled is None, self.s.ctx):  # to sample (every rank's share)
            prompts = self.render(step_prompts(self.pool, i, prompts_per_step(self.cfg)))
            sampled = self._sample(self.sampler, prompts, self.s.state.step)
            if self.main:
                write_samples(f.sampled(i), sampled)
        if not self.main:
            self.pending[i] = (None, time.perf_counter() - t0)
        elif scored is not None:
            done: Future = Future()
            done.set_result((scored, 0.0))
            self.pending[i] = (done, 0.0)
        else:
            self.pending[i] = (self.scoring.submit(sampled, f.scored(i)), time.perf_counter() - t0)

    def _sample(self, sampler: Any, prompts: list, step: int) -> Any:
        return sample_shared(sampler, prompts, step, self.s.ctx, self.op.sampler == "in_process")

    def evaluate(self) -> dict:
        """Held-out stats of the current weights (scored samples written once per step: a resume reuses them)."""
        step, path = self.s.state.step, self.files.eval(self.s.state.step)
        samples = read_samples(path) if self.main else None
        if broadcast(samples is None, self.s.ctx):
            sampled = self._sample(self.eval_sampler, self.render(self.eval_prompts), step)
            future = self.scoring.submit(sampled, path) if self.main else None
            samples, _ = result_from_rank0(self.s.ctx, future)
        if not self.main:
            return {}  # rank 0 logs
        stats = sample_stats(samples, "eval_")
        out = {k: stats[k] for k in EVAL_KEYS}
        if "eval_reward_mean" in stats:
            out["eval_reward_mean"] = stats["eval_reward_mean"]
        return out

    def _eval_due(self, step: int) -> bool:
        every = self.op.eval_every
        return bool(every and self.eval_prompts) and (step % every == 0 or step == self.s.t.max_steps)

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        s, t = self.s, self.s.t
        if s.state.step == 0 and self._eval_due(0):
            s.log({"step": 0, **self.evaluate()})
        saved_at = s.state.step if s.start else -1
        saved, clock = s.start, time.monotonic()
        last: dict = {}
        try:
            while s.state.step < t.max_steps:
                last = self.one_step()
                if s.bar is not None:
                    s.bar.update(1)
                    s.bar.set_postfix(loss=f"{last['loss']:.4f}", rkl=f"{last['reverse_kl']:.3f}")
                if _checkpoint_due(t.checkpoint, s.state.step, clock, s.ctx):
                    saved, saved_at, clock = s.save(), s.state.step, time.monotonic()
        except BaseException:
            # keep the steps trained so far: a rerun resumes from them (not mid-update: the rerun then trains
            # again from the last checkpoint, on the samples already on disk)
            if s.state.step > max(saved_at, 0) and not self.updating:
                s.save()
            raise
        if saved_at != s.state.step and s.state.step > 0:
            saved = s.save()
        return {
            "steps": s.state.step,
            "samples_seen": s.state.samples_seen,
            "final_loss": last.get("loss"),
            "eval_reverse_kl": last.get("eval_reverse_kl"),
            "checkpoint": str(saved) if saved else None,
            "metrics": str(self.files.run_dir / "metrics.jsonl"),
            "resumed_from": str(s.start) if s.start else None,
            "scoring_requests": self.scoring.requests if self.scoring else None,
            "answers_reused": self.scoring.reused if self.scoring else None,
        }

    def one_step(self) -> dict:
        """Launch what the staleness bound allows, wait for step i's scored samples, train on them, log."""
        from trainer.train import train_step  # through trainer.train, as the SFT loop calls it

        s, t, k = self.s, self.s.t, self.op.max_off_policy_steps
        i = s.state.step
        while self.next_launch <= min(i + k, t.max_steps - 1):
            self.launch(self.next_launch)
            self.next_launch += 1
        future, generate_s = self.pending.pop(i)
        t0 = time.perf_counter()
        # rank 0's scored samples, on every rank (trainer/step.py then takes each rank's rows)
        samples, score_s = result_from_rank0(s.ctx, future)
        idle_s = time.perf_counter() - t0
        lag = max(i - int((x.meta or {}).get("policy_step", -1)) for x in samples)
        if not 0 <= lag <= k:  # an invariant of launch(): never train on samples staler than K
            raise OnPolicyError(f"step {i}: samples drawn {lag} steps ago, on_policy.max_off_policy_steps = {k}")
        t1 = time.perf_counter()
        self.updating = True
        if self.mix is None:
            m = train_step(s.model, s.optimizer, s.scheduler, samples, t, s.ctx, s.pad_id)
        else:  # a mixed step: teacher rows (their loss) + the student's samples, one normaliser (trainer/mix.py)
            from trainer.mix import mixed_train_step

            rows = from_rank0(s.ctx, lambda: self.mix.rows(i))  # rank 0 writes them (resume)
            m = mixed_train_step(s.model, s.optimizer, s.scheduler, rows, samples, t, s.ctx, s.pad_id)
        train_s = time.perf_counter() - t1
        s.state.step += 1
        s.state.samples_seen += m["samples"]
        self.updating = False
        last = {
            "step": s.state.step,
            **m,
            "tokens_per_s": m["tokens"] / train_s,
            "step_time_s": train_s,
            "samples_seen": s.state.samples_seen,
            "time_generate_s": generate_s,
            "time_score_s": score_s,
            "time_train_s": train_s,
            "time_idle_s": idle_s,
            "policy_lag_max": lag,
            **sample_stats(samples),
        }
        try:
            if self.refresh is not None:  # before the next sample
                last["time_refresh_s"] = self.refresh(s.state.step)
            if self._eval_due(s.state.step):
                t2 = time.perf_counter()
                last.update(self.evaluate())
                last["time_eval_s"] = time.perf_counter() - t2
        except BaseException:
            s.log(last)  # the step trained (and is checkpointed on the way out): its row is kept
            raise
        if s.state.step % t.log_every == 0 or s.state.step == t.max_steps or "eval_reverse_kl" in last:
            s.log(last)
        return last


def _checkpoint_due(c: Any, step: int, clock: float, ctx: Any) -> bool:
    from trainer.train import _checkpoint_due as due

    return due(c, step, clock, ctx)
