"""`distill export` on a damaged LoRA checkpoint, or an --merged path that cannot be made: one `distill:`
line naming the file, before any merging."""

from __future__ import annotations

import json

import pytest

from distill.cli import main


def _ckpt(tmp_path, adapter: bool = True, config: str = '{"base_model_name_or_path": "/nowhere"}'):
    ck = tmp_path / "run" / "checkpoints" / "step-000001"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (ck / "adapter_config.json").write_text(config)
    if adapter:
        (ck / "adapter_model.safetensors").write_bytes(b"x")
    return ck


@pytest.fixture
def no_merge(monkeypatch):
    """A merge that starts fails the test: every check must come before it."""
    import trainer.lora

    def started(ckpt):
        raise AssertionError("the merge started")

    monkeypatch.setattr(trainer.lora, "base_model_dir", started)


def test_missing_adapter_file_is_an_incomplete_checkpoint(tmp_path, capsys, no_merge):
    ck = _ckpt(tmp_path, adapter=False)
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"distill: {ck} is incomplete: {ck / 'adapter_model.safetensors'} is missing"), err
    assert "full fine-tuning checkpoint, which" not in err and "\n" not in err


def test_corrupt_adapter_config_names_the_file(tmp_path, capsys):
    ck = _ckpt(tmp_path, config="{bad json")
    assert main(["export", str(ck), "--merged", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"distill: {ck / 'adapter_config.json'} is not valid JSON") and "\n" not in err, err
    ck2 = _ckpt(tmp_path / "b", config="[1, 2]")
    assert main(["export", str(ck2), "--merged", str(tmp_path / "out")]) == 1
    assert "adapter_config.json holds a JSON list, not an object" in capsys.readouterr().err


def test_merged_path_under_a_file_fails_before_merging(tmp_path, capsys, no_merge):
    ck = _ckpt(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["export", str(ck), "--merged", str(afile / "sub")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"distill: {afile} is a file, so --merged {afile / 'sub'} cannot be made. Fix: choose another path"
    )
    assert main(["export", str(ck), "--merged", str(afile)]) == 1
    assert f"{afile} is a file" in capsys.readouterr().err


def test_merged_path_that_cannot_be_written_fails_before_merging(tmp_path, capsys, no_merge):
    """/proc refuses a new folder even to root (the tests may run as root, where a chmod'ed folder is writable)."""
    ck = _ckpt(tmp_path)
    out = "/proc/distill-export-test/merged"
    assert main(["export", str(ck), "--merged", out]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: ") and "/proc/distill-export-test" in err and "\n" not in err, err
