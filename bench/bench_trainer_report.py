"""Printing bench/bench_trainer.py's results: contenders with ratios and MFU, our step breakdown,
the loss head's chunked vs full logits."""

from __future__ import annotations

MIB = 1 / 2**20


def _gemm(res: dict) -> float | None:
    vals = [r["flops_per_s"] for r in (res.get("gemm_before"), res.get("gemm_after")) if r]
    return sum(vals) / len(vals) if vals else None


def report(res: dict, a) -> None:
    gemm = _gemm(res)
    per_token = res["flops"] / res["tokens"]
    if gemm:
        b, e = res.get("gemm_before"), res.get("gemm_after")
        parts = [f"{r['flops_per_s'] / 1e9:.1f}" for r in (b, e) if r]
        print(f"\nbare GEMM at the model's shapes: {' / '.join(parts)} GFLOP/s (before / after the contenders)")
        res["gemm_flops_per_s"] = gemm
    print(f"useful training FLOPs per token: {per_token / 1e9:.3f} GFLOP")
    ours = res.get("ours")
    print("\nper optimizer step (same samples, same model):")
    for n in ("ours", "ours-bf16", "trl", "hf-loop"):
        r = res.get(n)
        if not r:
            continue
        r["mfu"] = per_token * r["tokens_per_s"] / gemm if gemm else None
        line = (
            f"  {n:9s} {r['tokens_per_s']:9.0f} tokens/s   peak RSS {r['peak_rss'] * MIB:7.0f} MiB "
            f"(+{r['peak_above_base'] * MIB:6.0f} above the loaded model)"
        )
        if r["mfu"] is not None:
            line += f"   MFU {r['mfu']:.2f}"
        if ours and n != "ours":
            r["ours_speed_ratio"] = ours["tokens_per_s"] / r["tokens_per_s"]
            r["ours_memory_ratio"] = ours["peak_above_base"] / max(r["peak_above_base"], 1)
            line += (
                f"   ours/{n}: speed x{r['ours_speed_ratio']:.2f}, memory (above model) x{r['ours_memory_ratio']:.2f}"
            )
        print(line)
    if ours:
        _breakdown(ours)
    _loss(res)
    print(f"\nload average before {_load(res['load_before'])}, after {_load(res['load_after'])}")


def _load(x) -> str:
    return " ".join(f"{v:.2f}" for v in x)


def _breakdown(ours: dict) -> None:
    steps = ours["breakdown"][1:] or ours["breakdown"]
    total = sum(ours["step_s"][1:] or ours["step_s"])
    sums = {k: sum(s[k] for s in steps) for k in steps[0]}
    sums["other"] = total - sum(sums.values())
    ours["breakdown_share"] = {k: v / total for k, v in sums.items()}
    cells = "  ".join(f"{k} {v / len(steps):.2f}s ({100 * v / total:.0f}%)" for k, v in sums.items() if k != "wait")
    print(f"\nours, per step (after the first): {cells}")
    print(f"  packing efficiency {ours['packing_efficiency']:.2f}")


def _loss(res: dict) -> None:
    c, f, sw = res.get("loss_chunked"), res.get("loss_full"), res.get("loss_sweep")
    if not (c and f):
        return
    print(f"\nloss head alone, {res['shape']} (hidden {res['hidden']}, vocab {res['vocab']}), forward + backward:")
    print(f"  full fp32 logits      {f['seconds']:.3f} s   peak +{f['peak_above_base'] * MIB:6.0f} MiB")
    print(f"  chunked (default)     {c['seconds']:.3f} s   peak +{c['peak_above_base'] * MIB:6.0f} MiB")
    res["loss_time_ratio"] = c["seconds"] / f["seconds"]
    res["loss_memory_ratio"] = c["peak_above_base"] / max(f["peak_above_base"], 1)
    print(f"  chunked/full: time x{res['loss_time_ratio']:.2f}, memory x{res['loss_memory_ratio']:.2f}")
    if sw:
        print("  chunk sweep: " + "  ".join(f"{k}: {v:.3f}s" for k, v in sw["seconds"].items()))
