"""The lightweight weight save a student inference server reloads from after every optimizer step
(`on_policy.sampler = "server"`; docs/on_policy.md, "Student inference server").

    save_refresh(model, refresh_dir, step, ctx) -> refresh_dir/step-000005/

Only what the server reads: the HF weights (model.safetensors + config.json, the tied duplicates left out as
in a checkpoint) or, for a LoRA student, the adapter in peft's format (adapter_model.safetensors +
adapter_config.json). No optimizer, scheduler or RNG state. Written to a hidden folder and renamed, so the
server never reads a half-written one; the folders of older steps are removed, the last `keep` kept (a
server may still be reading the previous one). Collective under FSDP (every rank calls it; rank 0 writes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainer.checkpoint import _options, _save_weights, _tied_duplicates
from trainer.dist import DistContext, barrier


def refresh_folder(refresh_dir: Path, step: int) -> Path:
    return Path(refresh_dir) / f"step-{step:06d}"


def save_refresh(model, refresh_dir: Path, step: int, ctx: DistContext, keep: int = 2) -> Path:
    """Write the student's current weights for the server (module docstring); returns the folder."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    refresh_dir = Path(refresh_dir)
    final = refresh_folder(refresh_dir, step)
    tmp = refresh_dir / f".{final.name}.tmp"
    model_sd = get_model_state_dict(model, options=_options(model))
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save_weights(model, model_sd, tmp)
        _save_tied(model, model_sd, tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        old = sorted(p for p in refresh_dir.glob("step-*") if p.is_dir() and p.name < final.name)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    del model_sd
    barrier(ctx)
    return final


def _save_tied(model, model_sd: dict, folder: Path) -> None:
    """The tied duplicates (lm_head.weight of a tied-embedding student) in a file of their own: a server
    serving the student untied (`untied_copy`) loads its lm_head from it; one serving it tied skips it."""
    from safetensors.torch import save_file

    from trainer.lora import is_lora

    if is_lora(model):
        return
    tied = _tied_duplicates(model.lm)
    sd = {k.removeprefix("lm."): v for k, v in model_sd.items() if k.removeprefix("lm.") in tied}
    if sd:
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, folder / TIED_FILE)


TIED_FILE = "tied-duplicates.safetensors"


def untied_copy(src: Path, dst: Path) -> Path:
    """A copy of the HF folder `src` with its output projection untied (`tie_word_embeddings = false` and
    lm_head.weight written out): the folder to start a vLLM 0.32 CPU student server on, whose in-place
    reload_weights does not refresh a tied lm_head (docs/on_policy.md, "Student inference server")."""
    import json

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    sd = load_file(dst / "model.safetensors")
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst
