"""Run configuration schema: `[trackers]`, where training metrics go besides metrics.jsonl (always written)
and W&B (`[wandb]`); trainer/trackers.py implements them, docs/training.md "Experiment trackers" shows them."""

from __future__ import annotations

from pydantic import field_validator

from .schema import Strict
from .url_checks import check_run_label

#: config key -> (module it needs, what to pip install); preflight refuses an enabled one whose module is missing.
TRACKER_PACKAGES = {
    "wandb.enabled": ("wandb", "wandb"),
    "trackers.tensorboard": ("tensorboard", "tensorboard"),
    "trackers.trackio": ("trackio", "trackio"),
}


class Trackers(Strict):
    """Extra experiment trackers, each off by default; all are written by rank 0 only."""

    # Also write TensorBoard event files to OUTPUT_DIR/tensorboard (`tensorboard --logdir OUTPUT_DIR`;
    # needs `pip install tensorboard`).
    tensorboard: bool = False
    # Also log to trackio, a local-first tracker: a SQLite database per project under $TRACKIO_DIR
    # (default ~/.cache/huggingface/trackio), viewed with `trackio show` (needs `pip install trackio`).
    trackio: bool = False
    # trackio project.
    trackio_project: str = "distill"
    # trackio run name (default: the output_dir's name); a resumed run continues the run of that name.
    trackio_run: str | None = None

    @field_validator("trackio_project", "trackio_run")
    @classmethod
    def _check_names(cls, v: str | None) -> str | None:
        return check_run_label(v, "HF_TOKEN, and only to sync to a Space (its local database needs none)")
