"""A resumed training run keeps the settings its checkpoint was trained with.

Training resumes from the latest checkpoint's weights, optimizer and schedule state and from its place
in the samples stream. A changed learning rate, schedule, loss, sequence length, batch size or seed
would not be what trains from there (the optimizer and schedule come back from the checkpoint;
the stream position counts samples of the old batch size), yet the run dir's config.toml would claim it.
So a resume compares the config with the checkpoint's own `distill_config.toml` and refuses a change
outside RESUMABLE, naming each key with both values and the two ways out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Problem, RunConfig, redacted_dict

#: The section whose settings a checkpoint was trained with.
TRAINED_WITH = ("trainer.",)
#: Keys (or key prefixes) a resume may change: how long and where to train, how often to save and log,
#: and memory/speed settings that leave the arithmetic of a step unchanged.
RESUMABLE = (
    "trainer.max_steps",
    "trainer.sample_timeout",
    "trainer.checkpoint.",
    "trainer.log_every",
    "trainer.device",
    "trainer.micro_batch_rows",
    "trainer.activation_checkpointing",
)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def changed_since_checkpoint(cfg: RunConfig, ckpt: Path) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, this config's value) for every trained-with key that differs. Keys the
    checkpoint's config does not hold (written by an older distill) are not compared."""
    from distill.core.config.load import read_toml

    saved = _flat(read_toml(ckpt / "distill_config.toml"))
    now = _flat(redacted_dict(cfg))
    return [
        (k, saved[k], v)
        for k, v in now.items()
        if k.startswith(TRAINED_WITH) and not k.startswith(RESUMABLE) and k in saved and saved[k] != v
    ]


def check_resume_config(cfg: RunConfig, command: str, resume: bool) -> list[Problem]:
    """Problems for a command that will resume training from a checkpoint with changed settings."""
    ckpts = Path(cfg.output_dir).expanduser() / "checkpoints"
    if command not in ("run", "train") or (command == "train" and not resume) or not ckpts.is_dir():
        return []
    from trainer.checkpoint import latest

    ckpt = latest(ckpts)
    if ckpt is None or not (ckpt / "distill_config.toml").is_file():
        return []
    return [
        Problem(
            key,
            f"is {new!r}, but the checkpoint this run resumes from ({ckpt}) was trained with {old!r}; the "
            "resumed run would go on with the checkpoint's optimizer, schedule and stream position, not this "
            f"value. Fix: resume with {key} = {old!r} (the checkpoint's distill_config.toml), or train from "
            "that checkpoint as a new run: a new output_dir with student.path set to the checkpoint folder "
            "(a LoRA one after `distill export`)",
        )
        for key, old, new in changed_since_checkpoint(cfg, ckpt)
    ]
