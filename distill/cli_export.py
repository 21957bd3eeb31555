"""`distill export RUN_DIR|CKPT --merged OUT`: a LoRA checkpoint merged into a plain HF model folder.

RUN_DIR takes its latest checkpoint (RUN_DIR/checkpoints/step-NNNNNN). The adapter is merged into
the student it was trained on (the folder adapter_config.json names, else the checkpoint's
distill_config.toml student.path), and OUT holds config.json, model.safetensors and the tokenizer:
what AutoModelForCausalLM.from_pretrained / vLLM / llama.cpp's converter load, no peft needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def find_checkpoint(path: Path) -> Path:
    """`path` itself when it is a checkpoint, else the latest checkpoint of the run dir `path`."""
    from trainer import checkpoint as ckpt_io

    if (path / ckpt_io.STATE_FILE).is_file():
        return path
    latest = ckpt_io.latest(path / "checkpoints")
    if latest is None:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint (no {ckpt_io.STATE_FILE}) nor a run dir with checkpoints/step-*. "
            "Fix: pass OUTPUT_DIR of a run that trained, or one of its checkpoints/step-NNNNNN folders"
        )
    return latest


def cmd_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="distill export", description="Merge a LoRA checkpoint into its student and write an HF model folder."
    )
    p.add_argument("path", help="a run's output_dir (its latest checkpoint) or one checkpoint folder")
    p.add_argument("--merged", required=True, metavar="OUT", help="the new HF folder to write (must not exist)")
    a = p.parse_args(argv)
    from trainer.lora import export_merged

    ckpt = find_checkpoint(Path(a.path))
    out = export_merged(ckpt, Path(a.merged))
    print(f"merged {ckpt} into {out} (AutoModelForCausalLM.from_pretrained loads it)")
    return 0
