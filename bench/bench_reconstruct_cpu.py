"""Where build_many's time goes, in CPU time with one tokenizer thread, relative to the floor.

Wall-clock ratios (bench_reconstruct.py) swing with the load other processes put on a
shared machine; CPU time with one thread does not (much). Per family, on the same
corpus as bench_reconstruct.py, it prints the minimum over --reps runs of:

  floor:     encode_batch_fast of the already rendered texts (one thread), and nothing else
  build_many: Reconstructor.build_many over chunks of 128 conversations, process CPU time
             (the pipeline's helper thread included)
  and build_many's stages run one after the other on the whole corpus, process CPU time (the tokenizer thread included):
  plan       messages checks, renders, locating turns, segment texts (pipeline._prepare_chunk)
  encode     segment tokenisation and the Python around it (pipeline._encode)
  complete   self-check, masks, Sample assembly (pipeline._complete)
  peers      bench_reconstruct.py's per-example and batched apply_chat_template, CPU time
             over build_many's (with one thread: no core the peer leaves idle counts)
  2 processes: build_many's chunks split between one worker process and this one
             (orchestrator/build_pool.py), CPU time of both over build_many's: the cost of
             the split (pickling conversations and samples). Measured in the first run only
             (the worker's caches cannot be cleared between runs).

Usage: python bench/bench_reconstruct_cpu.py [--conversations 400] [--families smollm2,llama3_1]
       [--corpus mixed|shared-system]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One tokenizer thread, and it is rayon's worker: with TOKENIZERS_PARALLELISM=false instead,
# each encode call runs on the thread that makes it, and on this process's main thread the
# tokenizer's allocations made the same work 1.7-2.4x dearer than on any other thread
# (docs/reconstruction.md, "The tokenizer on the main thread"): the floor, timed there,
# looked dear, and build_many, which encodes in a helper thread, cheap.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "true"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_reconstruct as B  # noqa: E402 - after the environment that fixes one thread

from distill.core.conversation import Conversation, build_args  # noqa: E402


def fresh(recon) -> None:
    """Forget what an earlier run cached, so every run does the same work."""
    B.forget(recon)
    recon._verified_prompts.clear()


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def two_processes(fam, convs, seed: int) -> float:
    """CPU seconds of this process and one worker building `convs` in chunks of 128, split."""
    from orchestrator.build_pool import ParallelBuilder
    from orchestrator.reconstruct import Reconstructor

    with ParallelBuilder(Reconstructor(fam.tok, fam.recons[1].cfg), 1, 1, 0) as pb:
        pb.start()
        B.run_ours_processes(pb, fam.corpus(20, seed + 12345))  # warm-up on other conversations
        fresh(pb.reconstructor)
        (pid,) = pb.worker_pids()
        t, w = time.process_time(), proc_cpu(pid)
        for b in range(0, len(convs), 128):
            B.run_ours_processes(pb, convs[b : b + 128], b)
        return time.process_time() - t + proc_cpu(pid) - w


def one_rep(recon, tok, convs, units, args) -> dict[str, float]:
    """CPU seconds of each method over the corpus, the methods taking turns chunk by chunk
    (128 conversations), so that a slow stretch of the machine falls on all of them alike."""
    sums = dict.fromkeys(("floor", "build_many", "peer", "peer_batched", "plan", "encode", "complete"), 0.0)

    def timed(key: str, f, *a):
        t = time.process_time()
        out = f(*a)
        sums[key] += time.process_time() - t
        return out

    fresh(recon)
    for b in range(0, len(convs), 128):
        flat = [m for u in units[b : b + 128] for m in u]
        texts = [tok.apply_chat_template(m, tokenize=False) for m in flat]
        timed("floor", B.run_floor, tok, texts)
        timed("build_many", B.run_ours_batched, recon, convs[b : b + 128], b)
        timed("peer", B.run_peer, tok, flat)
        timed("peer_batched", B.run_peer_batched, tok, flat)
    fresh(recon)
    for b in range(0, len(args), 128):  # the same chunks, each stage timed on its own
        results: list = []
        pending = timed("plan", recon._prepare_chunk, args[b : b + 128], 0, results)
        ids = timed("encode", recon._encode, [p for _, p in pending])
        timed("complete", recon._complete, pending, ids, results)
    return sums


def measure(name: str, n: int, reps: int, seed: int, kind: str = "mixed", reuse: bool = True) -> dict[str, float]:
    fam = B.Family(name, kind=kind, prefix_reuse=reuse)
    convs = fam.corpus(max(20, n // 5) if fam.split else n, seed)
    recon, tok = fam.recons[1], fam.tok
    units = B.peer_units(convs, fam.split)
    args = [build_args(Conversation(m, sample_id=str(i))) for i, m in enumerate(convs)]
    B.run_ours_batched(recon, convs[:20])  # warm-up: template compile, token table
    best: dict[str, float] = {"processes": two_processes(fam, convs, seed)}
    for _ in range(reps):
        for key, secs in one_rep(recon, tok, convs, units, args).items():
            best[key] = min(best.get(key, float("inf")), secs)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=400)
    p.add_argument("--families", default="smollm2,llama3_1,qwen3,mistral_v0_1")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", choices=sorted(B.CORPORA), default="mixed", help="as bench_reconstruct.py's")
    p.add_argument("--no-prefix-reuse", action="store_true", help="as bench_reconstruct.py's")
    a = p.parse_args(argv)
    print(
        f"CPU time relative to the floor's (min of {a.reps} runs, one tokenizer thread, {a.corpus} corpus, "
        f"prefix reuse {'off' if a.no_prefix_reuse else 'on'}, "
        f"load {os.getloadavg()})"
    )
    for name in a.families.split(","):
        r = measure(name, a.conversations, a.reps, a.seed, a.corpus, not a.no_prefix_reuse)
        f = r["floor"]
        stages = "  ".join(f"{k} {r[k] / f:.3f}" for k in ("plan", "encode", "complete"))
        print(
            f"CPU {name}: floor {f:.3f} s; build_many {r['build_many'] / f:.3f} of the floor's CPU "
            f"(speed {f / r['build_many']:.2f} of the floor's); stages: {stages}; "
            f"peers' CPU / build_many's: per example {r['peer'] / r['build_many']:.2f}x, "
            f"batched {r['peer_batched'] / r['build_many']:.2f}x; "
            f"2 processes' CPU / build_many's: {r['processes'] / r['build_many']:.2f}"
        )


if __name__ == "__main__":
    main()
