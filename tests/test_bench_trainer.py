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


def _bench(argv: list[str]):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_trainer

    a = bench_trainer._args(argv)
    a.shape_name, a.shape = a.shape, bench_trainer.SHAPES[a.shape]
    return bench_trainer, a


def test_device_argument_selects_anchor_dtype_memory_measure_and_worker_dtypes():
    """What a CUDA run would measure, chosen from --device alone (no GPU needed to check the choice): CPU keeps
    the fp32 anchor and RSS (--bf16 adds ours in bf16 as an extra row); CUDA with --bf16 runs every worker,
    the standalone GEMM too, in bf16 against a bf16 anchor and reports the allocator's peak."""
    from bench_device import measures
    from bench_trainer_report import markdown

    assert (
        measures("cpu", False)
        == measures("cpu", True)
        == {
            "dtype": "float32",
            "anchor_dtype": "float32",
            "memory": "RSS",
        }
    )
    assert measures("cuda", True) == {"dtype": "bfloat16", "anchor_dtype": "bfloat16", "memory": "max_memory_allocated"}
    assert measures("cuda", False)["anchor_dtype"] == "float32"

    bt, cpu = _bench(["--shape=tiny", "--bf16"])
    fwd, runs = bt.plan(cpu)
    assert not any(x.startswith("--dtype") for x in fwd) and "--device=cpu" in fwd
    assert [label for label, _, _ in runs] == ["ours", "ours-bf16", "trl", "hf-loop"]
    assert dict((label, extra) for label, _, extra in runs)["ours-bf16"] == ["--dtype=bfloat16"]

    bt, gpu = _bench(["--shape=1.7b", "--bf16", "--device=cuda", "--micro-batch-rows=4", "--seq-len=2048"])
    fwd, runs = bt.plan(gpu)
    assert fwd[-1] == "--dtype=bfloat16" and "--micro-batch-rows=4" in fwd and "--shape=1.7b" in fwd
    assert [(label, extra) for label, _, extra in runs] == [("ours", []), ("trl", []), ("hf-loop", [])]
    wa = bt._args([*fwd, "--worker=gemm"])  # what a worker parses from that argv
    assert (wa.device, wa.dtype, wa.micro_batch_rows, wa.seq_len, wa.gemm_tokens) == ("cuda", "bfloat16", 4, 2048, 4096)

    r = {"tokens_per_s": 1.0, "mfu": 0.5, "gemm_probe": 1e12, "peak_mem": 2**30, "peak_above_base": 2**29}
    assert "| peak GPU mem (above loaded model) |" in markdown({"ours": r, **measures("cuda", True)})
    assert "| peak RSS (above loaded model) |" in markdown({"ours": r, **measures("cpu", False)})
    assert "| peak RSS (above loaded model) |" in markdown({"ours": r})  # a result without the keys: CPU


def test_shape_1_7b_is_smollm2_1_7b_config_and_flops(smol_tokenizer):
    """--shape 1.7b is SmolLM2-1.7B's shape (2048 x 24, 32 heads = 32 kv heads, 8192, tied): a valid LlamaConfig of
    ~1.71B parameters (counted from the config, not built), and the bench's FLOP count over it."""
    from trainer_contenders import linear_shapes, llama_config

    bt, a = _bench(["--shape=1.7b", "--steps=1", "--samples-per-step=4", "--seq-len=2048"])
    cfg = llama_config(a.shape, bt.VOCAB)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (2048, 24, 8192)
    assert cfg.num_attention_heads == cfg.num_key_value_heads == 32 and cfg.head_dim == 64
    assert cfg.tie_word_embeddings and cfg.vocab_size == bt.VOCAB == 49152
    n_body = sum(o * i * m for o, i, m in linear_shapes(a.shape, bt.VOCAB) if o != bt.VOCAB)
    params = n_body + bt.VOCAB * 2048 + (2 * 24 + 1) * 2048  # + tied embedding, RMSNorm weights
    assert abs(params / 1.711e9 - 1) < 0.01, params  # SmolLM2-1.7B: 1.71B parameters
    flops, tokens = bt.step_flops(a)
    assert tokens > 0 and 6 * n_body * tokens < flops < 1.5 * 6 * n_body * tokens
