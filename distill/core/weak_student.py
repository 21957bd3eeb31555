"""A deliberately weaker student with the teacher's tokenizer: `student.path = "builtin:smollm2-135m-instruct-weak"`.

SmolLM2-135M-Instruct (the builtin student, 30 decoder layers) with the output projections of its top
WEAK_LAYERS layers (self_attn.o_proj and mlp.down_proj) set to zero: those layers then add nothing to
the residual stream, so the model computes what the lower 24 layers compute and the unchanged final
norm and head read it. Same vocabulary, same chat template, same tokenizer, a clearly worse model
(its reverse KL to SmolLM2 on its own samples is far above zero) that gradient descent can repair: the
zeroed matrices still get gradients (their inputs are not zero). It is what examples/on_policy.toml
distils the full SmolLM2 into.

Built once from the builtin conversion and cached beside it (cache_dir()/smollm2-135m-instruct-weak);
later uses load that folder. `python -m distill.core.weak_student` builds it and prints the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

#: The builtin name (after "builtin:") of the weak student, and how many top layers are cut.
WEAK_NAME = "smollm2-135m-instruct-weak"
WEAK_LAYERS = 6


def weak_student_dir() -> Path:
    """The cached weak student's HF folder, built on first use."""
    from distill.core.student import BUILTIN_NAME, _ensure_builtin, _mkdir, cache_dir

    target = cache_dir() / WEAK_NAME
    if (target / "model.safetensors").is_file():
        return target
    base = _ensure_builtin(with_model=True)
    assert base.name == BUILTIN_NAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{WEAK_NAME}.", dir=_mkdir(cache_dir())))
    try:
        build_weak_student(base, tmp)
        if (target / "model.safetensors").is_file():  # another process finished first: keep its folder
            return target
        if target.exists():
            stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_weak_student(base: Path, out: Path, layers: int = WEAK_LAYERS) -> Path:
    """Save to `out` the model of `base` with the top `layers` layers' o_proj and down_proj zeroed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    blocks = model.model.layers
    if not 0 < layers < len(blocks):
        raise ValueError(f"cannot cut {layers} of {len(blocks)} layers")
    with torch.no_grad():
        for block in blocks[len(blocks) - layers :]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    model.config._name_or_path = f"SmolLM2-135M-Instruct-weak{layers}"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(out)
    return out


if __name__ == "__main__":
    print(weak_student_dir())
