"""SFT trainer: setup, step loop, save (one optimizer step: trainer/step.py).

    train(cfg, run_dir)            one process, or every rank under
                                   `torchrun --nproc-per-node N -m distill train cfg.toml`

Each optimizer step takes the next `samples_per_step` samples from the stream the
orchestrator publishes (waiting for them if it is still producing). Rank r trains
on samples r, r+N, r+2N, ... of them, packed into rows of seq_len and grouped in
micro-batches of micro_batch_rows rows. The step's loss is the mean over every trained token
of the step on every rank of the loss trainer.loss.type names (NLL for sft, the top-k KL for
topk_kl; see trainer/losses/).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from distill.core.config import RunConfig, Trainer, redacted_dict, to_toml
from distill.core.verbosity import bar_position
from distill.core import contract
from trainer import checkpoint as ckpt_io
from trainer import dist
from trainer.untrained import Untrained, nothing_to_train
from trainer.data import check_vocab, note_consumed
from trainer.lora import check_resume
from trainer.trackers import Tracker, open_trackers
from trainer.model import is_sharded, load_student, shard

# the step lives in trainer/step.py; its names stay importable from here, and _one_step and
# overfit_check call train_step through this module (tests patch trainer.train.train_step)
from trainer.step import accumulate_gradients, evaluate, train_step  # noqa: F401 - re-exported


# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------


def lr_factor(step: int, t: Trainer) -> float:
    """Multiplier of optim.lr for 0-based `step`: linear warmup, then the decay schedule."""
    o = t.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, t.max_steps - o.warmup_steps))
    if o.schedule == "linear":
        return 1.0 - (1.0 - o.min_lr_ratio) * progress
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, t: Trainer):
    o = t.optim
    params = [p for p in model.parameters() if p.requires_grad]  # a LoRA student: the adapters only
    # One process: the fused AdamW kernel (CPU and CUDA), measured 4x faster than the default per-tensor
    # loop on CPU (bench/bench_trainer.py's breakdown, docs/training.md); sharded (DTensor) parameters
    # keep torch's default.
    fused = not is_sharded(model) and all(p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=fused or None
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t))
    return opt, sched


def build_model(model_dir: Path, t: Trainer, ctx: dist.DistContext, adapter_from: Path | None = None):
    model = load_student(
        model_dir, ctx.device, t.loss, t.activation_checkpointing, t.dtype, t.lora, adapter_from, seed=t.seed
    )
    if ctx.distributed:
        shard(model, ctx, t.dtype)
    return model


def _seed(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _check_dirs(run_dir: Path, samples_dir: Path, resume: bool, producer_alive) -> None:
    if not resume and ckpt_io.latest(run_dir / "checkpoints") is not None:
        raise FileExistsError(
            f"{run_dir / 'checkpoints'} holds checkpoints of an earlier run. Fix: resume it "
            "(distill train --resume), or set output_dir to a new folder, or delete that folder"
        )
    if producer_alive is None and not samples_dir.is_dir():
        raise FileNotFoundError(
            f"no samples directory {samples_dir}. Fix: produce samples first (distill rollout / distill replay "
            "with the same output_dir), or pass --samples DIR"
        )


def _training_stream(follow, samples_dir: Path, seen: int, held: int, repeat: bool) -> Iterator[contract.Sample]:
    """Samples from absolute position `seen` on: the live stream first; then, once the
    producer is done and `repeat` is set, the finished set again and again (minus the
    `held` held-out samples at its start). Position n of a later epoch is sample
    held + (n - held) % pool_size, so a resumed run picks up exactly where it stopped."""
    pos = seen
    for s in follow(seen):
        pos += 1
        yield s
    if not repeat:
        return
    pool = list(contract.iter_samples(samples_dir))[held:]
    if not pool:
        return
    i = (pos - held) % len(pool)
    while True:
        yield pool[i]
        i = (i + 1) % len(pool)


def _checkpoint_due(c, step: int, saved_clock: float, ctx: dist.DistContext) -> bool:
    """Save now? Every `c.every` steps, or once `c.every_seconds` have passed since the last save.
    Rank 0's clock decides (save is collective: every rank must agree), so the time test is
    reduced over the ranks with max."""
    if c.every and step % c.every == 0:
        return True
    if not c.every_seconds:
        return False
    late = 1.0 if time.monotonic() - saved_clock >= c.every_seconds else 0.0
    if ctx.distributed:
        late = dist.all_reduce([late if ctx.is_main else 0.0], ctx, op="max")[0]
    return late > 0


def _take(stream: Iterator[contract.Sample], n: int) -> list[contract.Sample]:
    return list(itertools.islice(stream, n))


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


@dataclass
class _Session:
    """What train() sets up once and its steps share."""

    t: Trainer
    ctx: dist.DistContext
    samples_dir: Path
    ckpt_root: Path
    start: Path | None  # the checkpoint resumed from
    tokenizer: Any
    model: Any
    optimizer: Any
    scheduler: Any
    state: ckpt_io.TrainState
    pad_id: int
    config_toml: str
    trackers: list[Tracker]
    bar: Any

    @property
    def vocab(self) -> int:
        """The student's embedding rows: a token id must be below it."""
        return self.model.lm.get_input_embeddings().num_embeddings

    def save(self) -> Path:
        return ckpt_io.save(
            self.ckpt_root,
            self.model,
            self.optimizer,
            self.scheduler,
            self.state,
            self.tokenizer,
            self.config_toml,
            self.ctx,
            self.t.checkpoint.keep_last,
        )

    def log(self, last: dict) -> None:
        for tr in self.trackers:
            tr.log(self.state.step, last)


def _setup(
    cfg: RunConfig,
    run_dir: Path,
    samples_dir: Path,
    resume: bool,
    producer_alive: Callable[[], bool] | None,
    progress: bool,
) -> _Session:
    from distill.core.student import load_tokenizer, resolve_student

    t = cfg.trainer
    ckpt_root = run_dir / "checkpoints"
    ctx = dist.init(t.device)
    _seed(t.seed, ctx.rank)
    _check_dirs(run_dir, samples_dir, resume, producer_alive)
    start = ckpt_io.latest(ckpt_root) if resume else None
    if start is not None:
        ckpt_io.check_complete(start)
        check_resume(start, t.lora.enabled)
    # a LoRA run resumes from the student itself plus the checkpoint's adapter
    model_dir = start if start and not t.lora.enabled else resolve_student(cfg.student.path)
    # student.chat_template (when set) replaces the tokenizer's template; the checkpoints' tokenizer carries it
    tokenizer = load_tokenizer(cfg.student.tokenizer or start or model_dir, cfg.student.chat_template)
    model = build_model(model_dir, t, ctx, adapter_from=start if t.lora.enabled else None)
    optimizer, scheduler = build_optimizer(model, t)
    state = ckpt_io.load_state(start, model, optimizer, scheduler, ctx) if start else ckpt_io.TrainState()
    pad_id = _pad_id(tokenizer)
    config_toml = to_toml(redacted_dict(cfg))
    trackers = open_trackers(cfg, run_dir, state.step, ctx)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        # its own row when the orchestrator's bar runs beside it (distill run: producer_alive is set)
        bar = tqdm(
            total=t.max_steps,
            initial=state.step,
            desc="train",
            unit="step",
            **bar_position("train", producer_alive is not None),
        )
    return _Session(
        t,
        ctx,
        samples_dir,
        ckpt_root,
        start,
        tokenizer,
        model,
        optimizer,
        scheduler,
        state,
        pad_id,
        config_toml,
        trackers,
        bar,
    )


def _one_step(
    s: _Session, samples: list[contract.Sample], held_out: list[contract.Sample], wait_s: float = 0.0
) -> dict:
    """Train one step on `samples` (waited for `wait_s` seconds); its metrics (with eval_loss when an eval is due)."""
    t, state = s.t, s.state
    t0 = time.perf_counter()
    m = train_step(s.model, s.optimizer, s.scheduler, samples, t, s.ctx, s.pad_id)
    dt = time.perf_counter() - t0
    m["time_wait_s"] = wait_s
    state.step += 1
    state.samples_seen += len(samples)
    if s.ctx.is_main:
        note_consumed(s.samples_dir, state.samples_seen)
    last = {
        "step": state.step,
        **m,
        "tokens_per_s": m["tokens"] / dt,
        "step_time_s": dt,
        "samples_seen": state.samples_seen,
    }
    if held_out and (state.step % t.eval_every == 0 or state.step == t.max_steps):
        last["eval_loss"] = evaluate(s.model, held_out, t, s.ctx, s.pad_id)
    return last


def _steps(
    s: _Session, stream: Iterator[contract.Sample], held_out: list[contract.Sample], in_run: bool
) -> tuple[dict, int, Path | None]:
    """The step loop: (the last step's metrics, the step last saved at (-1: none), the last checkpoint)."""
    t, state = s.t, s.state
    last: dict = {}
    logged = True
    saved_at = state.step if s.start else -1
    saved = s.start
    saved_clock = time.monotonic()  # checkpoint.every_seconds counts from here / from the last save
    untrained = Untrained()
    while state.step < t.max_steps:
        t_wait = time.perf_counter()
        try:
            samples = _take(stream, t.samples_per_step)
            check_vocab(samples, s.vocab, s.samples_dir)
        except Exception:
            # the producer failed, or a shard is damaged: keep the steps trained so far (a rerun resumes from
            # them); several ranks only under `distill run`, where all see it (a collective save could hang)
            if (in_run or not s.ctx.distributed) and state.step > max(saved_at, 0):
                s.save()
            raise
        if not samples:
            break
        last = _one_step(s, samples, held_out, time.perf_counter() - t_wait)
        untrained.note(last, state.step)
        logged = state.step % t.log_every == 0 or state.step == t.max_steps or "eval_loss" in last
        if logged:
            s.log(last)
        if s.bar is not None:
            s.bar.update(1)
            s.bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
        if _checkpoint_due(t.checkpoint, state.step, saved_clock, s.ctx):
            saved = s.save()
            saved_at, saved_clock = state.step, time.monotonic()

    untrained.check()  # every step of this run had nothing to train: fail before the final save
    if last and not logged:  # the stream ended between two logged steps: log the last one
        if held_out:
            last["eval_loss"] = evaluate(s.model, held_out, t, s.ctx, s.pad_id)
        s.log(last)
    return last, saved_at, saved


def train(
    cfg: RunConfig,
    run_dir: Path,
    samples_dir: Path | None = None,
    *,
    resume: bool = False,
    producer_alive: Callable[[], bool] | None = None,
    progress: bool = True,
) -> dict:
    """Train the student on the samples in samples_dir (default run_dir/samples); see module doc.

    Returns {"steps", "samples_seen", "final_loss", "eval_loss", "checkpoint", "metrics", "resumed_from"}.
    """
    run_dir = Path(run_dir)
    samples_dir = Path(samples_dir) if samples_dir else run_dir / "samples"
    s = _setup(cfg, run_dir, samples_dir, resume, producer_alive, progress)
    t = s.t

    def follow(start: int):
        return contract.follow_samples(
            samples_dir, start=start, timeout_s=t.sample_timeout, producer_alive=producer_alive
        )

    try:
        # Held-out slice: the stream's first eval_samples samples, never trained on.
        held_out: list[contract.Sample] = []
        if t.eval_samples and t.eval_every:
            held_out = _take(follow(0), t.eval_samples)
            check_vocab(held_out, s.vocab, samples_dir)
            s.state.samples_seen = max(s.state.samples_seen, len(held_out))
        stream = _training_stream(follow, samples_dir, s.state.samples_seen, len(held_out), t.repeat)
        last, saved_at, saved = _steps(s, stream, held_out, producer_alive is not None)
        # --- save ----------------------------------------------------------
        if saved_at != s.state.step and s.state.step > 0:  # no step, no checkpoint (the untrained student)
            saved = s.save()
    finally:  # a failed run too hands its trackers what it logged (trackio sends from a queue)
        for tr in s.trackers:
            tr.close()
        if s.bar is not None:
            s.bar.close()  # before an error's message too, which then starts on its own line
    dist.shutdown(s.ctx)
    start = s.start
    if s.state.step == 0 and not start:  # the stream ended before a first step: nothing was trained
        raise contract.ShardError(nothing_to_train(samples_dir, s.state.samples_seen, t.eval_samples))
    return {
        "steps": s.state.step,
        "samples_seen": s.state.samples_seen,
        "final_loss": last.get("loss"),
        "eval_loss": last.get("eval_loss"),
        "checkpoint": str(saved) if saved else None,
        "metrics": str(run_dir / "metrics.jsonl"),
        "resumed_from": str(start) if start else None,
    }


# ---------------------------------------------------------------------------
# Fixed-batch sanity check
# ---------------------------------------------------------------------------


def overfit_check(
    model_dir: str | Path, samples: list[contract.Sample], steps: int = 5, lr: float = 1e-3, seq_len: int | None = None
) -> list[float]:
    """Train a fresh copy of the model at `model_dir` on the same `samples` for `steps` steps
    (one process, CPU, constant lr); return the loss of each step. It should fall."""
    need = max(s.num_tokens for s in samples)
    t = Trainer(
        max_steps=steps,
        samples_per_step=len(samples),
        seq_len=max(seq_len or 0, need, 8),
        device="cpu",
        optim={"lr": lr, "schedule": "constant", "warmup_steps": 0},
    )
    ctx = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    model = build_model(Path(model_dir), t, ctx)
    optimizer, scheduler = build_optimizer(model, t)
    return [train_step(model, optimizer, scheduler, samples, t, ctx, 0)["loss"] for _ in range(steps)]
