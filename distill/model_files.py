"""Whether a student folder holds a model transformers can load: a config.json naming its kind, and
weights. Checked before a run starts (distill/preflight.py): the model is loaded by the trainer, after
the producer has begun asking the teacher, so a folder without weights would fail only once answers
(perhaps paid for) were on their way."""

from __future__ import annotations

import json
from pathlib import Path

#: Files that hold an HF model's weights (one of them, or the index of its shards).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def model_folder_problem(spec: str, folder: Path) -> str:
    """What keeps `folder` from loading as an HF model, with the fix; "" when nothing does."""
    config = folder / "config.json"
    if not config.is_file():
        return (
            f"{spec} holds no config.json, so it is not an HF model folder. Fix: point student.path at the "
            "folder with config.json and weights"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{config} is not readable JSON ({e}). Fix: restore the model's config.json"
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        return (
            f"{config} names no model_type, so transformers cannot tell which model it is. Fix: restore the "
            "model's config.json (save_pretrained writes it)"
        )
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        return (
            f"{spec} holds no weights (no *.safetensors or pytorch_model*.bin). Fix: point student.path at the "
            "folder the model was saved to (save_pretrained), or copy its weight files there"
        )
    return ""
