"""`distill report RUN_DIR` for an on-policy run (metrics rows with `reverse_kl`; distill/on_policy.py): a row
of panels beside the training curves: reverse KL (train estimate and held-out eval), teacher / student logprob
means, where each step's time went (generating, scoring, training, idle), sample lengths and rewards; and the
on-policy lines of the text summary."""

from __future__ import annotations

from trainer.report import _series

TIMES = ("time_generate_s", "time_score_s", "time_train_s", "time_idle_s")
#: Held-out statistics drawn in the on-policy row, not among the training panel's eval curves.
OWN_EVAL_KEYS = ("eval_teacher_logprob_mean", "eval_student_logprob_mean", "eval_sample_len_mean", "eval_reward_mean")


def is_on_policy(rows: list[dict]) -> bool:
    return any("reverse_kl" in r or "eval_reverse_kl" in r for r in rows)


def _first_last(rows: list[dict], key: str) -> tuple[dict, dict] | None:
    have = [r for r in rows if r.get(key) is not None]
    return (have[0], have[-1]) if have else None


def summary_lines(rows: list[dict]) -> list[str]:
    """The on-policy lines of the text summary."""
    lines = []
    for key, name in (("reverse_kl", "reverse KL (train samples)"), ("eval_reverse_kl", "held-out reverse KL")):
        fl = _first_last(rows, key)
        if fl:
            a, b = fl
            lines.append(f"{name}: {a[key]:.4f} (step {a['step']}) -> {b[key]:.4f} (step {b['step']})")
    steps = [r for r in rows if "time_train_s" in r]
    if steps:
        tot = {k: sum(r.get(k) or 0.0 for r in steps) for k in TIMES}
        lines.append("time: " + ", ".join(f"{k[5:-2]} {v:.1f}s" for k, v in tot.items()))
        lag = max(r.get("policy_lag_max", 0) for r in steps)
        lines.append(f"most steps between the sampling and the trained weights: {lag}")
    fl = _first_last(rows, "reward_mean")
    if fl:
        lines.append(f"reward mean: {fl[0]['reward_mean']:.3f} -> {fl[1]['reward_mean']:.3f}")
    return lines


def plot_on_policy(axes, rows: list[dict]) -> None:
    """One row of four panels: reverse KL (train estimate, held-out), the logprob means, the time per step
    split four ways, sample lengths (with the reward mean on a second axis when there is one)."""
    from matplotlib.ticker import MaxNLocator

    ax = axes[0]
    ax.plot(*_series(rows, "reverse_kl"), marker="o", ms=3, label="train samples (sampling policy)")
    ax.plot(*_series(rows, "eval_reverse_kl"), marker="s", ms=4, label="held-out prompts")
    ax.set_title("reverse KL estimate: mean log pS - log pT per token")
    ax.legend()
    ax = axes[1]
    ax.plot(*_series(rows, "teacher_logprob_mean"), marker="o", ms=3, label="teacher")
    ax.plot(*_series(rows, "student_logprob_mean"), marker="o", ms=3, label="student (sampling)")
    ax.plot(*_series(rows, "eval_teacher_logprob_mean"), "s--", ms=4, label="teacher, held-out")
    ax.plot(*_series(rows, "eval_student_logprob_mean"), "s--", ms=4, label="student, held-out")
    ax.set_title("mean logprob of the sampled tokens")
    ax.legend()
    ax = axes[2]
    steps = [r for r in rows if "time_train_s" in r]
    bottom = [0.0] * len(steps)
    for key in TIMES:
        vals = [r.get(key) or 0.0 for r in steps]
        ax.bar([r["step"] for r in steps], vals, bottom=bottom, label=key[5:-2])
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_title("time per step (s)")
    ax.legend()
    ax = axes[3]
    ax.plot(*_series(rows, "sample_len_mean"), marker="o", ms=3, label="mean length")
    ax.plot(*_series(rows, "sample_len_max"), marker="o", ms=3, label="max length")
    ax.set_title("sample length (tokens)" + (" and reward" if any("reward_mean" in r for r in rows) else ""))
    ax.legend(loc="upper left")
    if any("reward_mean" in r for r in rows):
        twin = ax.twinx()
        twin.plot(*_series(rows, "reward_mean"), color="tab:purple", marker="^", ms=3, label="reward mean")
        twin.plot(*_series(rows, "eval_reward_mean"), "s--", color="tab:pink", ms=4, label="reward, held-out")
        twin.legend(loc="upper right")
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("step")
        a.grid(alpha=0.3)
