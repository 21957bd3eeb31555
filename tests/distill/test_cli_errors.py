"""A user's mistake under torchrun is printed once per node (distill/cli_errors.py, print_error): every worker
fails alike, the first prints, torchrun ends the others before they print it again; an error only another
worker meets is still printed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from distill import cli_errors
from distill.cli import main

BAD = '[trainer]\nlr = "fast"\n'  # an unknown key: a config error, found alike by every worker


def test_torchrun_prints_a_config_error_once_with_rank_0_as_the_root_cause(tmp_path):
    (tmp_path / "bad.toml").write_text(BAD, encoding="utf-8")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC"))
    }
    with socket.socket() as s:  # the agent's store: a free port, not torchrun's fixed default
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", port, "-m", "distill", "train", "bad.toml"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert out.count("distill: invalid configuration (bad.toml)") == 1, out
    assert out.count("unknown key trainer.lr") == 1, out
    assert "exitcode  : 2" in out and "local_rank: 0" in out, out  # rank 0 exited with the error's code


def test_another_workers_own_error_is_still_printed_after_the_wait(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.toml").write_text(BAD, encoding="utf-8")
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r")
    for local_rank, waited in (("1", [cli_errors.OTHER_RANK_DELAY_S]), ("0", [])):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        waits.clear()
        assert main(["train", str(tmp_path / "bad.toml")]) == 2
        assert waits == waited
        assert capsys.readouterr().err.count("unknown key trainer.lr") == 1
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # not under torchrun: nothing ends the others, no wait
    monkeypatch.setenv("LOCAL_RANK", "1")
    waits.clear()
    assert main(["train", str(tmp_path / "bad.toml")]) == 2 and waits == []
