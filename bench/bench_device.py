"""Device specifics of bench/bench_trainer.py: which anchor GEMM and memory measure a device gets, and
their CUDA versions. On CPU every function here does what the bench did before it had a CUDA path
(fp32 anchor, RSS sampled from outside, plain perf_counter timing); on CUDA the kernels run
asynchronously, so each timing synchronises the device, and memory is torch's allocator peak.

These CUDA paths have not been run yet (no GPU lent to the session that wrote them): scripts/gpu_bench.sh."""

from __future__ import annotations

import time


def measures(device: str, bf16: bool) -> dict:
    """What a run on `device` measures: `dtype` (every contender's, and the standalone GEMM's), the
    GEMM probe's `anchor_dtype`, and the `memory` measure. CPU: contenders in fp32 (--bf16 adds ours
    in bf16 as an extra row) against an fp32 GEMM, peak RSS. CUDA: with --bf16 every contender in bf16
    (autocast / bf16=True) against the bare bf16 GEMM (what a GPU user compares to), peak
    torch.cuda.max_memory_allocated."""
    if device == "cuda":
        dtype = "bfloat16" if bf16 else "float32"
        return {"dtype": dtype, "anchor_dtype": dtype, "memory": "max_memory_allocated"}
    return {"dtype": "float32", "anchor_dtype": "float32", "memory": "RSS"}


MEMORY_LABELS = {
    "RSS": "peak RSS, sampled every 5 ms from outside each worker's process (psutil)",
    "max_memory_allocated": "peak torch.cuda.max_memory_allocated of each worker, reset once its model is loaded",
}


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def mark_base(device: str) -> dict:
    """Memory once the worker's model is loaded: its RSS; on CUDA also the allocated bytes, and the
    allocator's peak is reset here, so its peak "above the loaded model" means what it means for RSS."""
    out = {"base_rss": rss()}
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["cuda_base"] = torch.cuda.memory_allocated()
    return out


def peak(device: str) -> dict:
    """The CUDA allocator's peak since `mark_base` (nothing on CPU: the driver samples RSS)."""
    if device != "cuda":
        return {}
    import torch

    torch.cuda.synchronize()
    return {"cuda_peak": torch.cuda.max_memory_allocated()}


def median_time(fn, reps: int, device: str = "cpu") -> float:
    """Median seconds of one call of `fn` after a warm-up call. On CUDA each timed sample is 10 calls
    between two synchronisations (one small GEMM takes microseconds, a sync about as long)."""
    inner = 10 if device == "cuda" else 1
    fn()  # warm-up
    sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        ts.append((time.perf_counter() - t0) / inner)
    return sorted(ts)[len(ts) // 2]
