"""Mixing teacher samples into on-policy steps (`on_policy.teacher_fraction`), end to end through the real
CLI as tests/distill/test_on_policy.py runs it: the tiny student samples in-process, the exact-logprob score
server (real SmolLM2-135M-Instruct, vLLM's request shape) grades its tokens, the teacher rows come from a
samples folder of real-tokenizer teacher completions. Per step: the mix (rows and trained tokens of each
kind, their separate loss terms), which teacher rows, and a resumed run training on the same rows."""

from __future__ import annotations

import shutil

import pytest
from support.trainer_helpers import make_samples
from test_on_policy import metrics, step_samples, write_cfg

from distill.cli import main
from distill.core.contract import read_shard
from distill.on_policy_parts import write_samples

MIX = '[on_policy]\nteacher_fraction = 0.5\nteacher_samples = "{dir}"\n'


def teacher_folder(path, tokenizer, seed: int = 0):
    rows = make_samples(tokenizer, 5, seed=seed)  # 5 rows, 2 per step: the folder wraps at step 2
    write_samples(path / "shard-000000.jsonl", rows[:3])
    write_samples(path / "shard-000001.jsonl", rows[3:])
    return rows


def mixed_cfg(tmp, server, student, teacher_dir, **kw):
    cfg = write_cfg(tmp, server, student, **kw)
    cfg.write_text(cfg.read_text().replace("[on_policy]\n", MIX.format(dir=teacher_dir)))
    return cfg


def test_a_mixed_run_trains_half_teacher_rows_and_resumes_on_the_same_rows(
    tmp_path, score_server, tiny_student_dir, smol_tokenizer, capsys
):
    pool = teacher_folder(tmp_path / "teacher", smol_tokenizer)
    # the reference: 3 steps uninterrupted
    (tmp_path / "ref").mkdir()
    ref_cfg = mixed_cfg(tmp_path / "ref", score_server, tiny_student_dir, tmp_path / "teacher", k=1, steps=3)
    assert main(["run", str(ref_cfg)]) == 0
    ref_run = tmp_path / "ref" / "run"
    ref = metrics(ref_run)
    assert [r["step"] for r in ref] == [0, 1, 2, 3]
    for i, r in enumerate(ref[1:]):
        # samples_per_step 4, teacher_fraction 0.5: 2 teacher rows + 2 student samples (one prompt x 2)
        assert (r["teacher_rows"], r["student_rows"], r["samples"]) == (2, 2, 4)
        teacher = read_shard(ref_run / "on_policy" / f"teacher-{i:06d}.jsonl")
        want = [pool[(2 * i + j) % 5] for j in range(2)]  # the folder in order, wrapping around
        assert [s.sample_id for s in teacher] == [s.sample_id for s in want]
        assert r["teacher_trained_tokens"] == sum(sum(s.completion_mask) for s in want)
        student = step_samples(ref_run, i)
        assert len(student) == 2 and all(s.teacher_logprobs for s in student)
        assert r["student_trained_tokens"] == sum(sum(s.completion_mask) for s in student)
        assert r["trained_tokens"] == r["teacher_trained_tokens"] + r["student_trained_tokens"]
        assert r["teacher_loss_type"] == "sft" and r["loss_type"] == "reverse_kl"
        assert r["loss"] == pytest.approx(r["loss_teacher"] + r["loss_student"])
        assert r["loss_teacher"] > 0  # NLL of the teacher's tokens, divided by all N trained tokens
        # the on-policy statistics are the student rows' only
        assert r["reverse_kl"] == pytest.approx(r["student_logprob_mean"] - r["teacher_logprob_mean"])
    assert ref[3]["samples_seen"] == 12
    # the run again, its last checkpoint lost (as by a kill between step 3's training and its save), and the
    # teacher folder replaced: the resumed run re-trains step 3 on the rows written for it, not the folder's
    cfg = mixed_cfg(tmp_path, score_server, tiny_student_dir, tmp_path / "teacher", k=1, steps=3, every=2)
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step-000003")
    shutil.rmtree(tmp_path / "teacher")
    teacher_folder(tmp_path / "teacher", smol_tokenizer, seed=100)
    capsys.readouterr()
    assert main(["run", str(cfg)]) == 0
    assert "resumed_from=" in (out := capsys.readouterr().out) and "step-000002" in out  # step 3 trained again
    rows = metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # each step logged once
    for a, b in zip(rows, ref):  # the same rows, the same losses as the unbroken run
        for key in ("loss", "loss_teacher", "loss_student", "teacher_trained_tokens", "eval_reverse_kl"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert [s.sample_id for s in read_shard(run / "on_policy" / "teacher-000002.jsonl")] == ["q4/0", "q0/0"]


def test_mixing_without_a_teacher_folder_is_a_config_error(tmp_path, score_server, tiny_student_dir, capsys):
    cfg = write_cfg(tmp_path, score_server, tiny_student_dir)
    cfg.write_text(cfg.read_text().replace("[on_policy]\n", "[on_policy]\nteacher_fraction = 0.1\n"))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    # both problems at once: no folder, and 0.1 x 4 rounds to no teacher row
    assert "on_policy.teacher_samples" in err and "on_policy.teacher_fraction" in err and "Fix:" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_missing_or_unscored_teacher_folder_is_refused_before_sampling(
    tmp_path, score_server, tiny_student_dir, smol_tokenizer, capsys
):
    cfg = mixed_cfg(tmp_path, score_server, tiny_student_dir, tmp_path / "nowhere")
    assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "on_policy.teacher_samples" in err and "no such folder" in err and "Traceback" not in err
    # topk_kl: the teacher rows need the teacher's top-k, which unscored rollouts lack
    teacher_folder(tmp_path / "teacher", smol_tokenizer)
    cfg = mixed_cfg(tmp_path, score_server, tiny_student_dir, tmp_path / "teacher", loss="topk_kl")
    cfg.write_text(cfg.read_text().replace("concurrency = 1\n", "concurrency = 1\ntop_k = 5\n"))
    assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "on_policy.teacher_samples" in err and "teacher_topk_ids" in err and "distill score" in err
    assert not list((tmp_path / "run" / "samples").glob("shard-*"))
    # token ids outside the student's vocabulary: the folder was made with another tokenizer
    rows = make_samples(smol_tokenizer, 3)
    rows[1].completion_ids[0] = 10**6
    write_samples(tmp_path / "teacher" / "shard-000001.jsonl", rows)
    assert main(["run", str(mixed_cfg(tmp_path, score_server, tiny_student_dir, tmp_path / "teacher"))]) == 1
    err = capsys.readouterr().err
    assert "token id 1000000" in err and "another tokenizer" in err and "Traceback" not in err


def test_teacher_rows_go_in_order_leave_out_held_out_prompts_and_are_read_back(tmp_path, smol_tokenizer):
    """TeacherRows alone (no server, no model): the folder's rows in order, wrapping; rows of held-out eval
    prompts left out and counted; a step's rows written once and read back unchanged."""
    from test_config_onpolicy import BASE, load

    from distill.on_policy_mix import TeacherRows
    from distill.on_policy_parts import StepFiles

    pool = teacher_folder(tmp_path / "teacher", smol_tokenizer)  # q0 .. q4
    cfg = load({**BASE, "on_policy.samples_per_prompt": "1", "trainer.samples_per_step": "4",
                "on_policy.teacher_fraction": "0.75", "on_policy.teacher_samples": str(tmp_path / "teacher")})  # fmt: skip
    files = StepFiles(tmp_path / "run")
    rows = TeacherRows(cfg, files, vocab_size=len(smol_tokenizer), held_out=frozenset({"q1"}))
    assert (rows.n, rows.left_out) == (3, 1)
    ids = [[s.sample_id for s in rows.rows(i)] for i in range(3)]
    assert ids == [["q0/0", "q2/0", "q3/0"], ["q4/0", "q0/0", "q2/0"], ["q3/0", "q4/0", "q0/0"]]
    assert read_shard(files.dir / "teacher-000001.jsonl") == [pool[4], pool[0], pool[2]]
    # read back: another folder now, the same rows for the steps already given theirs
    shutil.rmtree(tmp_path / "teacher")
    teacher_folder(tmp_path / "teacher", smol_tokenizer, seed=50)
    again = TeacherRows(cfg, files, vocab_size=len(smol_tokenizer))
    assert [s.sample_id for s in again.rows(1)] == ids[1]
    assert [s.sample_id for s in again.rows(3)] == [
        "q54/0",
        "q50/0",
        "q51/0",
    ]  # a new step: the new folder, rows 9 .. 11 mod 5
    with pytest.raises(Exception, match="5 of 5 samples are out of it"):
        TeacherRows(cfg, files, vocab_size=100)
