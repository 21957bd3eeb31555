"""`distill report RUN_DIR`: a PNG of the training curves and a short text summary.

Reads RUN_DIR/metrics.jsonl (and eval records, `"eval_loss"`, when present); writes
RUN_DIR/report.png.
"""

from __future__ import annotations

from pathlib import Path

from distill.core.jsonl import log_values


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: this run has not trained a step yet. "
            "Fix: pass a run directory that `distill run` or `distill train` wrote"
        )
    rows.extend(log_values(path))  # a half-written last line after a crash is skipped (distill/core/jsonl.py)
    if not rows:
        raise ValueError(f"{path} holds no metrics yet")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _loss_name(row: dict) -> str:
    """What `loss` is: the mean per trained token of trainer.loss.type's loss (older logs: sft)."""
    name = row.get("loss_type", "sft")
    return {"sft": "sft: mean NLL per trained token", "topk_kl": "topk_kl: mean KL per trained token"}.get(
        name, f"{name}: mean per trained token"
    )


def summary_text(rows: list[dict]) -> str:
    train = [r for r in rows if "loss" in r]
    if not train:
        return "no training step logged yet"
    first, last = train[0], train[-1]
    tok = sum(r.get("tokens", 0) for r in train)
    trained = sum(r.get("trained_tokens", 0) for r in train)
    tps = [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
    pe = [r["packing_efficiency"] for r in train if "packing_efficiency" in r]
    lines = [
        f"steps: {last['step']}  samples: {last.get('samples_seen', '?')}",
        f"loss: {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} (step {last['step']})"
        f"  [{_loss_name(last)}]",
        f"tokens: {tok} ({trained} trained)",
    ]
    if tps:
        lines.append(f"tokens/s: mean {sum(tps) / len(tps):.0f}, last {tps[-1]:.0f}")
    if pe:
        lines.append(f"packing efficiency: mean {sum(pe) / len(pe):.2f}")
    evals = [r for r in rows if r.get("eval_loss") is not None]
    if evals:
        lines.append(
            f"eval loss: {evals[0]['eval_loss']:.4f} -> {evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})"
        )
    return "\n".join(lines)


def write_report(run_dir: Path) -> tuple[Path, str]:
    """Plot loss (and eval loss), tokens/s and lr against step; return (PNG path, summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    from trainer import report_on_policy as rop

    on_policy = rop.is_on_policy(rows)  # an on-policy run (distill/on_policy.py): a second row of panels
    fig, axes = plt.subplots(2 if on_policy else 1, 3, figsize=(15, 8.4 if on_policy else 4.2), constrained_layout=True)
    if on_policy:
        fig.clf()
        grid = fig.subplots(2, 4)
        axes, _ = grid[0][:3], grid[0][3].set_visible(False)
        rop.plot_on_policy(grid[1], rows)
    ax = axes[0]
    ax.plot(*_series(rows, "loss"), marker="o", ms=3, label="train loss")
    if any(r.get("eval_loss") is not None for r in rows):
        ax.plot(*_series(rows, "eval_loss"), marker="s", ms=4, label="eval loss")
    ax.set_title(f"loss ({_loss_name(next((r for r in reversed(rows) if 'loss' in r), {}))})")
    ax.legend()
    axes[1].plot(*_series(rows, "tokens_per_s"), color="tab:green", marker="o", ms=3)
    axes[1].set_title("throughput (tokens/s, incl. context)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(*_series(rows, "lr"), color="tab:orange", marker="o", ms=3)
    axes[2].set_title("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(f"distill training: {run_dir.name}")
    png = run_dir / "report.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png, "\n".join([summary_text(rows), *(rop.summary_lines(rows) if on_policy else [])])
