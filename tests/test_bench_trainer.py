"""bench/bench_trainer.py runs (tiny shape, --quick) and reports what docs/training.md quotes: tokens/s,
the RSS peak sampled from outside, MFU against the bare GEMM, our step breakdown, the loss head's
chunked vs full logits. No figure is asserted (they depend on the machine), only that each is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape", ["tiny"])
def test_bench_trainer_quick_runs_and_reports(tmp_path, shape, smol_tokenizer):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "bench/bench_trainer.py", f"--shape={shape}", "--quick", "--only=ours,gemm,loss"]
    r = subprocess.run([*cmd, f"--json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    ours = res["ours"]
    assert ours["tokens_per_s"] > 0 and 0 < ours["mfu"] and ours["peak_rss"] >= ours["base_rss"] > 0
    assert res["gemm_before"]["flops_per_s"] > 0 and ours["gemm_probe"] > 0 and res["flops"] > 0
    assert set(ours["breakdown"][0]) == {"wait", "data", "forward", "loss", "backward", "optimizer"}
    assert abs(sum(ours["breakdown_share"].values()) - 1) < 1e-6
    assert res["loss_full"]["seconds"] > 0 and res["loss_chunked"]["seconds"] > 0 and res["loss_time_ratio"] > 0
    assert set(res["loss_sweep"]["seconds"]) == {"0", "128", "256"}
    assert "MFU" in r.stdout and "ours, per step" in r.stdout and "chunked/full" in r.stdout


def test_every_shape_builds_and_runs_forward_backward():
    """Each bench shape is a Llama that transformers builds and runs (on the meta device: shapes only), heads
    and kv heads as the real configs have them (SmolLM2-135M's 9/3, 360M's 15/5: the old bench crashed on 9/4)."""
    import torch
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_trainer import SHAPES, VOCAB
    from trainer_contenders import llama_config

    assert (SHAPES["135m"]["heads"], SHAPES["135m"]["kv_heads"]) == (9, 3)
    for name, shape in SHAPES.items():
        with torch.device("meta"):
            lm = LlamaForCausalLM(llama_config(shape, VOCAB))
            ids = torch.zeros((2, 16), dtype=torch.long)
            out = lm(input_ids=ids, labels=ids)
        out.loss.backward()
        assert out.logits.shape == (2, 16, VOCAB), name
        assert lm.model.layers[0].self_attn.k_proj.weight.grad.shape == (
            shape["hidden"] // shape["heads"] * shape["kv_heads"],
            shape["hidden"],
        )
