"""Experiment trackers (trainer/trackers.py), each read back offline from what it wrote: TensorBoard's event
files through tensorboard's own EventAccumulator, trackio's local SQLite store through its own storage API;
and a real training run (tiny student, real SmolLM2 tokenizer) with every tracker on, killed and resumed."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import pytest
import torch

# trackio reads $TRACKIO_DIR once, when first imported: these tests keep its store out of the user's
os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="distill-trackio-")

from distill.core.config import load_config  # noqa: E402
from distill.preflight import check_trackers  # noqa: E402
from support.trainer_helpers import make_samples, write_samples  # noqa: E402
from trainer import checkpoint  # noqa: E402
from trainer.dist import DistContext  # noqa: E402
from trainer.train import train  # noqa: E402
from trainer.trackers import JsonlTracker, TensorBoardTracker, TrackioTracker, numbers, open_trackers  # noqa: E402

CPU1 = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
RANK1 = DistContext(rank=1, world=2, local_rank=1, device=torch.device("cpu"))


def _tb_scalars(logdir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _trackio_points(project: str, run: str, key: str) -> list[tuple[int, float]]:
    from trackio.sqlite_storage import SQLiteStorage

    return [(r["step"], r[key]) for r in SQLiteStorage.get_logs(project, run) if key in r]


def test_numbers_keeps_numeric_fields_only():
    assert numbers({"step": 3, "loss": 1.5, "tokens": 7, "loss_type": "sft", "final": True}) == {
        "loss": 1.5,
        "tokens": 7.0,
    }


def test_tensorboard_reads_back_and_a_resume_purges_the_steps_trained_again(tmp_path):
    tb = TensorBoardTracker(tmp_path, resume_step=0)
    for step in (1, 2, 3):
        tb.log(step, {"step": step, "loss": 4.0 - step, "loss_type": "sft"})
    tb.close()
    assert _tb_scalars(tmp_path / "tensorboard", "loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]
    # killed after logging step 3, last saved at step 2: the resumed run trains step 3 again
    tb = TensorBoardTracker(tmp_path, resume_step=2)
    for step in (3, 4):
        tb.log(step, {"loss": 10.0 + step})
    tb.close()
    assert _tb_scalars(tmp_path / "tensorboard", "loss") == [(1, 3.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_trackio_reads_back_and_a_resume_does_not_log_a_step_twice(tmp_path):
    cfg = load_config(None, {"trackers": {"trackio": True, "trackio_project": "t-direct", "trackio_run": "r1"}})
    tr = TrackioTracker(cfg, tmp_path)
    for step in (1, 2, 3):
        tr.log(step, {"loss": 4.0 - step, "loss_type": "sft"})
    tr.close()
    assert _trackio_points("t-direct", "r1", "loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]
    tr = TrackioTracker(cfg, tmp_path, resume_step=2)  # the same run resumed from step 2: step 3 trained again
    assert tr.last_logged == 3
    for step in (3, 4):
        tr.log(step, {"loss": 10.0 + step})
    tr.close()
    assert _trackio_points("t-direct", "r1", "loss") == [(1, 3.0), (2, 2.0), (3, 1.0), (4, 14.0)]


def test_trackio_a_run_starting_over_under_a_taken_name_logs_every_step_under_a_new_name(tmp_path, capsys):
    cfg = load_config(None, {"trackers": {"trackio": True, "trackio_project": "t-fresh", "trackio_run": "r"}})
    for attempt in range(3):  # e.g. the output dir deleted and the run started again, twice
        tr = TrackioTracker(cfg, tmp_path, resume_step=0)
        for step in (1, 2):
            tr.log(step, {"loss": 10.0 * attempt + step})
        tr.close()
    assert _trackio_points("t-fresh", "r", "loss") == [(1, 1.0), (2, 2.0)]
    assert _trackio_points("t-fresh", "r-2", "loss") == [(1, 11.0), (2, 12.0)]
    assert _trackio_points("t-fresh", "r-3", "loss") == [(1, 21.0), (2, 22.0)]
    assert "logs as 'r-3'" in capsys.readouterr().err


def test_tensorboard_a_run_starting_over_from_step_0_replaces_every_step(tmp_path):
    tb = TensorBoardTracker(tmp_path, resume_step=0)
    for step in (1, 2, 3):
        tb.log(step, {"loss": float(step)})
    tb.close()
    tb = TensorBoardTracker(tmp_path, resume_step=0)  # killed before its first checkpoint: starts over
    for step in (1, 2):
        tb.log(step, {"loss": 10.0 + step})
    tb.close()
    assert _tb_scalars(tmp_path / "tensorboard", "loss") == [(1, 11.0), (2, 12.0)]


def test_jsonl_is_always_on_and_other_ranks_log_nothing(tmp_path):
    cfg = load_config(None, {})
    trackers = open_trackers(cfg, tmp_path, 0, CPU1)
    assert [type(t) for t in trackers] == [JsonlTracker]
    trackers[0].log(1, {"step": 1, "loss": 2.0, "loss_type": "sft"})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 2.0, "loss_type": "sft"}
    assert open_trackers(cfg, tmp_path / "other", 0, RANK1) == []


@pytest.mark.parametrize(
    "key,module",
    [("wandb.enabled", "wandb"), ("trackers.tensorboard", "tensorboard"), ("trackers.trackio", "trackio")],
)
def test_preflight_refuses_an_enabled_tracker_without_its_package(monkeypatch, key, module):
    section, field = key.split(".")
    cfg = load_config(None, {section: {field: True}})
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a module that cannot be imported
    problems = check_trackers(cfg)
    assert len(problems) == 1 and problems[0].key == key
    assert f"pip install {module}" in str(problems[0])
    monkeypatch.undo()
    if module != "wandb":  # installed here (the trackers extra)
        assert check_trackers(cfg) == []


def test_training_with_every_tracker_then_a_kill_and_resume(tmp_path, tiny_student_dir, smol_tokenizer):
    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 16))
    over = {
        "student": {"path": str(tiny_student_dir)},
        "trackers": {"tensorboard": True, "trackio": True, "trackio_project": "t-train"},
        "trainer": {
            "max_steps": 3,
            "samples_per_step": 4,
            "seq_len": 128,
            "device": "cpu",
            "repeat": False,
            "checkpoint": {"every": 2},
            "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
        },
    }
    train(load_config(None, over), run, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first = [(r["step"], r["loss"]) for r in rows]
    assert [s for s, _ in first] == [1, 2, 3]
    tb = _tb_scalars(run / "tensorboard", "loss")
    assert [s for s, _ in tb] == [1, 2, 3] and [v for _, v in tb] == pytest.approx([v for _, v in first], rel=1e-6)
    assert [s for s, _ in _tb_scalars(run / "tensorboard", "tokens_per_s")] == [1, 2, 3]
    tio = _trackio_points("t-train", "run", "loss")
    assert tio == [(s, pytest.approx(v, rel=1e-6)) for s, v in first]

    # a kill after step 3 was logged but before it was saved: resume from step 2, train to 4
    shutil.rmtree(checkpoint.latest(run / "checkpoints"))
    assert checkpoint.latest(run / "checkpoints").name == "step-000002"
    over["trainer"]["max_steps"] = 4
    out = train(load_config(None, over), run, resume=True, progress=False)
    assert out["steps"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # no step twice in any tracker
    assert [s for s, _ in _tb_scalars(run / "tensorboard", "loss")] == [1, 2, 3, 4]
    tb = dict(_tb_scalars(run / "tensorboard", "loss"))
    assert tb[3] == pytest.approx(rows[2]["loss"], rel=1e-6)  # TensorBoard keeps the retrained step
    tio = _trackio_points("t-train", "run", "loss")
    assert [s for s, _ in tio] == [1, 2, 3, 4]
    assert tio[2][1] == pytest.approx(first[2][1], rel=1e-6)  # trackio keeps the first try's step 3
    assert tio[3][1] == pytest.approx(rows[3]["loss"], rel=1e-6)


def test_distill_train_stops_before_anything_when_a_trackers_package_is_missing(
    tmp_path, tiny_student_dir, smol_tokenizer, monkeypatch, capsys
):
    from distill.cli import main

    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 4))
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'output_dir = "{run}"\n[student]\npath = "{tiny_student_dir}"\n[trackers]\ntensorboard = true\n'
        '[trainer]\ndevice = "cpu"\nmax_steps = 1\nsamples_per_step = 4\nseq_len = 128\n'
    )
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "trackers.tensorboard" in err and "pip install tensorboard" in err and "Traceback" not in err
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_a_closed_trackio_run_prints_nothing_at_process_exit(tmp_path):
    """trackio's exit hook finishes its current run again and prints '* Run finished ...'; ours forgets it on close."""
    import subprocess

    code = (
        "from pathlib import Path\n"
        "from distill.core.config import load_config\n"
        "from trainer.trackers import TrackioTracker\n"
        "cfg = load_config(None, {'trackers': {'trackio': True, 'trackio_project': 't-exit', 'trackio_run': 'r'}})\n"
        f"tr = TrackioTracker(cfg, Path({str(tmp_path)!r}))\n"
        "tr.log(1, {'loss': 1.0})\n"
        "tr.close()\n"
        "print('closed')\n"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store"), "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "closed"  # nothing from trackio after our last line
