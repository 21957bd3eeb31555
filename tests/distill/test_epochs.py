"""The note `distill train` prints on how often each sample of a finished folder will be seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.core.config import RunConfig
from distill.core.contract import DONE_FILE
from distill.epochs import count_samples, epochs_note


def _folder(tmp_path: Path, n: int, done: bool = True) -> Path:
    d = tmp_path / "samples"
    d.mkdir()
    (d / "shard-000000.jsonl").write_text('{"x": 1}\n' * (n // 2) + "\n")
    (d / "shard-000001.jsonl").write_text('{"x": 1}\n' * (n - n // 2))
    if done:
        (d / DONE_FILE).write_text("")
    return d


def _trainer(**kw):
    cfg = RunConfig.model_validate({"student": {"path": "x"}, "trainer": kw})
    return cfg.trainer


@pytest.mark.parametrize(
    "n, kw, says",
    [
        (
            3,
            dict(samples_per_step=8, max_steps=1),
            "warning: 3 training samples, fewer than trainer.samples_per_step = 8",
        ),
        (3, dict(samples_per_step=2, max_steps=6), "3 training samples, 6 steps of 2: about 4.0 epochs"),
        (100, dict(samples_per_step=4, max_steps=2), "8 of them (8%) will be trained on; raise trainer.max_steps"),
        (100, dict(samples_per_step=4, max_steps=25), None),  # one epoch: nothing to say
        (10, dict(samples_per_step=4, max_steps=5, repeat=False), "end the stream after about 3 of max_steps = 5"),
        (20, dict(samples_per_step=4, max_steps=10, eval_samples=10, eval_every=5), "10 training samples"),
    ],
)
def test_the_note_says_how_the_folder_is_gone_over(tmp_path, n, kw, says):
    note = epochs_note(_trainer(**kw), _folder(tmp_path, n))
    assert (note is None) if says is None else (says in note)


def test_no_note_while_the_folder_is_still_written(tmp_path):
    d = _folder(tmp_path, 3, done=False)
    assert count_samples(d) == 3 and epochs_note(_trainer(samples_per_step=8), d) is None
