"""`distill report RUN_DIR`: a PNG of the training curves and the teacher panel, a self-contained HTML page
and a short text summary.

Reads RUN_DIR/metrics.jsonl (eval curves, `"eval_loss"`, when present) and, for the teacher panel,
RUN_DIR/orchestrator_metrics.jsonl and rejects.jsonl (trainer/report_teacher.py); writes RUN_DIR/report.png
and RUN_DIR/report.html (trainer/report_html.py: the PNG embedded as base64 and summary tables).
"""

from __future__ import annotations

from pathlib import Path

import json
import math

from distill.core.jsonl import json_type, read_jsonl


class NoMetrics(ValueError):
    """A metrics.jsonl without one readable training step (a user error: the message names the file and the fix)."""


#: Fields the report reads as numbers (and every eval_* / time_* one); a value that is not one is skipped.
_NUMERIC = {
    "loss", "tokens", "trained_tokens", "tokens_per_s", "packing_efficiency", "lr", "grad_norm", "samples_seen",
    "reverse_kl", "reward_mean", "policy_lag_max", "sample_len_max", "sample_len_mean", "student_logprob_mean",
    "teacher_logprob_mean",
}  # fmt: skip


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clean_row(value: object, number: int, fields: list[str]) -> tuple[dict | None, str]:
    """The row of line `number` with its unusable numeric fields dropped (each noted in `fields`), or
    (None, why the whole line is skipped)."""
    if not isinstance(value, dict):
        return None, f"line {number}: a JSON {json_type(value)}, not an object"
    step = value.get("step")
    if not _is_number(step) or not math.isfinite(step) or step != int(step):
        return None, f"line {number}: step is {step!r}, not a step number"
    row = {}
    for k, v in value.items():
        if (k in _NUMERIC or k.startswith(("eval_", "time_"))) and not _is_number(v):
            fields.append(f"line {number}: {k} = {json.dumps(v)[:40]}")
            continue
        row[k] = v
    return {**row, "step": int(step)}, ""


def read_metrics_checked(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of metrics.jsonl and the summary lines saying what of it was skipped (none: [])."""
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{path.parent} is not a folder. Fix: pass a run directory that `distill run` or `distill train` wrote"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: this run has not trained a step yet. "
            "Fix: pass a run directory that `distill run` or `distill train` wrote"
        )
    rows, lines, fields = [], [], []
    for ln in read_jsonl(path):
        if ln.blank:
            continue
        row, why = _clean_row(ln.value, ln.number, fields) if ln.ok else (None, f"line {ln.number}: {ln.problem}")
        if row is None:
            lines.append(why)
        else:
            rows.append(row)
    notes = [f"{len(lines)} line(s) of {path.name} skipped (first: {lines[0]})"] if lines else []
    if fields:
        notes.append(f"{len(fields)} value(s) of {path.name} skipped, not numbers (first: {fields[0]})")
    if not rows:
        seen = f" ({notes[0]})" if notes else ""
        raise NoMetrics(
            f"{path} holds no metrics{seen}: this run has not logged a training step yet. Fix: pass the "
            "output_dir of a run that trained a step (or, for a damaged file, restore it)"
        )
    return rows, notes


def read_metrics(path: Path) -> list[dict]:
    return read_metrics_checked(path)[0]


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
    odd = [r for r in train if not math.isfinite(r["loss"])]
    if odd:
        lines.append(
            f"WARNING: loss is NaN or infinite at {len(odd)} step(s) (first: step {odd[0]['step']}): the run "
            "diverged there. Fix: lower trainer.optim.lr, or check the samples of that step"
        )
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


def eval_keys(rows: list[dict]) -> list[str]:
    """The eval curves logged (eval_loss and any other eval_* number), in first-seen order."""
    from trainer.report_on_policy import OWN_EVAL_KEYS  # drawn in the on-policy row instead

    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("eval_") and isinstance(v, (int, float)) and k not in OWN_EVAL_KEYS:
                keys[k] = None
    return list(keys)


def _plot_training(axes, rows: list[dict]) -> None:
    """Loss (with the eval curves), tokens/s and lr against step."""
    ax = axes[0]
    ax.plot(*_series(rows, "loss"), marker="o", ms=3, label="train loss")
    for k in eval_keys(rows):
        ax.plot(*_series(rows, k), marker="s", ms=4, label=k.replace("_", " "))
    ax.set_title(f"loss ({_loss_name(next((r for r in reversed(rows) if 'loss' in r), {}))})")
    ax.legend()
    axes[1].plot(*_series(rows, "tokens_per_s"), color="tab:green", marker="o", ms=3)
    axes[1].set_title("throughput (tokens/s, incl. context)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(*_series(rows, "lr"), color="tab:orange", marker="o", ms=3)
    axes[2].set_title("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    from matplotlib.ticker import MaxNLocator

    keys = eval_keys(rows)
    for k in keys:  # the eval curves on their own scale (grad norm when there is no eval)
        axes[3].plot(*_series(rows, k), marker="s", ms=4, label=k.replace("_", " "))
    if keys:
        axes[3].set_title("eval")
        axes[3].legend()
    else:
        axes[3].plot(*_series(rows, "grad_norm"), color="tab:gray", marker="o", ms=3)
        axes[3].set_title("gradient norm (before clipping)")
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("step")
        a.grid(alpha=0.3)


def _training_rows(path: Path, teacher_side: bool) -> tuple[list[dict], list[str]]:
    """read_metrics_checked, or nothing for a run with only the teacher side (no step logged yet)."""
    try:
        return read_metrics_checked(path)
    except (FileNotFoundError, NoMetrics):
        if teacher_side:
            return [], []
        raise


def write_report(run_dir: Path) -> tuple[Path, str]:
    """RUN_DIR/report.png (training curves with the eval curves; the teacher panel when the orchestrator
    wrote its metrics there) and RUN_DIR/report.html (the PNG embedded, summary tables); (PNG path, summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.report_html import write_html
    from trainer.report_teacher import read_teacher, teacher_rows

    run_dir = Path(run_dir)
    teacher = read_teacher(run_dir)
    rows, notes = _training_rows(run_dir / "metrics.jsonl", teacher_side=teacher is not None)
    from trainer import report_on_policy as rop

    on_policy = bool(rows) and rop.is_on_policy(rows)  # an on-policy run (distill/on_policy.py): its own row
    panels = [p for p, present in (("training", rows), ("on_policy", on_policy), ("teacher", teacher)) if present]
    fig, grid = plt.subplots(len(panels), 4, figsize=(20, 4.4 * len(panels)), constrained_layout=True, squeeze=False)
    for axes, panel in zip(grid, panels):
        if panel == "training":
            _plot_training(axes, rows)
        elif panel == "on_policy":
            rop.plot_on_policy(axes, rows)
        else:
            from trainer.report_teacher import plot_teacher

            plot_teacher(axes, teacher)
    fig.suptitle(f"distill: {run_dir.name}")
    png = run_dir / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    text = summary_text(rows) if rows else "no training step logged (teacher side only)"
    text += "".join(f"\n{note}" for note in notes)
    if on_policy:
        text += "\n" + "\n".join(rop.summary_lines(rows))
    if teacher is not None:
        text += "\nteacher:\n" + "\n".join(f"  {k}: {v}" for k, v in teacher_rows(teacher))
    write_html(run_dir, png, rows, teacher, notes)
    return png, text
