"""Run configuration schema, part 5: `[trainer.lora]`, LoRA adapters on the student (peft).

With `enabled = true` the student's weights are frozen and low-rank adapters on `target_modules`
train instead; checkpoints hold only the adapter (plus optimizer / scheduler / RNG state), and
`distill export CKPT --merged OUT` writes the merged HF folder (docs/training.md, "LoRA").
"""

from __future__ import annotations

from pydantic import Field, field_validator

from .schema import Strict

#: The attention and MLP projections of Llama / Qwen / Mistral / SmolLM-style decoders.
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Lora(Strict):
    """LoRA adapters (needs `pip install 'distill[lora]'`, i.e. peft). Off by default: full fine-tuning."""

    # Train LoRA adapters instead of every weight of the student.
    enabled: bool = False
    # Rank of each adapter (the A matrix is r x in, B is out x r).
    r: int = Field(16, ge=1)
    # Scaling numerator: the adapter's update is multiplied by alpha / r.
    alpha: float = Field(32.0, gt=0)
    # Dropout on the adapter's input while training (0 = none).
    dropout: float = Field(0.0, ge=0, lt=1)
    # Names (last component) of the Linear modules that get an adapter. The default is every
    # attention and MLP projection of Llama/Qwen/SmolLM-style students; lm_head and the
    # embeddings stay frozen (the chunked loss reads lm_head's weight as it is).
    target_modules: list[str] = list(DEFAULT_TARGETS)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one module, e.g. ['q_proj', 'v_proj']")
        bad = [m for m in v if m in ("lm_head", "embed_tokens")]
        if bad:
            raise ValueError(
                f"{bad} cannot take a LoRA adapter here: the chunked loss reads the lm_head/embedding "
                "weight directly. Fix: target the attention/MLP projections (the default)"
            )
        return v
