"""Experiment trackers: where each logged training step's metrics go (docs/training.md, "Experiment trackers").

A tracker is anything with `log(step, metrics)` and `close()`. `open_trackers` opens them on rank 0 (other
ranks get none): metrics.jsonl always (trainer/metrics.py), then W&B (`[wandb] enabled`), TensorBoard
(`trackers.tensorboard`, event files in RUN_DIR/tensorboard) and trackio (`trackers.trackio`, trackio's local
SQLite store). Only numbers go to W&B, TensorBoard and trackio (metrics.jsonl keeps every field).
Preflight (distill/preflight.py) refuses an enabled tracker whose package is missing, so the imports here
fail only when a caller skipped it.

Resume. A run killed after logging step N but last saved at step S < N trains steps S+1..N again:
- metrics.jsonl: its lines after step S are cut when it is opened;
- TensorBoard: the writer opens with purge_step = S+1, so TensorBoard discards the earlier events
  of steps > S when it reads the folder;
- trackio: the run of the same name continues; trackio cannot delete logged points, so steps up to the
  run's last logged step are not sent again (the first try's values stay; no step is duplicated);
- W&B: the run id is kept in RUN_DIR/wandb_run_id and that run resumed; W&B itself ignores a step
  below its last one (the first try's values stay).
"""

from __future__ import annotations

import secrets
import sys
from numbers import Real
from pathlib import Path
from typing import Protocol

from distill.core.config import RunConfig, redacted_dict
from trainer import dist
from trainer.metrics import MetricsLog


class Tracker(Protocol):
    def log(self, step: int, metrics: dict) -> None: ...

    def close(self) -> None: ...


def numbers(metrics: dict) -> dict[str, float]:
    """The numeric fields of a metrics record (strings such as loss_type and the step itself left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, Real) and not isinstance(v, bool) and k != "step"}


class JsonlTracker:
    """RUN_DIR/metrics.jsonl: every field of every logged step (`distill report` reads it)."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.log_file = MetricsLog(run_dir / "metrics.jsonl", resume_step, enabled=True)

    def log(self, step: int, metrics: dict) -> None:
        self.log_file.write({"step": step, **metrics})

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Scalars in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`)."""

    def __init__(self, run_dir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run_dir / "tensorboard"
        # purge_step: TensorBoard drops the events an earlier try wrote for steps >= it (all of them when
        # the run starts over from step 0, e.g. killed before its first checkpoint)
        self.writer = SummaryWriter(str(self.dir), purge_step=resume_step + 1 if resume_step else 0)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in numbers(metrics).items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrackioTracker:
    """A trackio run (trackio's local SQLite store under $TRACKIO_DIR; `trackio show` views it)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume_step: int = 0):
        import trackio
        from trackio.sqlite_storage import SQLiteStorage

        tc = cfg.trackers
        self.project, self.name = tc.trackio_project, tc.trackio_run or run_dir.name
        last = SQLiteStorage.get_max_step_for_run(self.project, self.name)
        if last is not None and not resume_step:
            # A run that starts from step 0 under a name trackio already holds (a deleted output dir, a
            # try killed before its first checkpoint, another output dir of the same name): trackio cannot
            # replace logged points, so this run logs under the first free "<name>-N" instead.
            base, n = self.name, 2
            while SQLiteStorage.get_max_step_for_run(self.project, f"{base}-{n}") is not None:
                n += 1
            self.name, last = f"{base}-{n}", None
            print(f"trackio: run '{base}' of project '{self.project}' already has steps; this run logs as "
                  f"'{self.name}'", file=sys.stderr)  # fmt: skip
        self.last_logged = -1 if last is None else int(last)
        with _quiet_stdout():  # trackio prints "* Trackio ..." lines; one line of ours says where instead
            self.run = trackio.init(
                project=self.project,
                name=self.name,
                config=redacted_dict(cfg),
                resume="allow",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
        print(f"trackio: project '{self.project}', run '{self.name}' (trackio show --project {self.project})",
              file=sys.stderr)  # fmt: skip

    def log(self, step: int, metrics: dict) -> None:
        if step <= self.last_logged:  # logged by an earlier try of this run; trackio cannot replace it
            return
        self.run.log(numbers(metrics), step=step)

    def close(self) -> None:
        import trackio

        with _quiet_stdout():
            current = getattr(getattr(trackio, "context_vars", None), "current_run", None)
            if current is not None and current.get() is self.run:
                trackio.finish()  # also forgets the run, so trackio's atexit hook does not finish (and print) again
            else:
                self.run.finish()


class WandbTracker:
    """A W&B run (`[wandb]`); its id is kept in RUN_DIR/wandb_run_id so that a resumed run continues it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume_step: int = 0):
        import wandb

        id_file = run_dir / "wandb_run_id"
        # a resumed run continues its W&B run; one starting from step 0 gets a new one (W&B ignores steps
        # lower than a run's last, so the old run would drop them)
        resumed = resume_step and id_file.is_file()
        run_id = id_file.read_text().strip() if resumed else secrets.token_hex(4)  # W&B: 8 of [a-z0-9]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=cfg.wandb.project,
            name=cfg.wandb.name or run_dir.name,
            config=redacted_dict(cfg),
            dir=str(run_dir),
            id=run_id,
            resume="allow",
        )

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(numbers(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(cfg: RunConfig, run_dir: Path, resume_step: int, ctx: dist.DistContext) -> list[Tracker]:
    """The trackers rank 0 logs to (metrics.jsonl first); [] on the other ranks."""
    if not ctx.is_main:
        return []
    run_dir = Path(run_dir)
    out: list[Tracker] = [JsonlTracker(run_dir, resume_step)]
    if cfg.wandb.enabled:
        out.append(WandbTracker(cfg, run_dir, resume_step))
    if cfg.trackers.tensorboard:
        out.append(TensorBoardTracker(run_dir, resume_step))
    if cfg.trackers.trackio:
        out.append(TrackioTracker(cfg, run_dir, resume_step))
    return out


def _quiet_stdout():
    """Swallow a library's stdout chatter unless DISTILL_VERBOSE is set."""
    import contextlib
    import io

    from distill.core.verbosity import verbose

    return contextlib.nullcontext() if verbose() else contextlib.redirect_stdout(io.StringIO())
