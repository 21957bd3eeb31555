"""Checkpoints: one folder per save, an HF model folder plus the trainer's state.

    checkpoints/step-000040/
      config.json, model.safetensors, generation_config.json   AutoModelForCausalLM.from_pretrained
        (a LoRA run: adapter_model.safetensors + adapter_config.json instead, peft's format;
         `distill export step-000040 --merged DIR` writes the merged HF folder)
      tokenizer.json, tokenizer_config.json, chat_template.jinja, ...   (the template trained with:
                                 student.chat_template's when set)
      distill_config.toml        the run's resolved config, secrets redacted
      optimizer.pt               full (unsharded) AdamW state, keyed by parameter name
      scheduler.pt               LR scheduler state
      rng-rank<R>.pt             python / torch / cuda RNG states of each rank
      trainer_state.json         {"step", "samples_seen", "world_size", ...}

A checkpoint is written to a hidden temporary folder and renamed into place, so
`latest()` only ever finds complete ones. Under FSDP the full state dicts are
gathered (to CPU) on rank 0, which alone writes the model and optimizer files.
Model and optimizer are keyed by parameter name, so a run can resume with a
different number of processes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainer.dist import DistContext, barrier

STEP_RE = re.compile(r"^step-(\d{6})$")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    step: int = 0
    samples_seen: int = 0


def _options(model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    from trainer.lora import is_lora
    from trainer.model import is_sharded

    # a LoRA student: only the adapters (the trainable parameters) are gathered and saved
    return StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(model), ignore_frozen_params=is_lora(model))


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if STEP_RE.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def _rng_state() -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _tied_duplicates(module) -> set[str]:
    first: dict[int, str] = {}
    dups = set()
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            dups.add(name)
        else:
            first[id(p)] = name
    return dups


def save(
    ckpt_root: Path,
    model,
    optimizer,
    scheduler,
    state: TrainState,
    tokenizer,
    config_toml: str,
    ctx: DistContext,
    keep_last: int,
) -> Path:
    """Write step-XXXXXX (collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    final = ckpt_root / f"step-{state.step:06d}"
    tmp = ckpt_root / f".step-{state.step:06d}.tmp"
    opts = _options(model)
    model_sd = get_model_state_dict(model, options=opts)  # full on rank 0
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    with _full_disk_named(tmp, final):
        if ctx.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            _save_weights(model, model_sd, tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "distill_config.toml").write_text(config_toml, encoding="utf-8")
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        del model_sd, optim_sd
        barrier(ctx)
        torch.save(_rng_state(), tmp / f"rng-rank{ctx.rank}.pt")
    barrier(ctx)
    if ctx.is_main:
        (tmp / STATE_FILE).write_text(json.dumps({**asdict(state), "world_size": ctx.world}) + "\n")
        _fsync_tree(tmp)  # every file on disk before the folder becomes a checkpoint
        if final.exists():  # re-saving a step: keep the old one until the new one is in place
            final.replace(ckpt_root / f".step-{state.step:06d}.old")
        tmp.replace(final)
        _fsync_path(ckpt_root)
        shutil.rmtree(ckpt_root / f".step-{state.step:06d}.old", ignore_errors=True)
        for old in list_checkpoints(ckpt_root)[:-keep_last]:  # only once the new one is durable
            shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return final


#: Free bytes under which a failed save is taken for a full disk: torch.save reports one as a bare
#: RuntimeError ('basic_ios::clear: iostream error', 'unexpected pos'), not as an OSError.
_NEARLY_FULL = 64 << 20


@contextlib.contextmanager
def _full_disk_named(tmp: Path, final: Path):
    """A save that fails on a full disk is CheckpointSaveError naming the folder and the free space, and
    its partial .tmp folder is removed (it holds nothing usable and takes the space a rerun needs)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        try:
            free = shutil.disk_usage(final.parent).free
        except OSError:
            free = None
        full = (
            isinstance(e, OSError)
            and e.errno in (errno.ENOSPC, errno.EDQUOT)
            or (isinstance(e, RuntimeError) and free is not None and free < _NEARLY_FULL)
        )
        if not full:
            raise
        used = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointSaveError(
            f"cannot save the checkpoint {final.name} in {final.parent}: the disk is full ({free or 0} bytes "
            f"free when it failed, after {used} bytes of it were written). Fix: free space there, or keep fewer "
            "checkpoints (trainer.checkpoint.keep_last), then resume from the last checkpoint saved: rerun the same "
            "command (distill train with --resume)"
        ) from None


def _save_weights(model, model_sd: dict, folder: Path) -> None:
    from trainer.lora import is_lora, save_adapter

    if is_lora(model):
        save_adapter(model, model_sd, folder)
        return
    tied = _tied_duplicates(model.lm)  # the gathered dict repeats tied weights; HF expects them once
    lm_sd = {k.removeprefix("lm."): v for k, v in model_sd.items() if k.removeprefix("lm.") not in tied}
    model.lm.save_pretrained(folder, state_dict=lm_sd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            _fsync_path(f)
    _fsync_path(folder)


def load_state(ckpt: Path, model, optimizer, scheduler, ctx: DistContext) -> TrainState:
    """Restore optimizer, scheduler and RNG into an already built (and sharded) model.

    The model weights themselves are loaded by building the model from `ckpt` (a LoRA run: the
    student from student.path, then the adapter from `ckpt`; trainer/lora.py).
    """
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    optim_sd = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=_options(model))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng = ckpt / f"rng-rank{ctx.rank}.pt"
    if rng.is_file():  # absent when resuming with more ranks than were saved
        _set_rng_state(torch.load(rng, weights_only=False))
    d = json.loads((ckpt / STATE_FILE).read_text())
    return TrainState(step=int(d["step"]), samples_seen=int(d["samples_seen"]))


class CheckpointError(Exception):
    """A checkpoint to resume from is incomplete or damaged (a user error: named, with the way out)."""


class CheckpointSaveError(Exception):
    """A checkpoint could not be written: its disk is full (a user error: named, with the way out)."""


def has_model_weights(ckpt: Path) -> bool:
    """Whether `ckpt` holds a full model's weights: model.safetensors, or the files it is split into."""
    return (ckpt / "model.safetensors").is_file() or any(ckpt.glob("model-*-of-*.safetensors"))


def check_complete(ckpt: Path) -> None:
    """Raises CheckpointError when `ckpt` lacks a file a resume reads, or its state does not parse.
    save() renames a finished folder into place, so this is a folder changed by hand (or a disk fault)."""
    from trainer.lora import ADAPTER_CONFIG, ADAPTER_FILE

    missing = [f for f in ("optimizer.pt", "scheduler.pt") if not (ckpt / f).is_file()]
    if (ckpt / ADAPTER_CONFIG).is_file():  # a LoRA checkpoint: the adapter instead of the model
        missing += [] if (ckpt / ADAPTER_FILE).is_file() else [ADAPTER_FILE]
    else:
        missing += [] if (ckpt / "config.json").is_file() else ["config.json"]
        missing += [] if has_model_weights(ckpt) else ["model.safetensors"]
    why = f"misses {', '.join(missing)}" if missing else ""
    if not why:
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
            int(state["step"]), int(state["samples_seen"])
        except (OSError, ValueError, TypeError, KeyError) as e:
            why = f"has an unreadable {STATE_FILE} ({type(e).__name__}: {str(e)[:80]})"
    if why:
        earlier = [p.name for p in list_checkpoints(ckpt.parent) if p != ckpt]
        raise CheckpointError(
            f"the checkpoint to resume from, {ckpt}, {why}: it was changed after it was saved. Fix: delete "
            + (f"that folder to resume from {earlier[-1]}" if earlier else "that folder and train from the start")
            + ", or start a new run (a new output_dir)"
        )
