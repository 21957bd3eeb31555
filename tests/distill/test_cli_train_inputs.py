"""`distill train` on samples folders that cannot train as asked (made with the real SmolLM2 tokenizer,
trained on the tiny student): one `distill:` line naming the problem and the fix, exit 1, no traceback;
the steps trained before a damaged shard are kept."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from support.trainer_helpers import make_samples, write_samples

ROOT = Path(__file__).resolve().parents[2]


def train(tmp_path: Path, student: Path, *extra: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / "run"}"\n[student]\npath = "{student}"\n'
        '[trainer]\nsamples_per_step = 2\nseq_len = 256\ndevice = "cpu"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "distill", "train", str(cfg), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("distill: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_samples_that_train_nothing_fail_the_run(tmp_path, tiny_student_dir, smol_tokenizer):
    samples = [
        dataclasses.replace(s, completion_mask=[0] * len(s.completion_ids)) for s in make_samples(smol_tokenizer, 6)
    ]
    write_samples(tmp_path / "run" / "samples", samples)
    res = train(tmp_path, tiny_student_dir, "--trainer.max_steps", "2")
    assert "step 1 had no trained token" in res.stderr
    assert "all 2 step(s) of this run had 0 trained tokens" in one_line(res)
    assert not (tmp_path / "run" / "checkpoints" / "step-000002").exists()


def test_a_sample_longer_than_seq_len_is_one_line(tmp_path, tiny_student_dir, smol_tokenizer):
    write_samples(tmp_path / "run" / "samples", make_samples(smol_tokenizer, 4))
    msg = one_line(train(tmp_path, tiny_student_dir, "--trainer.max_steps", "1", "--trainer.seq_len", "16"))
    assert "more than trainer.seq_len = 16" in msg and "Fix:" in msg


def test_the_steps_before_a_damaged_shard_are_kept(tmp_path, tiny_student_dir, smol_tokenizer):
    folder = tmp_path / "run" / "samples"
    write_samples(folder, make_samples(smol_tokenizer, 10), per_shard=4)
    shard = sorted(folder.glob("shard-*.jsonl"))[1]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text(lines[0] + "this is not json\n" + "".join(lines[1:]))
    msg = one_line(train(tmp_path, tiny_student_dir, "--trainer.max_steps", "4"))
    assert f"{shard.name}:2" in msg
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()  # the two steps before it: kept


def test_samples_flag_given_a_run_dir_names_its_samples_folder_and_the_summary_names_the_folder_used(
    tmp_path, tiny_student_dir, smol_tokenizer
):
    other = tmp_path / "other"
    write_samples(other / "samples", make_samples(smol_tokenizer, 4))
    res = train(tmp_path, tiny_student_dir, "--trainer.max_steps", "1", "--samples", str(other))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"Fix: --samples {other / 'samples'}" in res.stderr
    ok = train(tmp_path, tiny_student_dir, "--trainer.max_steps", "1", "--samples", str(other / "samples"))
    assert ok.returncode == 0, ok.stderr
    assert f"samples:     {other / 'samples'}" in ok.stdout and f"distill inspect {other / 'samples'}" in ok.stdout


def test_resuming_from_a_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path, tiny_student_dir, smol_tokenizer):
    write_samples(tmp_path / "run" / "samples", make_samples(smol_tokenizer, 8))
    assert (
        train(tmp_path, tiny_student_dir, "--trainer.max_steps", "2", "--trainer.checkpoint.every", "1").returncode == 0
    )
    step2 = tmp_path / "run" / "checkpoints" / "step-000002"
    (step2 / "optimizer.pt").unlink()
    msg = one_line(train(tmp_path, tiny_student_dir, "--resume", "--trainer.max_steps", "3"))
    assert f"{step2}, misses optimizer.pt" in msg and "delete that folder to resume from step-000001" in msg
    (step2 / "optimizer.pt").write_bytes(b"")
    (step2 / "trainer_state.json").write_text('{"step": 2, "samples_')
    msg = one_line(train(tmp_path, tiny_student_dir, "--resume", "--trainer.max_steps", "3"))
    assert "has an unreadable trainer_state.json" in msg
    import shutil

    shutil.rmtree(step2)  # the way out the message gives
    assert train(tmp_path, tiny_student_dir, "--resume", "--trainer.max_steps", "3").returncode == 0


def test_a_token_id_beyond_the_students_vocabulary_is_one_line_and_keeps_the_steps_before(
    tmp_path, tiny_student_dir, smol_tokenizer
):
    samples = make_samples(smol_tokenizer, 8)
    vocab = len(smol_tokenizer)
    samples[5] = dataclasses.replace(samples[5], completion_ids=[*samples[5].completion_ids[:-1], vocab + 7])
    write_samples(tmp_path / "run" / "samples", samples)
    msg = one_line(train(tmp_path, tiny_student_dir, "--trainer.max_steps", "4"))
    assert f"sample {samples[5].sample_id} in {tmp_path / 'run' / 'samples'} holds token id {vocab + 7}" in msg
    assert f"ids 0..{vocab - 1}" in msg and "Fix:" in msg
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()  # the two steps before it are kept
