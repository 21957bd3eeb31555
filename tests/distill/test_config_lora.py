"""`[trainer.lora]`: examples/lora.toml parses to a LoRA run; bad values are config errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.core.config import ConfigError, load_config
from distill.core.config.schema_lora import DEFAULT_TARGETS

ROOT = Path(__file__).resolve().parents[2]


def test_the_lora_example_parses_to_a_lora_run():
    cfg = load_config(ROOT / "examples" / "lora.toml")
    lora = cfg.trainer.lora
    assert lora.enabled and lora.r == 16 and lora.alpha == 32 and lora.dropout == 0.05
    assert lora.target_modules == DEFAULT_TARGETS
    assert cfg.trainer.optim.lr == 2e-4


def test_lora_is_off_by_default_and_overridable():
    assert not load_config(None).trainer.lora.enabled
    cfg = load_config(None, ["--trainer.lora.enabled", "true", "--trainer.lora.target_modules", '["q_proj","v_proj"]'])
    assert cfg.trainer.lora.enabled and cfg.trainer.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("lora", "key", "words"),
    [
        ({"r": 0}, "trainer.lora.r", "greater than or equal to 1"),
        ({"dropout": 1.0}, "trainer.lora.dropout", "less than 1"),
        ({"target_modules": []}, "trainer.lora.target_modules", "at least one module"),
        ({"target_modules": ["q_proj", "lm_head"]}, "trainer.lora.target_modules", "chunked loss"),
        ({"rank": 8}, "trainer.lora.rank", ""),
    ],
)
def test_bad_lora_values_name_the_key(lora, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"trainer": {"lora": lora}})
    assert key in str(e.value) and words in str(e.value)


def test_preflight_names_a_missing_peft_before_anything_starts(tmp_path, monkeypatch, tiny_student_dir):
    import sys

    from distill.preflight import PreflightError, preflight

    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "run"),
            "student": {"path": str(tiny_student_dir)},
            "trainer": {"lora": {"enabled": True}},
        },
    )
    (tmp_path / "run" / "samples").mkdir(parents=True)
    preflight(cfg, "train", samples=str(tmp_path / "run" / "samples"))  # peft installed: no problem
    monkeypatch.setitem(sys.modules, "peft", None)  # what an environment without peft looks like to imports
    with pytest.raises(PreflightError) as e:
        preflight(cfg, "train", samples=str(tmp_path / "run" / "samples"))
    assert "trainer.lora.enabled" in str(e.value) and "pip install 'distill[lora]'" in str(e.value)
