"""The parts of the on-policy loop (distill/on_policy.py): prompts per step, the step files that make a
run resumable, the scoring thread, rewards, and the per-step sample statistics.

Step files (all written atomically, fsynced; docs/on_policy.md, "Resume"):

    OUTPUT_DIR/on_policy/sampled-000004.jsonl   the student's samples for train step 4 (0-based), before
                                                scoring: a resumed run scores exactly these tokens
    OUTPUT_DIR/samples/shard-000004.jsonl       the same samples with teacher logprobs (and rewards):
                                                a resumed run trains on them without asking anyone
    OUTPUT_DIR/on_policy/eval-000010.jsonl      the held-out samples scored after step 10
    OUTPUT_DIR/scores.jsonl                     every scoring answer (orchestrator/score_store.py)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from distill.core.contract import Rejection, Sample, atomic_write_text, read_shard


class OnPolicyError(Exception):
    """The on-policy loop cannot go on; the message names the key or file and the fix."""


# --- prompts -----------------------------------------------------------------------------------------


def load_prompt_pool(cfg: Any) -> tuple[list[dict], list[dict]]:
    """(held-out eval prompts, training prompts) from `orchestrator.source`: the first
    `on_policy.eval_prompts` prompts are held out, never trained on."""
    from orchestrator.prompts import load_prompts

    prompts = list(load_prompts(cfg.orchestrator.source))
    n_eval = cfg.on_policy.eval_prompts
    per_step = prompts_per_step(cfg)
    if len(prompts) < n_eval + per_step:
        raise OnPolicyError(
            f"orchestrator.source holds {len(prompts)} prompts, but on-policy mode holds out "
            f"on_policy.eval_prompts = {n_eval} and a step samples {per_step} prompts (trainer.samples_per_step / "
            f"on_policy.samples_per_prompt). Fix: raise orchestrator.source.size (or add prompts) to at least "
            f"{n_eval + per_step}"
        )
    return prompts[:n_eval], prompts[n_eval:]


def prompts_per_step(cfg: Any) -> int:
    """The student's prompts per step: its rows (trainer.samples_per_step less the teacher rows of a
    mixed step, on_policy.teacher_fraction) / on_policy.samples_per_prompt."""
    from distill.core.config.checks_onpolicy import teacher_rows_per_step

    return (cfg.trainer.samples_per_step - teacher_rows_per_step(cfg)) // cfg.on_policy.samples_per_prompt


def step_prompts(pool: list[dict], step: int, per_step: int) -> list[dict]:
    """The prompts of train step `step` (0-based): the pool in order, wrapping around (an epoch)."""
    start = step * per_step
    return [pool[(start + j) % len(pool)] for j in range(per_step)]


class Renderer:
    """Prompt records -> the sampler's (prompt_id, prompt ids), each rendered once by the student's
    `Reconstructor` (Reconstructor.prompt_ids): the prompt its SFT samples of the same conversation are
    trained after, under the same normalisation and policies (the system merge, stripping, roles and text
    parts, tool-call arguments in the template's shape, the reasoning of earlier turns, tool definitions).
    Before, a second copy of some of those rules rendered them (orchestrator/prompt_policies.py), and a
    multi-turn prompt's earlier calls and reasoning reached the template as loaded."""

    def __init__(self, reconstructor: Any):
        self.recon = reconstructor
        self.cache: dict[str, list[int]] = {}

    def __call__(self, prompts: list[dict]) -> list[tuple[str, list[int]]]:
        out = []
        for p in prompts:
            pid = p["prompt_id"]
            if pid not in self.cache:
                self.cache[pid] = self.recon.prompt_ids(p["messages"], p.get("tools"))
            out.append((pid, self.cache[pid]))
        return out

    def usable(self, prompts: list[dict]) -> tuple[list[dict], list[Rejection]]:
        """The prompts the student can be given, each rendered now (kept for __call__), and a Rejection for
        each one reconstruction rejects (a conversation it would not train on: its reason and detail)."""
        from orchestrator.reconstruction.reasons import Reject

        kept, rejected = [], []
        for p in prompts:
            try:
                self([p])
            except Reject as r:
                rejected.append(Rejection(p["prompt_id"], r.reason, r.detail))
            else:
                kept.append(p)
        return kept, rejected


def usable_prompts(
    render: Renderer, eval_prompts: list[dict], pool: list[dict], cfg: Any, run_dir: Path | None, say: bool = True
) -> tuple[list[dict], list[dict]]:
    """(eval prompts, pool) less the prompts reconstruction rejects, rendered once at the start so that a bad
    prompt is reported, not met mid-run: their count by reason on stderr (`say`: rank 0) and each in
    run_dir/rejects.jsonl (None: not written, a rank other than 0 or a dry run). OnPolicyError when too few
    are left for a step."""
    eval_kept, eval_out = render.usable(eval_prompts)
    kept, out = render.usable(pool)
    rejected = eval_out + out
    if run_dir is not None:
        if rejected:
            atomic_write_text(run_dir / "rejects.jsonl", "".join(r.to_json() + "\n" for r in rejected))
        else:
            (run_dir / "rejects.jsonl").unlink(missing_ok=True)  # an earlier start's, since repaired
    if say and rejected:
        reasons = collections.Counter(r.reason for r in rejected).most_common()
        first = rejected[0]
        listed = (
            f"listed in {run_dir / 'rejects.jsonl'}" if run_dir is not None else "a run lists them in rejects.jsonl"
        )
        print(
            f"on-policy: {len(rejected)} of {len(eval_prompts) + len(pool)} prompts left out, as reconstruction "
            f"would reject them ({', '.join(f'{n} {k}' for k, n in reasons)}; the first, {first.item_id!r}: "
            f"{first.detail}); {listed}",
            file=sys.stderr,
        )
    if eval_prompts and not eval_kept:
        raise OnPolicyError(
            f"all {len(eval_prompts)} held-out prompts (the first on_policy.eval_prompts of orchestrator.source) "
            "are rejected (rejects.jsonl). Fix: repair them (each rejection names its reason), or set both "
            "on_policy.eval_prompts and on_policy.eval_every to 0"
        )
    per_step = prompts_per_step(cfg)
    if len(kept) < per_step:
        raise OnPolicyError(
            f"orchestrator.source holds {len(kept)} training prompts the student can be given ({len(out)} of "
            f"{len(pool)} rejected: rejects.jsonl), but a step samples {per_step}. Fix: repair the prompts "
            "(each rejection names its reason), or add prompts"
        )
    return eval_kept, kept


# --- step files ----------------------------------------------------------------------------------------


def write_samples(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(s.to_json() + "\n" for s in samples))


def read_samples(path: Path) -> list[Sample] | None:
    return read_shard(path) if path.is_file() else None


class StepFiles:
    """Where the samples of each train step (0-based) and of each eval live (module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.dir = run_dir / "on_policy"
        self.samples_dir = run_dir / "samples"

    def sampled(self, step: int) -> Path:
        return self.dir / f"sampled-{step:06d}.jsonl"

    def scored(self, step: int) -> Path:
        return self.samples_dir / f"shard-{step:06d}.jsonl"

    def eval(self, step: int) -> Path:
        return self.dir / f"eval-{step:06d}.jsonl"


# --- rewards ---------------------------------------------------------------------------------------------


def make_rewarder(cfg: Any, tokenizer: Any, prompts: list[dict]) -> Callable[[list[Sample]], list[Sample]] | None:
    """With `orchestrator.reward_fn` set: a function giving each sample its reward (the function called
    on the prompt record and the decoded completion, special tokens left out); else None."""
    if not cfg.orchestrator.reward_fn:
        return None
    from orchestrator.rewards import load_reward_fn

    fn = load_reward_fn(cfg.orchestrator.reward_fn)
    by_id = {p["prompt_id"]: p for p in prompts}

    def reward(samples: list[Sample]) -> list[Sample]:
        out = []
        for s in samples:
            text = tokenizer.decode(s.completion_ids, skip_special_tokens=True)
            r = float(fn(by_id[s.prompt_id], text))
            if not math.isfinite(r):
                raise OnPolicyError(
                    f"orchestrator.reward_fn returned {r} for sample {s.sample_id}; rewards must be finite"
                )
            out.append(dataclasses.replace(s, reward=r))
        return out

    return reward


# --- the scoring thread -----------------------------------------------------------------------------


class ScoringThread:
    """The `[scorer]` (orchestrator/scoring.py) on its own event loop in a thread: `submit(samples, path)`
    returns a Future of (scored samples with rewards, seconds spent); the scored samples are written to
    `path` before the future completes. Scoring thus overlaps the main thread's training."""

    def __init__(self, cfg: Any, run_dir: Path, tokenizer: Any, rewarder, stop_event: threading.Event | None = None):
        from orchestrator.score_store import SCORES_FILE
        from orchestrator.scoring import Scorer, scorer_api_key

        self.rewarder = rewarder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="on-policy-scorer", daemon=True)
        self.thread.start()
        self.requests = 0
        self.reused = 0

        async def make() -> Any:
            return Scorer(cfg.scorer, scorer_api_key(cfg.scorer), tokenizer, run_dir / SCORES_FILE, stop_event)

        self.scorer = asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    def submit(self, samples: list[Sample], path: Path) -> Future:
        return asyncio.run_coroutine_threadsafe(self._score(samples, path), self.loop)

    async def _score(self, samples: list[Sample], path: Path) -> tuple[list[Sample], float]:
        t0 = time.perf_counter()
        res = await self.scorer.score(samples)
        self.requests += res.sent
        self.reused += res.reused
        if len(res.scored) < len(samples):
            why = res.stop_reason or "unknown"
            raise OnPolicyError(
                f"scoring stopped at {why} ([scorer.budget]) with {len(samples) - len(res.scored)} of "
                f"{len(samples)} samples of this step unscored; what was scored is recorded in scores.jsonl. "
                "Fix: raise the [scorer.budget] limit and rerun the same command to resume"
            )
        scored = res.scored
        if self.rewarder is not None:
            scored = await asyncio.to_thread(self.rewarder, scored)
        write_samples(path, scored)
        return scored, time.perf_counter() - t0

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.scorer.aclose(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=60)


# --- statistics ------------------------------------------------------------------------------------------


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def sample_stats(samples: list[Sample], prefix: str = "") -> dict[str, float | None]:
    """Per sampled (trained) token: the reverse-KL estimate mean(log piS - log piT) with log piS the
    sampling policy's logprob, the teacher's and the student's mean logprob; per sample: mean and max
    length, the fraction cut at on_policy.max_new_tokens, and the mean reward when rewarded."""
    s_lp, t_lp = [], []
    for s in samples:
        for m, mu, t in zip(s.completion_mask, s.sampling_logprobs or [], s.teacher_logprobs or []):
            if m and mu is not None and t is not None:
                s_lp.append(float(mu))
                t_lp.append(float(t))
    lengths = [len(s.completion_ids) for s in samples]
    rewards = [float(s.reward) for s in samples if s.reward is not None]
    out: dict[str, float | None] = {
        "reverse_kl": _mean([a - b for a, b in zip(s_lp, t_lp)]),
        "teacher_logprob_mean": _mean(t_lp),
        "student_logprob_mean": _mean(s_lp),
        "sample_len_mean": _mean([float(n) for n in lengths]),
        "sample_len_max": float(max(lengths)) if lengths else None,
        "truncated_frac": _mean([1.0 if s.finish_reason == "length" else 0.0 for s in samples]),
    }
    if rewards:
        out["reward_mean"] = _mean(rewards)
    return {prefix + k: v for k, v in out.items()}
