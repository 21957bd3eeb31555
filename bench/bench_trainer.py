"""Trainer throughput, memory and MFU, against peers measured in the same run.

    python bench/bench_trainer.py                        # SmolLM2-135M shape, 3 steps of 8 samples, seq 512
    python bench/bench_trainer.py --shape 360m --steps 3
    python bench/bench_trainer.py --shape tiny --quick   # seconds: a smoke run (the test suite's)

Model shapes (random weights, SmolLM2's tokenizer and vocabulary 49152, tied embeddings):
  tiny  128 x 2,  2 heads / 1 kv head,  intermediate 384
  135m  576 x 30, 9 heads / 3 kv heads, intermediate 1536 (SmolLM2-135M)
  360m  960 x 32, 15 heads / 5 kv heads, intermediate 2560 (SmolLM2-360M)
  1.7b  2048 x 24, 32 heads / 32 kv heads, intermediate 8192 (SmolLM2-1.7B; a GPU shape)

On a GPU (scripts/gpu_bench.sh): --device cuda [--bf16] runs every contender on the device (with --bf16
all in bf16: ours trainer.dtype = "bfloat16", TRL bf16=True, hf-loop under autocast), the GEMM probe in
the run's dtype, and peak memory as torch.cuda.max_memory_allocated (bench/bench_device.py).

Part 1 - the same `samples_per_step` samples per step (real tokenizer, varied lengths), the same model:
  ours      trainer.train.train_step: best-fit-decreasing packing, chunked loss (and --bf16: autocast)
  trl       TRL SFTTrainer at its best CPU settings: packing_strategy="bfd" + padding_free,
            completion_only_loss, loss_type="nll" (Liger kernels only on CUDA: they need Triton)
  hf-loop   a plain transformers loop: padded batch, model(labels=...) full logits, torch AdamW
tokens/s counts real tokens (context included) after the first (warm-up) step. Peak memory: each
contender runs in its own subprocess whose RSS this driver samples every 5 ms (psutil); printed as
the peak and as the peak above the worker's RSS when training starts (model loaded).

The machine's limit: bare matmul FLOP/s at the model's GEMM shapes (forward, input- and weight-gradient),
measured alone before and after the contenders, and by each contender right before and after its own
steps (its GEMM probe: the machine under the load of that moment). MFU = useful training FLOP/s / the
contender's probe (so MFU ratios are load-adjusted speed ratios), where useful FLOPs per
step = 6 * N_body * tokens + 6 * vocab * hidden * trained tokens + 6 * layers * hidden * sum(len^2)
(causal attention inside each sample); the same count for every contender.

Part 2 - the loss head alone, forward + backward on `loss_tokens` trained positions at this shape's
hidden size: the chunked NLL vs full fp32 logits (naive_nll), time and peak memory, and a chunk-size sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_device import measures  # noqa: E402

SHAPES = {
    "tiny": {"hidden": 128, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 384},
    "135m": {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "intermediate": 1536},
    "360m": {"hidden": 960, "layers": 32, "heads": 15, "kv_heads": 5, "intermediate": 2560},
    "1.7b": {"hidden": 2048, "layers": 24, "heads": 32, "kv_heads": 32, "intermediate": 8192},
}
VOCAB = 49152  # SmolLM2's


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    p.add_argument("--quick", action="store_true", help="2 steps of 4 samples, 1 rep: a smoke run")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--samples-per-step", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument(
        "--micro-batch-rows",
        type=int,
        default=0,
        help="rows per forward (ours: packed rows, trl: packed rows with gradient accumulation, hf-loop: "
        "samples); 0: all of a step's rows in one forward",
    )
    p.add_argument("--chunk-size", type=int, default=0, help="our loss's chunk_size (0: the trainer's default)")
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="CPU: also run ours with trainer.dtype = bfloat16 (autocast); CUDA: every contender in bf16",
    )
    p.add_argument("--gemm-tokens", type=int, default=0, help="rows of the bare GEMMs (0: 2 x seq_len)")
    p.add_argument("--gemm-reps", type=int, default=3)
    p.add_argument("--loss-tokens", type=int, default=2048)
    p.add_argument("--loss-chunk", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--loss-reps", type=int, default=3)
    p.add_argument("--sweep", default="256,512,1024,2048", help="chunk sizes timed in part 2")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="see bench/bench_device.py")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every worker (0: torch's default, one per core). Default 1: on a CPU shared with "
        "other jobs, a second OpenMP thread mostly waits at barriers for a descheduled peer (measured 2.4x slower)",
    )
    p.add_argument("--only", default="", help="comma-separated subset of: ours,trl,hf-loop,gemm,loss")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.samples_per_step, a.gemm_reps, a.loss_reps, a.loss_tokens = 2, 4, 1, 1, 256
        a.sweep = "128,256"
    a.gemm_tokens = a.gemm_tokens or 2 * a.seq_len
    return a


def _forward_argv(a) -> list[str]:
    keys = ("shape", "steps", "samples_per_step", "seq_len", "micro_batch_rows", "chunk_size", "gemm_tokens")
    keys += ("gemm_reps",)
    keys += ("loss_tokens", "loss_reps", "sweep", "device", "threads")
    return [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in keys]


def run_worker(name: str, argv: list[str]) -> dict | None:
    """Run one worker in its own process; its result plus `peak_rss` sampled from here."""
    import psutil

    env = dict(os.environ)
    threads = next((x.split("=")[1] for x in argv if x.startswith("--threads=")), "0")
    if threads != "0":  # before torch loads: OpenMP's and MKL's own pools too
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", name, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak, done = [0], threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    lines = [x for x in out.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = err.strip().splitlines()[-3:]
        print(f"  {name} {' '.join(argv[-2:])}: failed (exit {proc.returncode}): {tail}", file=sys.stderr)
        return None
    r = json.loads(lines[-1])
    r["peak_rss"] = peak[0]
    # the run's memory measure (bench_device.measures): CUDA workers report their allocator's peak
    cuda = "cuda_peak" in r
    r["peak_mem"], r["base_mem"] = (r["cuda_peak"], r["cuda_base"]) if cuda else (r["peak_rss"], r["base_rss"])
    r["peak_above_base"] = r["peak_mem"] - r["base_mem"]
    return r


def step_flops(a) -> tuple[float, int]:
    """(useful training FLOPs of all the bench's samples, their tokens): see the module docstring."""
    from trainer_contenders import linear_shapes, samples, tokenizer

    tok = tokenizer()
    assert len(tok) == VOCAB, len(tok)
    n_body = sum(o * i * m for o, i, m in linear_shapes(a.shape, VOCAB) if o != VOCAB)
    h, layers = a.shape["hidden"], a.shape["layers"]
    flops = tokens = 0
    for s in samples(tok, a.steps * a.samples_per_step, a.seq_len):
        n, k = s.num_tokens, sum(s.completion_mask)
        flops += 6 * n_body * n + 6 * VOCAB * h * k + 6 * layers * h * n * n
        tokens += n
    return float(flops), tokens


def main(argv=None) -> dict:
    a = _args(argv)
    a.shape_name, a.shape = a.shape, SHAPES[a.shape]
    a.vocab = VOCAB
    if a.worker:
        import torch
        from trainer_contenders import WORKERS

        if a.threads:
            torch.set_num_threads(a.threads)

        print(json.dumps(WORKERS[a.worker](a)))
        return {}
    fwd, runs = plan(a)
    only = set(a.only.split(",")) if a.only else {"ours", "trl", "hf-loop", "gemm", "loss"}
    res: dict = {"shape": a.shape_name, **a.shape, "vocab": VOCAB, "seq_len": a.seq_len}
    res.update(steps=a.steps, samples_per_step=a.samples_per_step, threads=a.threads, load_before=os.getloadavg())
    res.update(device=a.device, micro_batch_rows=a.micro_batch_rows, **measures(a.device, a.bf16))
    print(_header(a))
    res["flops"], res["tokens"] = step_flops(a)  # first: in the JSON of a run stopped at a time limit too
    if "gemm" in only:
        res["gemm_before"] = run_worker("gemm", fwd)
    for label, worker, extra in runs:
        if worker in only:
            res[label] = run_worker(worker, fwd + extra)
            _save(res, a)  # each contender as it finishes: a run stopped at a time limit keeps them
    if "gemm" in only:
        res["gemm_after"] = run_worker("gemm", fwd)
    if "loss" in only:
        res["loss_full"] = run_worker("loss", fwd + ["--loss-chunk=0"])
        res["chunk_size"] = a.chunk_size or _default_chunk(a)
        res["loss_chunked"] = run_worker("loss", fwd + [f"--loss-chunk={res['chunk_size']}"])
        res["loss_sweep"] = run_worker("loss-sweep", fwd)
    res["load_after"] = os.getloadavg()
    from bench_trainer_report import report

    report(res, a)
    _save(res, a)
    return res


def _save(res: dict, a) -> None:
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


def plan(a) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """Every worker's argv, and the contenders' runs (label, worker, extra argv). CPU: all in fp32, --bf16
    adds ours in bf16 as an extra row; CUDA: every worker (the standalone GEMM too) in the run's dtype."""
    fwd = _forward_argv(a)
    fwd[0] = f"--shape={a.shape_name}"
    if a.device == "cuda":
        fwd.append(f"--dtype={measures(a.device, a.bf16)['dtype']}")
    extra_bf16 = a.bf16 and a.device == "cpu"
    runs = [("ours", "ours", [])] + ([("ours-bf16", "ours", ["--dtype=bfloat16"])] if extra_bf16 else [])
    return fwd, runs + [("trl", "trl", []), ("hf-loop", "hf-loop", [])]


def _default_chunk(a) -> int:
    from trainer.losses.sft import auto_chunk_size

    return auto_chunk_size(VOCAB)


def _header(a) -> str:
    s = a.shape
    return (
        f"device={a.device}{_on_device(a)} shape={a.shape_name}: hidden {s['hidden']} x {s['layers']} layers, {s['heads']} heads / "
        f"{s['kv_heads']} kv heads, intermediate {s['intermediate']}, vocab {VOCAB}; seq_len {a.seq_len}, "
        f"{a.samples_per_step} samples/step, {a.steps} steps; torch threads {a.threads or _threads()}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def _on_device(a) -> str:
    """CUDA: the GPU's name and the run's dtype (nothing on CPU: its header stays as it was)."""
    if a.device != "cuda":
        return ""
    import torch

    return f" ({torch.cuda.get_device_name()}, torch {torch.__version__}), dtype {measures(a.device, a.bf16)['dtype']};"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
