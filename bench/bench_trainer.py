"""Trainer throughput and memory, against peers measured in the same run.

    python bench/bench_trainer.py                  # small defaults, CPU ok (a few minutes on 2 cores)
    python bench/bench_trainer.py --steps 8 --samples-per-step 16 --seq-len 1024

Part 1 - one optimizer step = the same `samples_per_step` samples (made with the real
SmolLM2 tokenizer, varied lengths) for every contender, on the same small random
Llama with SmolLM2's vocabulary:
  ours     trainer.train.train_step: best-fit-decreasing packing, chunked loss
  trl      TRL SFTTrainer (padded batches, completion_only_loss), if trl is installed
  hf-loop  a plain transformers loop: padded batches, model(labels=...) full logits
Reported: tokens/s (real tokens, context included; first step excluded as warm-up),
peak memory above the loaded model (CUDA: max_memory_allocated; CPU: sampled RSS),
and each peer's ratio to ours.

Part 2 - one forward+backward of one 2048-token row at vocab 49152 (SmolLM2), our
chunked loss vs the full-logits loss, peak memory.

Every measurement runs in its own subprocess so peaks do not leak between them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------
# Shared setup (inside workers)
# ---------------------------------------------------------------------------


def _tokenizer():
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    return load_tokenizer(tokenizer_only_dir())


def _model_dir(tok, hidden: int, layers: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = Path(tempfile.gettempdir()) / f"distill-bench-llama-{hidden}x{layers}"
    if not (d / "model.safetensors").is_file():
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            num_key_value_heads=max(1, hidden // 128),
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        LlamaForCausalLM(cfg).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _samples(tok, n: int, seq_len: int):
    """Chat samples whose completions vary from short to ~seq_len/2 tokens."""
    from distill.core.contract import Sample

    end = tok.convert_tokens_to_ids("<|im_end|>")
    words = "the student learns to answer like the teacher does step by step".split()
    out = []
    for i in range(n):
        p = tok.apply_chat_template(
            [{"role": "user", "content": f"Question {i}: explain {words[i % len(words)]}."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        pids = tok(p, add_special_tokens=False)["input_ids"]
        target = max(8, int((seq_len // 2 - len(pids)) * ((i * 7919) % 97) / 96))
        text = " ".join(words[(i + k) % len(words)] for k in range(target))
        cids = tok(text, add_special_tokens=False)["input_ids"][:target] + [end]
        out.append(Sample(sample_id=f"b{i}/0", prompt_ids=pids, completion_ids=cids, completion_mask=[1] * len(cids)))
    return out


class PeakMemory:
    """Peak memory above the level at start(): CUDA allocator stats, or sampled RSS on CPU."""

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


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


def worker_ours(a) -> dict:
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
    )
    ctx = DistContext(0, 1, 0, torch.device(a.device))
    model = build_model(_model_dir(tok, a.hidden, a.layers), t, ctx)
    opt, sched = build_optimizer(model, t)
    mem = PeakMemory(a.device).start()
    times, tokens, eff = [], [], []
    for s in range(a.steps):
        batch = samples[s * a.samples_per_step : (s + 1) * a.samples_per_step]
        _sync(a.device)
        t0 = time.perf_counter()
        m = train_step(model, opt, sched, batch, t, ctx, tok.pad_token_id or 0)
        _sync(a.device)
        times.append(time.perf_counter() - t0)
        tokens.append(m["tokens"])
        eff.append(m["packing_efficiency"])
    return {
        "tokens_per_s": sum(tokens[1:]) / sum(times[1:]),
        "peak_mem": mem.stop(),
        "packing_efficiency": sum(eff) / len(eff),
    }


def _padded(batch, pad_id, device):
    import torch

    width = max(s.num_tokens for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    lab = torch.full((len(batch), width), -100, dtype=torch.long)
    for r, s in enumerate(batch):
        x = s.prompt_ids + s.completion_ids
        ids[r, : len(x)] = torch.tensor(x)
        att[r, : len(x)] = 1
        m = [0] * len(s.prompt_ids) + s.completion_mask
        lab[r, : len(x)] = torch.tensor([xi if mi else -100 for xi, mi in zip(x, m)])
    return ids.to(device), att.to(device), lab.to(device)


def worker_hf_loop(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    tok = _tokenizer()
    samples = _samples(tok, a.steps * a.samples_per_step, a.seq_len)
    model = AutoModelForCausalLM.from_pretrained(
        _model_dir(tok, a.hidden, a.layers), dtype=torch.float32, attn_implementation="sdpa"
    ).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    mem = PeakMemory(a.device).start()
    times, tokens = [], []
    for s in range(a.steps):
        batch = samples[s * a.samples_per_step : (s + 1) * a.samples_per_step]
        _sync(a.device)
        t0 = time.perf_counter()
        ids, att, lab = _padded(batch, tok.pad_token_id or 0, a.device)
        model(input_ids=ids, attention_mask=att, labels=lab).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(a.device)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(x.num_tokens for x in batch))
    return {"tokens_per_s": sum(tokens[1:]) / sum(times[1:]), "peak_mem": mem.stop()}


def worker_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = _tokenizer()
    samples = _samples(tok, a.steps * a.samples_per_step, a.seq_len)
    ds = Dataset.from_list(
        [
            {
                "input_ids": s.prompt_ids + s.completion_ids,
                "completion_mask": [0] * len(s.prompt_ids) + s.completion_mask,
            }
            for s in samples
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(
        _model_dir(tok, a.hidden, a.layers), dtype=torch.float32, attn_implementation="sdpa"
    )
    mem = PeakMemory(a.device)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 0:
                mem.start()
            _sync(a.device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(a.device)
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out,
            max_steps=a.steps,
            per_device_train_batch_size=a.samples_per_step,
            gradient_accumulation_steps=1,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            adam_beta2=0.95,
            max_grad_norm=1.0,
            logging_steps=10_000,
            save_strategy="no",
            report_to="none",
            use_cpu=a.device == "cpu",
            max_length=a.seq_len,
            packing=False,
            completion_only_loss=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
        trainer.train()
    # Trainer shuffles, so per-step token counts differ; one epoch covers every sample once,
    # so the mean tokens per step is exact.
    per_step = sum(s.num_tokens for s in samples) / a.steps
    return {"tokens_per_s": per_step * (len(times) - 1) / sum(times[1:]), "peak_mem": mem.stop()}


def worker_loss(a, chunked: bool) -> dict:
    import torch

    from distill.core.config import SFTLoss
    from trainer.model import load_student

    tok = _tokenizer()
    model = load_student(_model_dir(tok, a.hidden, a.layers), torch.device(a.device), SFTLoss(chunk_size=a.chunk_size))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (1, 2048), generator=g).to(a.device)
    pos = torch.arange(2048, device=a.device)[None]
    seg = torch.ones_like(ids)
    mem = PeakMemory(a.device).start()
    t0 = time.perf_counter()
    if chunked:
        loss = model(ids, pos, seg, {"labels": ids.roll(-1, 1)}, 2048.0)
    else:  # the HF model's own loss: full [2048 x 49152] logits, upcast to fp32
        loss = model.lm(input_ids=ids, position_ids=pos, labels=ids).loss
    loss.backward()
    _sync(a.device)
    return {"peak_mem": mem.stop(), "seconds": time.perf_counter() - t0, "vocab": len(tok)}


WORKERS = {
    "ours": worker_ours,
    "trl": worker_trl,
    "hf-loop": worker_hf_loop,
    "loss-chunked": lambda a: worker_loss(a, True),
    "loss-full": lambda a: worker_loss(a, False),
}


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _run(name: str, argv: list[str]) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--worker", name, *argv], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {name}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--samples-per-step", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(WORKERS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return
    argv = [
        f"--steps={a.steps}",
        f"--samples-per-step={a.samples_per_step}",
        f"--seq-len={a.seq_len}",
        f"--hidden={a.hidden}",
        f"--layers={a.layers}",
        f"--chunk-size={a.chunk_size}",
        f"--device={a.device}",
    ]
    only = set(a.only.split(",")) if a.only else set(WORKERS)
    print(
        f"device={a.device} model=llama hidden={a.hidden} layers={a.layers} vocab=49152 seq_len={a.seq_len} "
        f"samples/step={a.samples_per_step} steps={a.steps}"
    )
    res = {n: _run(n, argv) for n in WORKERS if n in only}
    mib = 1 / 2**20
    ours = res.get("ours")
    print("\nper optimizer step (same samples, same model):")
    for n in ("ours", "trl", "hf-loop"):
        r = res.get(n)
        if not r:
            continue
        line = f"  {n:8s} {r['tokens_per_s']:10.0f} tokens/s   peak +{r['peak_mem'] * mib:8.1f} MiB"
        if ours and n != "ours":
            line += (
                f"   ours/{n}: speed x{ours['tokens_per_s'] / r['tokens_per_s']:.2f}, "
                f"memory x{ours['peak_mem'] / max(r['peak_mem'], 1):.2f}"
            )
        if n == "ours":
            line += f"   packing efficiency {r['packing_efficiency']:.2f}"
        print(line)
    c, f = res.get("loss-chunked"), res.get("loss-full")
    if c and f:
        print(f"\none 2048-token row, vocab {c['vocab']}, forward+backward:")
        print(f"  chunked loss (chunk {a.chunk_size}) peak +{c['peak_mem'] * mib:8.1f} MiB  {c['seconds']:.2f}s")
        print(f"  full logits              peak +{f['peak_mem'] * mib:8.1f} MiB  {f['seconds']:.2f}s")
        print(f"  chunked/full memory: x{c['peak_mem'] / max(f['peak_mem'], 1):.2f}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
