"""LoRA vs full fine-tuning in our trainer: peak memory and tokens/s, measured in the same run.

    python bench/bench_lora.py                       # small random Llama, CPU ok (about a minute)
    python bench/bench_lora.py --hidden 512 --layers 8 --samples-per-step 4 --seq-len 256 --steps 3

Both contenders run trainer.train.train_step on the same samples (real SmolLM2 tokenizer) and the
same random Llama with SmolLM2's vocabulary, each in its own subprocess:
  full   every weight trains (AdamW state for all of them)
  lora   [trainer.lora] defaults (r=16 on every attention/MLP projection); the student frozen
Reported: tokens/s (first step excluded as warm-up), peak memory above the loaded model (CUDA:
max_memory_allocated; CPU: sampled RSS), trainable parameters, and lora/full ratios.
The samples and model are bench/trainer_contenders.py's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainer_contenders import model_dir, samples as _samples, tokenizer as _tokenizer  # noqa: E402


def _model_dir(tok, hidden: int, layers: int) -> Path:
    """The random Llama of bench/trainer_contenders.py at this width (heads of 64 dims, kv heads of 128)."""
    shape = {"hidden": hidden, "layers": layers, "heads": max(1, hidden // 64), "kv_heads": max(1, hidden // 128)}
    return model_dir(tok, {**shape, "intermediate": hidden * 3})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory above the level at start(): CUDA allocator stats, or RSS sampled by a thread on CPU."""

    def __init__(self, device: str):
        self.device = device

    def start(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop_flag = False

        def sample():
            while not self.stop_flag:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        self.stop_flag = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak - self.base


def worker(a) -> dict:
    import torch

    from distill.core.config import Trainer
    from trainer.dist import DistContext
    from trainer.train import build_model, build_optimizer, train_step

    tok = _tokenizer()
    samples = _samples(tok, a.steps * a.samples_per_step, a.seq_len)
    t = Trainer(
        max_steps=a.steps,
        samples_per_step=a.samples_per_step,
        seq_len=a.seq_len,
        micro_batch_rows=a.samples_per_step,
        device=a.device,
        optim={"schedule": "constant"},
        lora={"enabled": a.worker == "lora"},
    )
    ctx = DistContext(0, 1, 0, torch.device(a.device))
    model = build_model(_model_dir(tok, a.hidden, a.layers), t, ctx)
    opt, sched = build_optimizer(model, t)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mem = PeakMemory(a.device).start()  # after loading: optimizer state and gradients are what differs
    times, tokens = [], []
    for s in range(a.steps):
        batch = samples[s * a.samples_per_step : (s + 1) * a.samples_per_step]
        _sync(a.device)
        t0 = time.perf_counter()
        m = train_step(model, opt, sched, batch, t, ctx, tok.pad_token_id or 0)
        _sync(a.device)
        times.append(time.perf_counter() - t0)
        tokens.append(m["tokens"])
    return {
        "tokens_per_s": sum(tokens[1:]) / sum(times[1:]),
        "peak_mem": mem.stop(),
        "trainable": trainable,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--samples-per-step", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k != "worker"]
    print(
        f"device={a.device} model=llama hidden={a.hidden} layers={a.layers} vocab=49152 seq_len={a.seq_len} "
        f"samples/step={a.samples_per_step} steps={a.steps}"
    )
    res = {}
    for name in ("full", "lora"):
        proc = subprocess.run([sys.executable, __file__, "--worker", name, *argv], capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{name}: failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        res[name] = json.loads(lines[-1])
    mib = 1 / 2**20
    for name, r in res.items():
        print(
            f"  {name:5s} {r['tokens_per_s']:9.0f} tokens/s   peak +{r['peak_mem'] * mib:8.1f} MiB   "
            f"trainable {r['trainable']:,} of {r['params']:,}"
        )
    full, lora = res["full"], res["lora"]
    print(
        f"  lora/full: speed x{lora['tokens_per_s'] / full['tokens_per_s']:.2f}, "
        f"memory x{lora['peak_mem'] / max(full['peak_mem'], 1):.2f}"
    )


if __name__ == "__main__":
    main()
