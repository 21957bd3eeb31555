"""Mode validation of mixing teacher samples into on-policy steps (`on_policy.teacher_fraction`;
distill/core/config/checks_onpolicy.py, check_mixing): each mistake at its key path with its fix."""

from __future__ import annotations

import pytest
from test_config_onpolicy import BASE, load

from distill.core.config import ConfigError
from distill.core.config.checks_onpolicy import teacher_rows_per_step

MIX = {**BASE, "on_policy.samples_per_prompt": "2", "on_policy.teacher_samples": "runs/teacher/samples"}

# mistake -> (overrides on top of MIX, the key paths reported)  (trainer.samples_per_step defaults to 8)
MISTAKES = {
    "fraction_without_folder": (
        {"on_policy.teacher_fraction": "0.25", "on_policy.teacher_samples": None},
        ["on_policy.teacher_samples"],
    ),
    "folder_without_fraction": ({}, ["on_policy.teacher_samples"]),
    "rounds_to_no_teacher_row": ({"on_policy.teacher_fraction": "0.05"}, ["on_policy.teacher_fraction"]),
    "rounds_to_no_student_row": ({"on_policy.teacher_fraction": "0.95"}, ["on_policy.teacher_fraction"]),
    "student_rows_not_whole_groups": ({"on_policy.teacher_fraction": "0.125"}, ["trainer.samples_per_step"]),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mixing_mistake_is_reported_at_its_key_with_a_fix(name):
    overrides, keys = MISTAKES[name]
    with pytest.raises(ConfigError) as ei:
        load({**MIX, **overrides})
    assert [p.key for p in ei.value.problems] == keys
    assert all("Fix:" in p.message for p in ei.value.problems)


@pytest.mark.parametrize("fraction,rows", [("0.25", 2), ("0.5", 4), ("0.75", 6), ("0.3125", 3)])
def test_valid_mixes_load_and_round_half_up(fraction, rows):
    extra = {"on_policy.samples_per_prompt": "1"} if rows % 2 else {}
    cfg = load({**MIX, "on_policy.teacher_fraction": fraction, **extra})
    assert teacher_rows_per_step(cfg) == rows  # 0.3125 x 8 = 2.5 -> 3


def test_the_fraction_must_stay_below_one():
    with pytest.raises(ConfigError) as ei:
        load({**MIX, "on_policy.teacher_fraction": "1"})
    assert "on_policy.teacher_fraction" in str(ei.value)


def test_the_student_rows_message_names_both_counts():
    with pytest.raises(ConfigError) as ei:
        load({**MIX, "on_policy.teacher_fraction": "0.125"})  # 1 teacher row, 7 student rows, groups of 2
    msg = ei.value.problems[0].message
    assert "= 7 is not a multiple of on_policy.samples_per_prompt (2)" in msg and "teacher_fraction" in msg
