"""Printing bench/bench_trainer.py's results: contenders with ratios and MFU, our step breakdown,
the loss head's chunked vs full logits, and the markdown table docs/training.md quotes."""

from __future__ import annotations

MIB = 1 / 2**20
CONTENDERS = ("ours", "ours-bf16", "trl", "hf-loop")


def _measures(res: dict) -> tuple[str, str, str]:
    """(anchor GEMM dtype, memory measure's short name, its description) of this run (bench_device.measures)."""
    from bench_device import MEMORY_LABELS, measures

    m = {**measures("cpu", False), **{k: res[k] for k in ("anchor_dtype", "memory") if k in res}}
    return m["anchor_dtype"], ("peak RSS" if m["memory"] == "RSS" else "peak GPU mem"), MEMORY_LABELS[m["memory"]]


def report(res: dict, a) -> None:
    per_token = res["flops"] / res["tokens"]
    anchor, mem, mem_label = _measures(res)
    b, e = res.get("gemm_before"), res.get("gemm_after")
    if b or e:
        parts = [f"{r['flops_per_s'] / 1e9:.1f}" for r in (b, e) if r]
        print(f"\nbare GEMM at the model's shapes: {' / '.join(parts)} GFLOP/s (before / after the contenders)")
    print(f"MFU anchor: the bare {anchor} GEMM; memory: {mem_label}")
    print(f"useful training FLOPs per token: {per_token / 1e9:.3f} GFLOP")
    ours = res.get("ours")
    print("\nper optimizer step (same samples, same model):")
    for n in CONTENDERS:
        r = res.get(n)
        if not r:
            continue
        # MFU against the GEMM probe this contender took right before and after its steps (same load)
        r["mfu"] = per_token * r["tokens_per_s"] / r["gemm_probe"]
        print(
            f"  {n:9s} {r['tokens_per_s']:7.1f} tokens/s  MFU {r['mfu']:.2f} (GEMM probe {r['gemm_probe'] / 1e9:5.1f} "
            f"GFLOP/s)  {mem} {r['peak_mem'] * MIB:6.0f} MiB (+{r['peak_above_base'] * MIB:5.0f} above the loaded model)"
        )
        if ours and n != "ours":
            r["ours_speed_ratio"] = ours["tokens_per_s"] / r["tokens_per_s"]
            r["ours_mfu_ratio"] = ours["mfu"] / r["mfu"]
            r["ours_memory_ratio"] = ours["peak_above_base"] / max(r["peak_above_base"], 1)
            print(
                f"            ours/{n}: speed x{r['ours_speed_ratio']:.2f} (load-adjusted, MFU ratio: "
                f"x{r['ours_mfu_ratio']:.2f}), memory above model x{r['ours_memory_ratio']:.2f}"
            )
    if ours:
        _breakdown(ours)
    _loss(res)
    print(f"\nload average before {_load(res['load_before'])}, after {_load(res['load_after'])}")
    print("\n" + markdown(res))


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
    print(f"  chunked ({res['chunk_size']} rows)    {c['seconds']:.3f} s   peak +{c['peak_above_base'] * MIB:6.0f} MiB")
    res["loss_memory_ratio"] = c["peak_above_base"] / max(f["peak_above_base"], 1)
    res["loss_time_ratio"] = c["seconds"] / f["seconds"]
    if sw and str(res["chunk_size"]) in sw["seconds"]:  # interleaved in one process: robust to load
        res["loss_time_ratio"] = sw["seconds"][str(res["chunk_size"])] / sw["seconds"]["0"]
    print(f"  chunked/full: time x{res['loss_time_ratio']:.2f}, memory x{res['loss_memory_ratio']:.2f}")
    if sw:
        cells = "  ".join(f"{k}: {v:.3f}s" for k, v in sw["seconds"].items())
        print(f"  interleaved sweep (rows per chunk; 0 = full logits): {cells}")


def markdown(res: dict) -> str:
    """The shape's table for docs/training.md."""
    measure = _measures(res)[1]
    rows = [
        "| contender | tokens/s | MFU (GEMM probe GFLOP/s) | ours vs it: speed (MFU ratio) "
        f"| {measure} (above loaded model) | ours vs it: memory above model |",
        "|---|---|---|---|---|---|",
    ]
    for n in CONTENDERS:
        r = res.get(n)
        if not r:
            continue
        speed = f"x{r['ours_speed_ratio']:.2f} (x{r['ours_mfu_ratio']:.2f})" if "ours_speed_ratio" in r else ""
        mem = f"x{r['ours_memory_ratio']:.2f}" if "ours_memory_ratio" in r else ""
        mfu = f"{r['mfu']:.2f} ({r['gemm_probe'] / 1e9:.0f})"
        rss = f"{r['peak_mem'] * MIB:.0f} MiB (+{r['peak_above_base'] * MIB:.0f})"
        rows.append(f"| {n} | {r['tokens_per_s']:.1f} | {mfu} | {speed} | {rss} | {mem} |")
    return "\n".join(rows)
