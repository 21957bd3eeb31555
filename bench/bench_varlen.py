"""Padding-free (varlen) attention vs the dense block-mask path, in one process, interleaved.

    python bench/bench_varlen.py [--shape 135m] [--rounds 3] [--samples-per-step 8] [--threads 1]

Runs our `train_step` on the same model (bench_trainer.py's random Llama of the shape) and the same
samples (its generator), round by round, each round every variant once in rotating order, each with a
GEMM probe around it (the machine at that moment):

    dense/all-rows    the old sdpa path: the step's rows in one [B, T] micro-batch padded to its longest
                      row, a dense [B, 1, T, T] block-causal mask (`LossModel.varlen = False`)
    varlen/all-rows   the same micro-batch as one padding-free row, causal SDPA per sample
    varlen/1-row      micro_batch_rows = 1 (the config default): one packed row per micro-batch
    dense/1-row       micro_batch_rows = 1 on the old path (no padding; a [1, 1, T, T] mask)

Round 1 is warm-up (not counted). Each step's GEMM probe is the mean of one before and one after
it; the summary gives each variant's MFU ratio to the first variant's within each round (paired).
MFU as in bench_trainer.py: useful FLOPs (6 N_body tokens + 6 vocab hidden trained + 6 layers hidden
sum(len^2)) per second over the probe's bare-GEMM FLOP/s. Run one variant per process (`--only`) for
its peak RSS (printed at the end).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

VARIANTS = {"dense/all-rows": (False, 0), "varlen/all-rows": (True, 0), "varlen/1-row": (True, 1)}
VARIANTS["dense/1-row"] = (False, 1)


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="135m")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples-per-step", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    return p.parse_args(argv)


def useful_flops(samples, shape: dict, vocab: int) -> float:
    from trainer_contenders import linear_shapes

    n_body = sum(o * i * m for o, i, m in linear_shapes(shape, vocab) if o != vocab)
    h, layers = shape["hidden"], shape["layers"]
    return float(
        sum(
            6 * n_body * s.num_tokens + 6 * vocab * h * sum(s.completion_mask) + 6 * layers * h * s.num_tokens**2
            for s in samples
        )
    )


def _summary(res: dict, names: list[str]) -> None:
    ref = res[names[0]]
    for n, x in res.items():
        mfu = sum(x["mfu"]) / len(x["mfu"])
        ratios = sorted(m / r for m, r in zip(x["mfu"], ref["mfu"]))
        print(
            f"{n:17s} {x['tokens'] / x['s']:7.1f} tokens/s  MFU {mfu:.3f}  packing efficiency {x['eff'][0]:.2f}"
            f"  MFU vs {names[0]}, per round: median x{ratios[len(ratios) // 2]:.2f} (min {ratios[0]:.2f}, "
            f"max {ratios[-1]:.2f})"
        )


def main(argv=None) -> dict:
    a = _args(argv)
    if a.threads:
        os.environ.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    import psutil
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from bench_trainer import SHAPES, VOCAB
    from distill.core.config import Trainer
    from trainer.dist import DistContext
    from trainer.train import build_model, build_optimizer, train_step
    from trainer_contenders import gemm_probe, model_dir, samples, tokenizer

    shape, tok = SHAPES[a.shape], tokenizer()
    names = [n for n in VARIANTS if not a.only or n in a.only.split(",")]
    if not names:
        raise SystemExit(f"--only {a.only!r} names none of {', '.join(VARIANTS)}")
    data = samples(tok, a.rounds * a.samples_per_step, a.seq_len)
    probe_args = argparse.Namespace(shape=shape, vocab=VOCAB, gemm_tokens=2 * a.seq_len, gemm_reps=1, chunk_size=0)
    probe_args.dtype = "float32"
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    optim = {"schedule": "constant", "betas": [0.9, 0.95], "lr": 1e-4}
    trainers = {
        rows: Trainer(samples_per_step=a.samples_per_step, seq_len=a.seq_len, micro_batch_rows=rows, optim=optim)
        for rows in (1, a.samples_per_step)
    }
    model = build_model(model_dir(tok, shape), trainers[1], ctx)
    opt, sched = build_optimizer(model, trainers[1])
    base = psutil.Process().memory_info().rss
    res = {n: {"s": 0.0, "tokens": 0, "mfu": [], "eff": []} for n in names}
    print(f"load average before: {os.getloadavg()}", flush=True)
    for r in range(a.rounds):
        batch = data[r * a.samples_per_step : (r + 1) * a.samples_per_step]
        flops = useful_flops(batch, shape, VOCAB)
        for n in names[r % len(names) :] + names[: r % len(names)]:
            model.varlen, rows = VARIANTS[n]
            before = gemm_probe(probe_args)
            start = time.perf_counter()
            m = train_step(model, opt, sched, batch, trainers[rows or a.samples_per_step], ctx, tok.pad_token_id or 0)
            secs = time.perf_counter() - start
            probe = (before + gemm_probe(probe_args)) / 2
            mfu = flops / secs / probe
            print(
                f"round {r} {n:17s} {m['tokens'] / secs:7.1f} tokens/s  MFU {mfu:.3f} (GEMM {probe / 1e9:.0f} GFLOP/s)"
                f"  packing efficiency {m['packing_efficiency']:.2f}",
                flush=True,
            )
            if r > 0 or a.rounds == 1:
                x = res[n]
                x["s"], x["tokens"] = x["s"] + secs, x["tokens"] + m["tokens"]
                x["mfu"].append(mfu)
                x["eff"].append(m["packing_efficiency"])
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load average after: {os.getloadavg()}; peak RSS {peak:.0f} MiB (loaded model {base / 2**20:.0f} MiB)")
    _summary(res, names)
    return res


if __name__ == "__main__":
    main()
