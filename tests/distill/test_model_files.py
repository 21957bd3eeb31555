"""A student folder must hold a config.json naming its model_type, and weights, before a run starts."""

from __future__ import annotations

import json

from distill.model_files import model_folder_problem


def test_a_folder_is_a_model_only_with_a_config_naming_its_kind_and_weights(tmp_path, tiny_student_dir):
    assert model_folder_problem("s", tiny_student_dir) == ""  # save_pretrained's folder
    folder = tmp_path / "s"
    folder.mkdir()
    assert "holds no config.json" in model_folder_problem("s", folder)
    (folder / "config.json").write_text("{ not json")
    assert "is not readable JSON" in model_folder_problem("s", folder)
    (folder / "config.json").write_text("{}")
    assert "names no model_type" in model_folder_problem("s", folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "s holds no weights (no *.safetensors or pytorch_model*.bin)" in model_folder_problem("s", folder)
    for name in ("model-00001-of-00002.safetensors", "pytorch_model.bin"):
        (folder / name).write_bytes(b"")
        assert model_folder_problem("s", folder) == ""
        (folder / name).unlink()
