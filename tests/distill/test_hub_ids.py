"""`student.path` / `student.tokenizer` as hub ids ("org/name"), resolved through the local Hugging Face
cache only: a cache laid out as huggingface_hub lays it out (blobs, snapshots/<commit>/ symlinks,
refs/main), built from the real SmolLM2-135M-Instruct HF folder, with HF_HUB_OFFLINE=1 and HF_HOME in tmp."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from distill.core.config import load_config
from distill.core.student import BUILTIN_NAME, BUILTIN_PREFIX, TokenizerError, load_tokenizer, resolve_student
from distill.preflight import check_student

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
COMMIT = "a" * 8 + hashlib.sha1(b"distill-test").hexdigest()[8:]  # 40 hex digits, like a git commit


def _blob_name(path: Path) -> str:
    """The hub's blob names: the sha256 of LFS files (weights), the git blob sha1 of the others."""
    if path.suffix == ".safetensors":
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def build_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """$HF_HOME/hub/models--org--name/{blobs,snapshots/<commit>,refs/main} from an HF folder; the snapshot path."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        blob = repo / "blobs" / _blob_name(f)
        try:
            os.link(f, blob)  # same bytes; a copy of the weights would cost a second or two
        except OSError:
            shutil.copy2(f, blob)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)  # no newline, as the hub library writes it
    return snap


@pytest.fixture(scope="module")
def smollm2_dir():
    return resolve_student(BUILTIN_PREFIX + BUILTIN_NAME)  # the real weights, converted once and cached


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_a_cached_hub_id_resolves_to_its_snapshot_offline(hf_home, smollm2_dir):
    from transformers import AutoConfig

    snap = build_hub_cache(hf_home, HUB_ID, smollm2_dir)
    assert resolve_student(HUB_ID) == snap
    assert AutoConfig.from_pretrained(resolve_student(HUB_ID)).model_type == "llama"
    tok = load_tokenizer(HUB_ID)  # student.tokenizer as a hub id
    assert tok.chat_template and tok("hello").input_ids == load_tokenizer(smollm2_dir)("hello").input_ids
    cfg = load_config(None, {"student": {"path": HUB_ID, "tokenizer": HUB_ID}})
    assert check_student(cfg, need_model=True) == []  # preflight accepts both keys


def test_a_hub_id_not_in_the_cache_is_one_clear_error_with_the_fetch_command(hf_home, smollm2_dir):
    build_hub_cache(hf_home, HUB_ID, smollm2_dir)  # a different repo is cached; this one is not
    missing = "SomeOrg/not-cached-model"
    with pytest.raises(FileNotFoundError) as e:
        resolve_student(missing)
    msg = str(e.value)
    assert "student.path" in msg and f"hf download {missing}" in msg and f"huggingface-cli download {missing}" in msg
    assert str(hf_home / "hub") in msg  # where it looked
    with pytest.raises(TokenizerError, match=r"student\.tokenizer = 'SomeOrg/not-cached-model'.*hf download"):
        load_tokenizer(missing)
    cfg = load_config(None, {"student": {"path": missing, "tokenizer": missing}})
    problems = check_student(cfg, need_model=True)
    assert [p.key for p in problems] == ["student.path", "student.tokenizer"]
    assert all(f"hf download {missing}" in str(p) for p in problems)


def test_a_local_folder_of_the_same_name_wins(hf_home, smollm2_dir, tmp_path, monkeypatch, tiny_student_dir):
    snap = build_hub_cache(hf_home, HUB_ID, smollm2_dir)
    work = tmp_path / "work"
    local = work / HUB_ID
    shutil.copytree(tiny_student_dir, local)
    monkeypatch.chdir(work)
    assert resolve_student(HUB_ID) == Path(HUB_ID) != snap
    monkeypatch.chdir(tmp_path)  # elsewhere the name is the hub id again
    assert resolve_student(HUB_ID) == snap


def test_a_snapshot_missing_from_the_cache_is_not_cached(hf_home, smollm2_dir):
    """refs/main names a commit whose snapshot folder is gone (a half-deleted cache): not cached."""
    snap = build_hub_cache(hf_home, HUB_ID, smollm2_dir)
    shutil.rmtree(snap)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        resolve_student(HUB_ID)


def test_the_trainer_trains_a_hub_id_student_from_the_cache(hf_home, tmp_path, tiny_student_dir, smol_tokenizer):
    from support.trainer_helpers import make_samples, write_samples
    from trainer.train import train

    build_hub_cache(hf_home, "tiny-org/tiny-student", tiny_student_dir)
    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 4))
    trainer = {"max_steps": 1, "samples_per_step": 4, "seq_len": 128, "device": "cpu", "repeat": False}
    out = train(
        load_config(None, {"student": {"path": "tiny-org/tiny-student"}, "trainer": trainer}), run, progress=False
    )
    assert out["steps"] == 1 and (Path(out["checkpoint"]) / "model.safetensors").is_file()
