"""One process per role on a run dir (distill/run_lock.py): a second `distill rollout` on an output_dir
another live process samples into is refused before it asks the teacher or writes anything; a trainer
beside it is not; a killed holder leaves no stale lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.fault_server import FaultServer
from support.rollout_helpers import write_rollout_toml

from distill.cli import main
from distill.run_lock import RunDirBusy, lock_run_dir, release_all

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from pathlib import Path
from distill.run_lock import lock_run_dir
lock_run_dir(Path(sys.argv[1]), ("sample",), "rollout")
print("READY", flush=True)
time.sleep(300)
"""


def test_a_second_sampler_on_a_busy_run_dir_is_refused_and_a_killed_one_frees_it(tmp_path, smol_tokenizer_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "READY"
        with FaultServer() as s:
            cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=2)
            capsys.readouterr()
            assert main(["rollout", str(cfg)]) == 1
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and "Traceback" not in err
            assert f"pid {holder.pid}" in err and "`distill rollout`" in err and "--output_dir" in err
            assert s.log.entries == [] and not (run / "config.toml").exists() and not (run / "samples").exists()
            # another role (a trainer reading the samples as they come) may run beside it
            lock_run_dir(run, ("train",), "train")
            release_all()
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            assert main(["rollout", str(cfg)]) == 0  # the kernel dropped the dead holder's lock
            assert len(s.log.entries) >= 1 and (run / "samples" / "DONE").exists()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_command_in_another_thread_of_this_process_holds_the_run_dir_too(tmp_path):
    taken, done = threading.Event(), threading.Event()

    def other_command() -> None:
        lock_run_dir(tmp_path, ("sample",), "rollout")
        taken.set()
        done.wait(30)
        release_all()  # only this thread's locks

    t = threading.Thread(target=other_command)
    t.start()
    assert taken.wait(30)
    with pytest.raises(RunDirBusy, match="another distill command of this process"):
        lock_run_dir(tmp_path, ("sample",), "rollout")
    lock_run_dir(tmp_path, ("train",), "train")  # another role, and this thread's own
    release_all()  # leaves the other thread's lock alone
    with pytest.raises(RunDirBusy):
        lock_run_dir(tmp_path, ("sample",), "rollout")
    done.set()
    t.join(30)
    lock_run_dir(tmp_path, ("sample",), "rollout")
    release_all()


def test_a_second_trainer_hears_that_the_run_dir_is_busy_before_anything_else(tmp_path, tiny_student_dir, capsys):
    """Without the check before preflight, the second `distill train` was told the dir "holds checkpoints of
    an earlier run" (the first one's), whose fix (--resume) then ran into the lock."""
    from trainer.checkpoint import STATE_FILE

    run = tmp_path / "run"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "checkpoints" / "step-000002" / STATE_FILE).write_text("{}")
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'output_dir = "{run}"\n[student]\npath = "{tiny_student_dir}"\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.replace('("sample",), "rollout"', '("train",), "train"'), str(run)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "READY"
        capsys.readouterr()
        for extra in ([], ["--resume"]):
            assert main(["train", str(cfg), *extra]) == 1
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"pid {holder.pid}" in err and "`distill train`" in err, err
            assert "holds checkpoints" not in err
    finally:
        holder.kill()
        holder.wait(10)


def test_the_waiting_note_says_when_no_producer_is_running(tmp_path):
    """`distill train` on an unfinished folder whose rollout died waited the whole sample_timeout in silence."""
    from distill.epochs import waiting_note

    samples = tmp_path / "samples"
    samples.mkdir()
    note = waiting_note(samples, 1800)
    assert "no producer is running on it now" in note and ".lock-sample" in note and "rerun it" in note
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "READY"
        note = waiting_note(samples, 1800)
        assert "no DONE marker yet" in note and "no producer is running" not in note
    finally:
        holder.kill()
        holder.wait(10)
    assert "no producer is running on it now" in waiting_note(samples, 1800)  # the kernel dropped its lock
