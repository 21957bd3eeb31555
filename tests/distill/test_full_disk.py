"""A disk that fills up mid-run is one line naming the file or folder and the fix, and the rerun after
space is freed resumes exactly. On a real small disk (a tmpfs, when this process may mount one) and,
everywhere, with the disk's refusal injected where the write happens."""

from __future__ import annotations

import errno
import os
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
from support.fault_server import FaultServer, Faults
from support.rollout_helpers import write_rollout_toml
from support.trainer_helpers import make_samples, write_samples

from distill.cli import main
from distill.core.contract import is_done, iter_samples


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs at tmp_path/disk; remount(option) resizes it ("size=4m") or makes it read-only ("ro"). Skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (the injected-fault tests below still run)")

    def remount(option: str) -> None:  # "size=4m", "ro"
        subprocess.run(["mount", "-o", f"remount,{option}", str(disk)], check=True)

    yield disk, remount
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("distill:")]
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


def _resumed_exactly(run: Path, prompts: int) -> None:
    ids = [x.sample_id for x in iter_samples(run / "samples")]
    assert sorted(ids) == sorted(f"p{i}/{k}" for i in range(prompts) for k in range(2)) and is_done(run / "samples")


def test_rollout_on_a_disk_that_fills_up(tmp_path, small_disk, smol_tokenizer_dir, capsys):
    disk, remount = small_disk
    with FaultServer(Faults(latency_s=0.01)) as s:
        cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=60, out=disk / "run", n=2)
        capsys.readouterr()
        assert main(["rollout", cfg]) == 1
        line = _one_line(capsys)
        assert "No space left on device" in line and str(disk / "run") in line and "rerun the same command" in line
        remount("size=4m")
        assert main(["rollout", cfg]) == 0
    _resumed_exactly(disk / "run", 60)


def test_rollout_whose_recording_write_is_refused(tmp_path, smol_tokenizer_dir, capsys, monkeypatch):
    import orchestrator.recording as recording

    real_write, calls = os.write, []

    def write(fd, data):
        calls.append(1)
        if len(calls) > 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with FaultServer(Faults(latency_s=0.01)) as s:
        cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=30, n=2)
        monkeypatch.setattr(recording.os, "write", write)
        capsys.readouterr()
        assert main(["rollout", cfg]) == 1
        line = _one_line(capsys)
        assert f"cannot write {tmp_path / 'run' / 'recording.jsonl'}: No space left on device" in line
        monkeypatch.setattr(recording.os, "write", real_write)
        assert main(["rollout", cfg]) == 0
    _resumed_exactly(tmp_path / "run", 30)


def _train_cfg(tmp_path: Path, out: Path, student) -> str:
    cfg = tmp_path / "train.toml"
    cfg.write_text(f"""
output_dir = "{out}"
[student]
path = "{student}"
[trainer]
seq_len = 256
max_steps = 6
samples_per_step = 4
[trainer.checkpoint]
every = 3
keep_last = 2
""")
    return str(cfg)


def test_a_checkpoint_save_on_a_full_disk(tmp_path, small_disk, tiny_student_dir, smol_tokenizer, capsys):
    disk, remount = small_disk
    samples = tmp_path / "samples"
    write_samples(samples, make_samples(smol_tokenizer, 24))
    ckpt_bytes = sum(f.stat().st_size for f in Path(tiny_student_dir).rglob("*") if f.is_file())
    remount(f"size={int(ckpt_bytes * 4.5) // 1024}k")  # one checkpoint (weights + 2x AdamW state) fits, not two
    cfg = _train_cfg(tmp_path, disk / "run", tiny_student_dir)
    capsys.readouterr()
    assert main(["train", cfg, "--samples", str(samples)]) == 1
    line = _one_line(capsys)
    assert "cannot save the checkpoint step-000006" in line and "the disk is full" in line and "--resume" in line
    ckpts = disk / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000003"]  # the partial .tmp folder was removed
    remount("size=400m")
    assert main(["train", cfg, "--samples", str(samples), "--resume"]) == 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000003", "step-000006"]


def test_a_checkpoint_save_torch_cannot_finish(tmp_path, tiny_student_dir, smol_tokenizer, capsys, monkeypatch):
    """torch.save reports a full disk as a bare RuntimeError: with the disk (nearly) full, it is named."""
    import trainer.checkpoint as checkpoint

    real_save, real_usage = checkpoint.torch.save, checkpoint.shutil.disk_usage
    samples = tmp_path / "samples"
    write_samples(samples, make_samples(smol_tokenizer, 24))

    def save(obj, path, *a, **kw):
        if "step-000006" in str(path):
            Path(path).write_bytes(b"x" * 1000)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5888 vs 5780")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(9, 9, 0))
    cfg = _train_cfg(tmp_path, tmp_path / "run", tiny_student_dir)
    capsys.readouterr()
    assert main(["train", cfg, "--samples", str(samples)]) == 1
    assert "cannot save the checkpoint step-000006" in _one_line(capsys)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000003"]
    # with free space the same RuntimeError is not taken for a full disk: it stays what it is
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", real_usage)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        main(["train", cfg, "--samples", str(samples), "--resume"])


def test_training_from_a_finished_samples_folder_on_a_read_only_disk(
    tmp_path, small_disk, tiny_student_dir, smol_tokenizer, capsys
):
    disk, remount = small_disk
    remount("size=20m")
    write_samples(disk / "samples", make_samples(smol_tokenizer, 8))
    remount("ro")
    cfg = _train_cfg(tmp_path, tmp_path / "run", tiny_student_dir)
    capsys.readouterr()
    assert main(["train", cfg, "--samples", str(disk / "samples"), "--trainer.max_steps", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: cannot write CONSUMED") == 1 and "training goes on without it" in err
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()


def test_training_from_an_unfinished_samples_folder_on_a_read_only_disk(
    tmp_path, small_disk, tiny_student_dir, smol_tokenizer, capsys
):
    disk, remount = small_disk
    remount("size=20m")
    write_samples(disk / "samples", make_samples(smol_tokenizer, 8), done=False)
    remount("ro")
    cfg = _train_cfg(tmp_path, tmp_path / "run", tiny_student_dir)
    capsys.readouterr()
    assert main(["train", cfg, "--samples", str(disk / "samples"), "--trainer.max_steps", "2"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err  # no "waiting for the producer" note before it
    line = lines[0]  # before the student is loaded, and naming the folder, not a temporary file
    assert f"cannot write CONSUMED in {disk / 'samples'} (not writable)" in line and "no DONE marker" in line
    assert "Fix: make the folder writable" in line and not (tmp_path / "run").exists()  # nothing written


def test_an_unfinished_samples_folder_that_turns_read_only_mid_run_is_named(tmp_path, smol_tokenizer, monkeypatch):
    """The write itself refused (the check before training passed): the same message, from note_consumed."""
    import distill.core.contract as contract
    from trainer.data import SamplesNotWritable, note_consumed

    samples = tmp_path / "samples"
    write_samples(samples, make_samples(smol_tokenizer, 2), done=False)

    def refuse(directory, n):
        raise OSError(errno.EROFS, "Read-only file system", str(directory / "CONSUMED"))

    monkeypatch.setattr(contract, "write_consumed", refuse)
    with pytest.raises(
        SamplesNotWritable, match="Read-only file system.*no DONE marker.*Fix: make the folder writable"
    ):
        note_consumed(samples, 2)
