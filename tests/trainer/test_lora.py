"""LoRA students ([trainer.lora], peft) on the tiny student: only adapters train and are checkpointed,
the chunked loss sees the adapters, a killed run resumes exactly, and `distill export --merged`
writes an HF folder whose logits equal the peft model's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.core.config import load_config
from support.trainer_helpers import make_samples, write_samples
from trainer import checkpoint
from trainer.dist import DistContext
from trainer.train import build_model, build_optimizer, train

peft = pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
CPU1 = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1}


def _cfg(student_dir, lora=LORA, **trainer):
    t = {
        "max_steps": 4,
        "samples_per_step": 4,
        "seq_len": 128,
        "micro_batch_rows": 1,
        "device": "cpu",
        "repeat": False,
        "optim": {"lr": 1e-2, "warmup_steps": 1, "schedule": "cosine"},
        "lora": lora,
    }
    t.update(trainer)
    return load_config(None, {"student": {"path": str(student_dir)}, "trainer": t})


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_only_the_adapters_train(tiny_student_dir):
    model = build_model(tiny_student_dir, _cfg(tiny_student_dir).trainer, CPU1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x 7 projections x (A, B)
    assert len(trainable) == 28 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer, _ = build_optimizer(model, _cfg(tiny_student_dir).trainer)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 28
    # the HF model itself (with adapters injected) is what the loss, the sampler and FSDP see
    assert type(model.lm).__name__ == "LlamaForCausalLM" and model.peft.get_base_model() is model.lm


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_the_chunked_loss_trains_the_adapters_like_the_peft_models_own_loss(
    tiny_student_dir, smol_tokenizer, activation_checkpointing
):
    """Our loss (decoder body + chunked NLL on lm_head's weight) and its adapter gradients equal those of
    the peft model's own forward with labels, with non-zero adapters (and with activation checkpointing,
    whose recomputation must still reach the adapters of a frozen student)."""
    from trainer.data import make_micro_batches

    cfg = _cfg(
        tiny_student_dir, lora={**LORA, "dropout": 0.0}, activation_checkpointing=activation_checkpointing
    ).trainer
    model = build_model(tiny_student_dir, cfg, CPU1)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # fresh adapters are B = 0: make them matter
    s = make_samples(smol_tokenizer, 1)[0]
    mb = make_micro_batches([s], 128, 1)[0]
    ours = model.micro_batch_loss(mb, float(s.num_trained))
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    labels = ids.clone()
    labels[0, : len(s.prompt_ids)] = -100
    ref = model.peft(input_ids=ids, labels=labels).loss
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    with model.peft.disable_adapter(), torch.no_grad():  # without the adapters the loss differs
        assert abs(model.peft(input_ids=ids, labels=labels).loss.item() - ref.item()) > 1e-3
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(g_ours[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)
        else:
            assert p.grad is None, n


def test_checkpoints_hold_only_the_adapter_and_a_killed_run_resumes_exactly(
    tmp_path, tiny_student_dir, smol_tokenizer, monkeypatch
):
    import trainer.train as tt

    samples = make_samples(smol_tokenizer, 24)
    straight = tmp_path / "straight"
    write_samples(straight / "samples", samples)
    every_step = {"every": 1, "keep_last": 10}
    train(_cfg(tiny_student_dir, max_steps=6, checkpoint=every_step), straight, progress=False)

    ck = straight / "checkpoints" / "step-000002"
    names = {p.name for p in ck.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "tokenizer.json"} <= names
    assert "model.safetensors" not in names  # the frozen student is not copied into every checkpoint
    adapter = load_file(ck / "adapter_model.safetensors")
    assert len(adapter) == 28 and all("lora_" in k for k in adapter)
    assert json.loads((ck / "adapter_config.json").read_text())["r"] == 4
    optim = torch.load(ck / "optimizer.pt", weights_only=False)
    assert len(optim["state"]) == 28 and all("lora_" in k for k in optim["state"])
    a2, a3 = (load_file(straight / "checkpoints" / f"step-00000{i}" / "adapter_model.safetensors") for i in (2, 3))
    assert any(not torch.equal(a2[k], a3[k]) for k in a2)  # the adapters do train

    real_step, calls = tt.train_step, []

    def dies_at_step_5(*a, **k):  # a kill: nothing after it runs, no end-of-run save
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    run = tmp_path / "killed"
    write_samples(run / "samples", samples)
    monkeypatch.setattr(tt, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_student_dir, max_steps=6, checkpoint=every_step), run, progress=False)
    monkeypatch.setattr(tt, "train_step", real_step)
    assert checkpoint.latest(run / "checkpoints").name == "step-000004"
    out = train(_cfg(tiny_student_dir, max_steps=6, checkpoint=every_step), run, resume=True, progress=False)
    assert out["resumed_from"].endswith("step-000004") and out["steps"] == 6
    # lora dropout = 0.1: the same masks only if the RNG state came back too
    assert _losses(run) == pytest.approx(_losses(straight), rel=1e-5)
    assert len(_losses(run)) == 6
    final_a = load_file(straight / "checkpoints" / "step-000006" / "adapter_model.safetensors")
    final_b = load_file(run / "checkpoints" / "step-000006" / "adapter_model.safetensors")
    for k in final_a:
        torch.testing.assert_close(final_b[k], final_a[k], rtol=1e-5, atol=1e-7, msg=k)


def test_resume_refuses_a_checkpoint_of_the_other_kind(tmp_path, tiny_student_dir, smol_tokenizer):
    from trainer.lora import LoraError

    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 8))
    train(_cfg(tiny_student_dir, max_steps=1), run, progress=False)
    with pytest.raises(LoraError, match=r"holds a LoRA adapter, but trainer\.lora\.enabled = false.*distill export"):
        train(_cfg(tiny_student_dir, lora={"enabled": False}, max_steps=2), run, resume=True, progress=False)
    with pytest.raises(LoraError, match=r"does not fit trainer\.lora .*size mismatch"):  # another rank
        train(_cfg(tiny_student_dir, lora={**LORA, "r": 8}, max_steps=2), run, resume=True, progress=False)
    with pytest.raises(LoraError, match=r"name different adapters"):  # other target modules
        train(_cfg(tiny_student_dir, lora={**LORA, "target_modules": ["q_proj"]}, max_steps=2), run, resume=True)

    full = tmp_path / "full"
    write_samples(full / "samples", make_samples(smol_tokenizer, 8))
    train(_cfg(tiny_student_dir, lora={"enabled": False}, max_steps=1), full, progress=False)
    with pytest.raises(LoraError, match=r"full fine-tuning checkpoint, but trainer\.lora\.enabled = true"):
        train(_cfg(tiny_student_dir, max_steps=2), full, resume=True, progress=False)


def test_unknown_target_modules_name_the_key(tiny_student_dir):
    from trainer.lora import LoraError

    with pytest.raises(LoraError, match=r"trainer\.lora\.target_modules names \['qkv'\]"):
        build_model(tiny_student_dir, _cfg(tiny_student_dir, lora={**LORA, "target_modules": ["qkv"]}).trainer, CPU1)


def test_export_merged_writes_an_hf_folder_with_the_peft_models_logits(tmp_path, tiny_student_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 12))
    train(_cfg(tiny_student_dir, max_steps=3), run, progress=False)
    out = tmp_path / "merged"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "export", str(run), "--merged", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step-000003" in proc.stdout and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()

    ids = torch.tensor([make_samples(smol_tokenizer, 1)[0].prompt_ids])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_student_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        with_adapter = peft.PeftModel.from_pretrained(base, run / "checkpoints" / "step-000003").eval()(ids).logits
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, with_adapter, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter is in there

    # the base folder moved: the checkpoint's distill_config.toml student.path names it again
    from trainer.lora import base_model_dir

    moved = tmp_path / "moved-ckpt"
    shutil.copytree(run / "checkpoints" / "step-000003", moved)
    adapter_cfg = json.loads((moved / "adapter_config.json").read_text())
    assert base_model_dir(moved) == Path(adapter_cfg["base_model_name_or_path"]) == Path(tiny_student_dir)
    adapter_cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    assert base_model_dir(moved) == Path(tiny_student_dir)

    again = subprocess.run(
        [sys.executable, "-m", "distill", "export", str(run), "--merged", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_adapter_init_is_the_same_on_every_rank(tiny_student_dir):
    """Ranks seed their RNGs with seed + rank; the adapters' init must not follow (FSDP2 keeps each
    rank's own shard), and building the model leaves the caller's RNG stream where it was."""
    t = _cfg(tiny_student_dir).trainer
    inits, draws = [], []
    for rank in (0, 1):
        torch.manual_seed(t.seed + rank)
        model = build_model(tiny_student_dir, t, CPU1)
        inits.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n})
        draws.append(torch.rand(3))
    assert inits[0].keys() == inits[1].keys() and all(torch.equal(inits[0][k], inits[1][k]) for k in inits[0])
    torch.manual_seed(t.seed + 1)
    assert torch.equal(draws[1], torch.rand(3))


def test_export_mistakes_are_one_message_each(tmp_path, capsys, tiny_student_dir, smol_tokenizer):
    from distill.cli import main

    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "out")]) == 1
    assert "neither a checkpoint" in capsys.readouterr().err
    full = tmp_path / "full"
    write_samples(full / "samples", make_samples(smol_tokenizer, 4))
    train(_cfg(tiny_student_dir, lora={"enabled": False}, max_steps=1), full, progress=False)
    assert main(["export", str(full), "--merged", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "full fine-tuning checkpoint" in err and "nothing to merge" in err and not (tmp_path / "out").exists()


def test_without_peft_building_a_lora_student_says_how_to_install_it(tiny_student_dir, monkeypatch):
    from trainer.lora import LoraError

    monkeypatch.setitem(sys.modules, "peft", None)  # what an environment without peft looks like to imports
    with pytest.raises(LoraError, match=r"needs the peft package\. Fix: pip install 'distill\[lora\]'"):
        build_model(tiny_student_dir, _cfg(tiny_student_dir).trainer, CPU1)
