"""LoRA students (`[trainer.lora]`, peft): adapters on the frozen student, adapter-only checkpoints, merge.

    apply_lora(lm, cfg)              inject adapters into the HF model; (the same model, the peft wrapper)
    is_lora(model)                   does this LossModel train adapters?
    save_adapter(model, sd, folder)  adapter_model.safetensors + adapter_config.json (peft's own format)
    load_adapter(model, ckpt)        the adapter weights of a checkpoint, into a freshly built LoRA model
    check_resume(ckpt, enabled)      a LoRA run resumes only from a LoRA checkpoint, and the reverse
    export_merged(ckpt, out)         base + adapter merged into a plain HF folder (distill export --merged)

The LossModel keeps the HF model (with peft's LoRA layers injected in place) as `.lm`, so the body,
the lm_head weight the chunked loss reads, the sampler and FSDP2 sharding see the same modules as
in full fine-tuning; the peft wrapper is kept beside it, unregistered (its parameters are the same
objects), for peft's adapter naming and config. Only the adapters require grad, so only they reach
the optimizer (trainer.train.build_optimizer) and the checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: how the peft wrapper names a parameter the LossModel calls "lm.<name>"
_PEFT_PREFIX = "base_model.model."


class LoraError(ValueError):
    """A LoRA setup that cannot work (no peft, a checkpoint of the other kind); the message has the fix."""


def _peft():
    try:
        import peft
    except ImportError:
        raise LoraError(
            "trainer.lora.enabled = true needs the peft package. Fix: pip install 'distill[lora]' (or pip install peft)"
        ) from None
    return peft


def apply_lora(lm: torch.nn.Module, cfg, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """Freeze `lm` and inject LoRA adapters (`cfg`: the `[trainer.lora]` model) on its target modules.

    The adapters' random init (lora_A) is drawn from `seed` alone, the same on every rank: FSDP2 keeps
    each rank's own shard of a parameter, so a rank-dependent init would make a mix of inits (and differ
    from one process). The caller's RNG stream is left as it was."""
    peft = _peft()
    found = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    missing = [m for m in cfg.target_modules if m not in found]
    if missing:
        raise LoraError(
            f"trainer.lora.target_modules names {missing}, which the student does not have. Fix: choose among "
            f"its Linear modules, e.g. {sorted(n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear))[:3]}"
            " (the last name component)"
        )
    lcfg = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = peft.get_peft_model(lm, lcfg)
    return wrapped.get_base_model(), wrapped


def is_lora(model) -> bool:
    return getattr(model, "peft", None) is not None


def save_adapter(model, model_sd: dict[str, torch.Tensor], folder: Path) -> None:
    """Write the adapter of `model` (its trainable entries of the gathered state dict `model_sd`)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    sd = {_PEFT_PREFIX + k.removeprefix("lm."): v for k, v in model_sd.items() if "lora_" in k}
    adapter = get_peft_model_state_dict(model.peft, state_dict=sd)
    save_file({k: v.contiguous() for k, v in adapter.items()}, folder / ADAPTER_FILE, metadata={"format": "pt"})
    model.peft.peft_config["default"].save_pretrained(str(folder))


def load_adapter(model, ckpt: Path) -> None:
    """Load the checkpoint's adapter weights into `model` (a LoRA LossModel, before sharding)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    fix = "Fix: resume with the [trainer.lora] the checkpoint was saved with (its adapter_config.json)"
    try:
        result = set_peft_model_state_dict(model.peft, load_file(ckpt / ADAPTER_FILE))
    except RuntimeError as e:  # torch's "size mismatch for ...lora_A...": another r
        first = (str(e).strip().splitlines() or ["size mismatch"])[-1].strip()
        raise LoraError(f"{ckpt / ADAPTER_FILE} does not fit trainer.lora ({first}). {fix}") from None
    odd = [k for k in result.missing_keys if "lora_" in k] + list(result.unexpected_keys)
    if odd:
        raise LoraError(
            f"{ckpt / ADAPTER_FILE} and trainer.lora.target_modules name different adapters "
            f"({len(odd)} differ, first: {odd[0]}). {fix}"
        )


def check_resume(ckpt: Path, enabled: bool) -> None:
    has_adapter = (ckpt / ADAPTER_FILE).is_file()
    if enabled and not has_adapter:
        raise LoraError(
            f"{ckpt} is a full fine-tuning checkpoint, but trainer.lora.enabled = true. Fix: resume with "
            "trainer.lora.enabled = false, or start a new run (a new output_dir)"
        )
    if not enabled and has_adapter:
        raise LoraError(
            f"{ckpt} holds a LoRA adapter, but trainer.lora.enabled = false. Fix: resume with the run's "
            "[trainer.lora] (enabled = true), or export it first: distill export "
            f"{ckpt} --merged DIR"
        )


def _adapter_config(ckpt: Path) -> dict:
    """The checkpoint's adapter_config.json; a LoraError naming it when it is not a JSON object."""
    path = ckpt / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraError(f"{ckpt} is incomplete: {ADAPTER_CONFIG} is missing. {_INCOMPLETE_FIX}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LoraError(f"{path} is not valid JSON ({e}). {_INCOMPLETE_FIX}") from None
    if not isinstance(cfg, dict):
        raise LoraError(f"{path} holds a JSON {type(cfg).__name__}, not an object. {_INCOMPLETE_FIX}")
    return cfg


_INCOMPLETE_FIX = "Fix: export an earlier checkpoint of the run (checkpoints/step-NNNNNN), or retrain"


def _check_export_paths(ckpt: Path, out: Path) -> Path:
    """Everything export_merged can tell before the (long) merge: the adapter is there, `out` can be made.
    Returns the empty folder the merge is written into (renamed to `out` once complete): made here, so an
    output path that cannot be written (permissions, a read-only disk) fails now, not after the merge."""
    from trainer.checkpoint import has_model_weights

    if not (ckpt / ADAPTER_FILE).is_file():
        if has_model_weights(ckpt):
            raise LoraError(
                f"{ckpt} holds no LoRA adapter ({ADAPTER_FILE}): it is a full fine-tuning checkpoint, which "
                "AutoModelForCausalLM.from_pretrained loads as it is; there is nothing to merge"
            )
        raise LoraError(
            f"{ckpt} is incomplete: {ckpt / ADAPTER_FILE} is missing (and no model weights either, so it is not a "
            f"full fine-tuning checkpoint). {_INCOMPLETE_FIX}"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file. Fix: choose a new folder for --merged")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty. Fix: choose a new folder for --merged")
    on_the_way = next((p for p in out.parents if p.exists()), None)
    if on_the_way is not None and not on_the_way.is_dir():
        raise NotADirectoryError(f"{on_the_way} is a file, so --merged {out} cannot be made. Fix: choose another path")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def base_model_dir(ckpt: Path) -> Path:
    """The student folder the adapter of `ckpt` was trained on: the one adapter_config.json names, or
    the checkpoint's distill_config.toml student.path resolved again."""
    from distill.core.config.load import read_toml
    from distill.core.student import resolve_student

    named = _adapter_config(ckpt).get("base_model_name_or_path") or ""
    if named and (Path(named) / "config.json").is_file():
        return Path(named)
    cfg_file = ckpt / "distill_config.toml"
    spec = read_toml(cfg_file).get("student", {}).get("path") if cfg_file.is_file() else None
    if not spec:
        raise LoraError(
            f"{ckpt}: the base model of this adapter ({named or 'unnamed'}) is not on this machine and the "
            "checkpoint has no distill_config.toml naming it. Fix: put the student folder back at that path"
        )
    return resolve_student(spec)


def export_merged(ckpt: Path, out: Path) -> Path:
    """Merge the adapter of `ckpt` into its base model; write the HF folder `out` (model, tokenizer)."""
    peft = _peft()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = _check_export_paths(ckpt, out)
    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir(ckpt)), dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, str(ckpt)).merge_and_unload()
    merged.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(ckpt)).save_pretrained(str(tmp))
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return out
