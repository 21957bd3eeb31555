"""The trainer end to end on the tiny student: normalisation, metrics, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.core.config import load_config
from distill.core import contract
from support.trainer_helpers import make_samples, write_samples
from trainer import checkpoint
from trainer.dist import DistContext
from trainer.timing import SECTIONS
from trainer.train import accumulate_gradients, build_model, lr_factor, overfit_check, train

CPU1 = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def _cfg(student_dir, **trainer):
    t = {
        "max_steps": 4,
        "samples_per_step": 4,
        "seq_len": 128,
        "micro_batch_rows": 1,
        "device": "cpu",
        "optim": {"lr": 3e-3, "warmup_steps": 1, "schedule": "cosine"},
    }
    t.update(trainer)
    return load_config(None, {"student": {"path": str(student_dir)}, "trainer": t})


def _grads(student_dir, samples, **trainer):
    cfg = _cfg(student_dir, **trainer)
    model = build_model(student_dir, cfg.trainer, CPU1)
    m = accumulate_gradients(model, samples, cfg.trainer, CPU1, pad_id=0)
    return m, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_loss_is_normalised_over_all_micro_batches(tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 8)
    one, g_one = _grads(tiny_student_dir, samples, seq_len=512, micro_batch_rows=8)
    four, g_four = _grads(tiny_student_dir, samples, seq_len=128, micro_batch_rows=1, packing=False)
    assert four["trained_tokens"] == one["trained_tokens"] == sum(s.num_trained for s in samples)
    assert four["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for name in g_one:
        torch.testing.assert_close(g_four[name], g_one[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lr_schedules():
    cfg = _cfg("x", max_steps=10, optim={"lr": 1.0, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1})
    f = [lr_factor(s, cfg.trainer) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] > 0.1
    cfg.trainer.optim.schedule = "linear"
    assert lr_factor(10, cfg.trainer) == pytest.approx(0.1)
    cfg.trainer.optim.schedule = "constant"
    assert lr_factor(7, cfg.trainer) == 1.0


def test_overfit_check_loss_falls(tiny_student_dir, smol_tokenizer):
    losses = overfit_check(tiny_student_dir, make_samples(smol_tokenizer, 4), steps=4, lr=3e-3)
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.1


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_metrics_checkpoints_and_backpressure(tmp_path, tiny_student_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 10))  # 2 full steps + a partial one
    cfg = _cfg(tiny_student_dir, max_steps=5, repeat=False, checkpoint={"every": 1, "keep_last": 2})
    out = train(cfg, run, progress=False)
    assert out["steps"] == 3 and out["samples_seen"] == 10  # the stream ended before max_steps
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "step",
        "loss",
        "trained_tokens",
        "tokens",
        "tokens_per_s",
        "lr",
        "grad_norm",
        "packing_efficiency",
        "samples_seen",
    ):
        assert all(key in r for r in rows), key
    assert rows[-1]["samples_seen"] == 10 and 0 < rows[0]["packing_efficiency"] <= 1
    # the step's time breakdown (trainer/timing.py): every part, none negative, together within the step
    parts = [f"time_{k}_s" for k in SECTIONS]
    for r in rows:
        assert all(r[k] >= 0 for k in parts), r
        assert r["time_forward_s"] > 0 and r["time_backward_s"] > 0 and r["time_optimizer_s"] > 0
        assert sum(r[k] for k in parts if k != "time_wait_s") <= r["step_time_s"] * 1.01
    assert rows[0]["tokens"] > rows[0]["trained_tokens"] > 0
    assert contract.read_consumed(run / "samples") == 10
    # rotation keeps the last 2; the final one is a loadable HF folder with our files
    ckpts = checkpoint.list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step-000002", "step-000003"]
    final = Path(out["checkpoint"])
    assert final == ckpts[-1]
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "distill_config.toml",
        "optimizer.pt",
        "scheduler.pt",
        "rng-rank0.pt",
        "trainer_state.json",
    ):
        assert (final / f).is_file(), f
    assert json.loads((final / "trainer_state.json").read_text())["samples_seen"] == 10
    assert "[trainer]" in (final / "distill_config.toml").read_text()
    lm = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[1, 2, 3]])
    assert lm(ids).logits.shape[-1] == len(smol_tokenizer)


def test_resume_continues_the_loss_curve(tmp_path, tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 24)
    straight = tmp_path / "straight"
    write_samples(straight / "samples", samples)
    cfg = _cfg(tiny_student_dir, max_steps=6, repeat=False)
    train(cfg, straight, progress=False)

    # Interrupted: the producer had only published half when the trainer stopped.
    resumed = tmp_path / "resumed"
    write_samples(resumed / "samples", samples[:12])
    first = train(cfg, resumed, progress=False)
    assert first["steps"] == 3
    write_samples(resumed / "samples", samples[12:])  # the producer resumes and finishes
    second = train(cfg, resumed, resume=True, progress=False)
    assert second["resumed_from"].endswith("step-000003") and second["steps"] == 6

    a, b = _losses(straight), _losses(resumed)
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=1e-5)


def test_resume_without_checkpoint_starts_fresh(tmp_path, tiny_student_dir, smol_tokenizer):
    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 4))
    out = train(_cfg(tiny_student_dir, max_steps=1), run, resume=True, progress=False)
    assert out["resumed_from"] is None and out["steps"] == 1


def test_report_plots_metrics_and_summarises(tmp_path):
    from trainer.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {
            "step": i,
            "loss": 3.0 - 0.2 * i,
            "tokens": 400,
            "trained_tokens": 100,
            "tokens_per_s": 1000.0 + i,
            "lr": 1e-4,
            "grad_norm": 1.0,
            "packing_efficiency": 0.9,
            "samples_seen": 8 * i,
        }
        for i in range(1, 6)
    ]
    rows[2]["eval_loss"] = 2.5
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    png, text = write_report(run)
    assert png == run / "report.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss: 2.8000 (step 1) -> 2.0000 (step 5)  [sft: mean NLL per trained token]" in text  # no loss_type: sft
    assert "tokens: 2000 (500 trained)" in text and "eval loss: 2.5000" in text
    with pytest.raises(FileNotFoundError, match="nothing is not a folder. Fix: pass a run directory"):
        write_report(tmp_path / "nothing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="has not trained a step yet"):
        write_report(tmp_path / "nothing")


def test_evaluate_equals_the_hf_models_own_loss(tiny_student_dir, smol_tokenizer):
    from trainer.train import evaluate

    cfg = _cfg(tiny_student_dir)
    model = build_model(tiny_student_dir, cfg.trainer, CPU1)
    s = make_samples(smol_tokenizer, 1)[0]  # every completion token trained
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    labels = ids.clone()
    labels[0, : len(s.prompt_ids)] = -100
    with torch.no_grad():
        ref = model.lm(input_ids=ids, labels=labels).loss.item()
    assert evaluate(model, [s], cfg.trainer, CPU1, pad_id=0) == pytest.approx(ref, rel=1e-5)


def test_held_out_eval_is_logged_and_never_trained(tmp_path, tiny_student_dir, smol_tokenizer):
    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 4 + 3 * 4))
    out = train(_cfg(tiny_student_dir, max_steps=3, eval_every=2, eval_samples=4), run, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "eval_loss" not in rows[0] and rows[1]["eval_loss"] > 0 and rows[2]["eval_loss"] > 0
    assert out["samples_seen"] == 16 and out["eval_loss"] == rows[2]["eval_loss"]
    assert all(r["samples"] == 4 for r in rows)


def _saved_activation_bytes(model, mb) -> int:
    """Bytes autograd keeps for backward from the decoder layers' forward."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.lm.model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False)
    return saved[0]


def test_activation_checkpointing_saves_less_and_keeps_gradients(tiny_student_dir, smol_tokenizer):
    from trainer.data import make_micro_batches

    samples = make_samples(smol_tokenizer, 4)
    _, plain = _grads(tiny_student_dir, samples)
    _, ckpt = _grads(tiny_student_dir, samples, activation_checkpointing=True)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    mb = make_micro_batches(samples, 128, 1)[0]
    cfg = _cfg(tiny_student_dir)
    without = _saved_activation_bytes(build_model(tiny_student_dir, cfg.trainer, CPU1), mb)
    cfg = _cfg(tiny_student_dir, activation_checkpointing=True)
    with_ac = _saved_activation_bytes(build_model(tiny_student_dir, cfg.trainer, CPU1), mb)
    assert with_ac < without / 2


def test_refuses_to_mix_with_an_earlier_run_or_to_wait_for_nothing(tmp_path, tiny_student_dir, smol_tokenizer):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no samples directory"):
        train(_cfg(tiny_student_dir, max_steps=1), run, progress=False)
    write_samples(run / "samples", make_samples(smol_tokenizer, 4))
    train(_cfg(tiny_student_dir, max_steps=1), run, progress=False)
    with pytest.raises(FileExistsError, match="checkpoints of an earlier run"):
        train(_cfg(tiny_student_dir, max_steps=1), run, progress=False)


def test_repeat_goes_over_the_finished_stream_again_and_resumes_mid_epoch(tmp_path, tiny_student_dir, smol_tokenizer):
    samples = make_samples(smol_tokenizer, 6)  # 4 per step: steps straddle epoch boundaries
    const = {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"}
    straight = tmp_path / "straight"
    write_samples(straight / "samples", samples)
    out = train(_cfg(tiny_student_dir, max_steps=4, optim=const), straight, progress=False)
    assert out["steps"] == 4 and out["samples_seen"] == 16
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    # step 2 = samples 4,5,0,1 and step 4 = samples 2,3,4,5 ... every sample is trained
    by_id = {s.sample_id: s.num_trained for s in samples}
    ids = [s.sample_id for s in samples]
    expect = [sum(by_id[ids[(4 * k + j) % 6]] for j in range(4)) for k in range(4)]
    assert [r["trained_tokens"] for r in rows] == expect

    resumed = tmp_path / "resumed"
    write_samples(resumed / "samples", samples)
    train(_cfg(tiny_student_dir, max_steps=3, optim=const), resumed, progress=False)
    out = train(_cfg(tiny_student_dir, max_steps=4, optim=const), resumed, resume=True, progress=False)
    assert out["samples_seen"] == 16
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)


def test_the_last_step_is_logged_when_the_stream_ends_between_logged_steps(tmp_path, tiny_student_dir, smol_tokenizer):
    """repeat = false and a stream that ends at step 3 with log_every = 2: step 3 is still logged."""
    write_samples(tmp_path / "samples", make_samples(smol_tokenizer, 6))
    out = train(
        _cfg(tiny_student_dir, max_steps=10, samples_per_step=2, log_every=2, repeat=False), tmp_path, progress=False
    )
    assert out["steps"] == 3
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3] and all("loss" in r for r in rows)
    from trainer.report import summary_text

    assert summary_text([]) == "no training step logged yet"
    assert "(step 3)" in summary_text(rows)


def test_no_step_no_checkpoint_and_a_failure(tmp_path, tiny_student_dir, smol_tokenizer):
    """A finished stream with no sample to train on is an error naming why (not a run that "completed"),
    and no checkpoint of the untrained student is written."""
    run = tmp_path / "run"
    w = contract.ShardWriter(run / "samples")
    w.close()  # DONE, zero samples
    with pytest.raises(contract.ShardError, match="is marked done and holds no sample to train on"):
        train(_cfg(tiny_student_dir, max_steps=2), run, progress=False)
    assert checkpoint.latest(run / "checkpoints") is None
    held = tmp_path / "held"
    write_samples(held / "samples", make_samples(smol_tokenizer, 3))  # all three go to the eval slice
    with pytest.raises(contract.ShardError, match=r"all 3 sample\(s\) .* held-out .*eval_samples = 4"):
        train(_cfg(tiny_student_dir, max_steps=2, eval_every=1, eval_samples=4), held, progress=False)
    assert checkpoint.latest(held / "checkpoints") is None


def test_time_based_checkpoints_survive_a_kill_and_resume_exactly(
    tmp_path, tiny_student_dir, smol_tokenizer, monkeypatch
):
    """checkpoint.every = 0 (no step saves): the time-based saves alone bound what a kill loses, and a
    resume from one continues exactly (step, optimizer, LR schedule, data position)."""
    import trainer.train as tt

    assert 0 < checkpoint_defaults().every_seconds <= 600  # on by default: a kill -9 loses minutes, not the run
    samples = make_samples(smol_tokenizer, 24)
    straight = tmp_path / "straight"
    write_samples(straight / "samples", samples)
    train(
        _cfg(tiny_student_dir, max_steps=6, repeat=False, checkpoint={"every": 0, "every_seconds": 0}),
        straight,
        progress=False,
    )

    real_step, calls = tt.train_step, []

    def dies_at_step_5(*a, **k):  # a kill: no end-of-run save, nothing after it runs
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    def killed_run(every_seconds: float) -> Path:
        run = tmp_path / f"killed-{every_seconds}"
        write_samples(run / "samples", samples)
        calls.clear()
        monkeypatch.setattr(tt, "train_step", dies_at_step_5)
        cfg = _cfg(tiny_student_dir, max_steps=6, repeat=False, checkpoint={"every": 0, "every_seconds": every_seconds})
        with pytest.raises(KeyboardInterrupt):
            train(cfg, run, progress=False)
        monkeypatch.setattr(tt, "train_step", real_step)
        return run

    assert checkpoint.latest(killed_run(0) / "checkpoints") is None  # without time-based saves: all lost
    run = killed_run(1e-6)  # "every few minutes", compressed: every step is past the interval
    assert checkpoint.latest(run / "checkpoints").name == "step-000004"
    out = train(
        _cfg(tiny_student_dir, max_steps=6, repeat=False, checkpoint={"every": 0, "every_seconds": 1e-6}),
        run,
        resume=True,
        progress=False,
    )
    assert out["resumed_from"].endswith("step-000004") and out["steps"] == 6 and out["samples_seen"] == 24
    assert _losses(run) == pytest.approx(_losses(straight), rel=1e-5)


def checkpoint_defaults():
    from distill.core.config import Checkpoint

    return Checkpoint()
