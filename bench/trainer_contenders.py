"""The contenders and probes of bench/bench_trainer.py; each runs in its own subprocess
(`bench_trainer.py --worker NAME`) and prints one JSON line.

    ours      trainer.train.train_step (best-fit-decreasing packing, chunked loss)
    trl       TRL SFTTrainer, packing="bfd" + padding_free, completion_only_loss, loss_type="nll"
    hf-loop   a plain transformers loop: padded batch, model(labels=...), torch AdamW
    gemm      bare torch.matmul FLOP/s at the model's GEMM shapes (forward, input-grad, weight-grad)
    loss      one loss head (chunked or full logits) on [tokens x hidden] hidden states

Each worker reports `base_rss` (its RSS when training starts: model loaded, optimizer built); the
driver samples the worker's RSS from outside (psutil, every 5 ms) for the peak. On CUDA each also reports
`cuda_base` / `cuda_peak` (torch.cuda allocator, reset at that point) and times with device syncs
(bench/bench_device.py; not run yet: no GPU was lent to the session that wrote it).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench_device import mark_base, measures, median_time, peak, rss, sync

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tokenizer():
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    return load_tokenizer(tokenizer_only_dir())


def llama_config(shape: dict, vocab: int, bos: int | None = None, eos: int | None = None, pad: int | None = None):
    """SmolLM2-style LlamaConfig of `shape` (heads and kv heads as given: 9/3, 15/5 are real configs)."""
    from transformers import LlamaConfig

    h, q = shape["hidden"], shape["heads"]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=q,
        num_key_value_heads=shape["kv_heads"],
        head_dim=h // q,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def model_dir(tok, shape: dict) -> Path:
    """A randomly initialised Llama of `shape` with SmolLM2's tokenizer (saved once under /tmp)."""
    import torch
    from transformers import LlamaForCausalLM

    h, n, q, kv, i = (shape[k] for k in ("hidden", "layers", "heads", "kv_heads", "intermediate"))
    d = Path(tempfile.gettempdir()) / f"distill-bench-llama-{h}x{n}-{q}h{kv}kv-{i}"
    if not any((d / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):  # (or sharded)
        torch.manual_seed(0)
        cfg = llama_config(shape, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        LlamaForCausalLM(cfg).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def samples(tok, n: int, seq_len: int):
    """Chat samples whose completions vary from short to ~seq_len/2 tokens (deterministic)."""
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


def _result(times: list[float], tokens: list[int], mem: dict, probes: list[float], **extra) -> dict:
    """tokens/s over the steps after the first (warm-up); times and tokens per step; the GEMM probes;
    `mem`: mark_base's and peak's memory figures."""
    warm = slice(1, None) if len(times) > 1 else slice(None)
    return {
        "gemm_probe": sum(probes) / len(probes),
        "tokens_per_s": sum(tokens[warm]) / sum(times[warm]),
        "step_s": times,
        "step_tokens": tokens,
        **mem,
        **extra,
    }


def worker_ours(a) -> dict:
    import torch

    from distill.core.config import Trainer
    from trainer.dist import DistContext
    from trainer.train import build_model, build_optimizer, train_step

    tok = tokenizer()
    data = samples(tok, a.steps * a.samples_per_step, a.seq_len)
    t = Trainer(
        max_steps=a.steps,
        samples_per_step=a.samples_per_step,
        seq_len=a.seq_len,
        micro_batch_rows=a.micro_batch_rows or a.samples_per_step,
        device=a.device,
        dtype=a.dtype,
        optim={"schedule": "constant", "betas": [0.9, 0.95], "lr": 1e-4},
        loss={"type": "sft", "chunk_size": a.chunk_size} if a.chunk_size else {"type": "sft"},
    )
    ctx = DistContext(0, 1, 0, torch.device(a.device))
    model = build_model(model_dir(tok, a.shape), t, ctx)
    opt, sched = build_optimizer(model, t)
    probes = [gemm_probe(a)]
    base = mark_base(a.device)
    times, tokens, breakdown, eff = [], [], [], []
    for s in range(a.steps):
        batch = data[s * a.samples_per_step : (s + 1) * a.samples_per_step]
        sync(a.device)
        t0 = time.perf_counter()
        m = train_step(model, opt, sched, batch, t, ctx, tok.pad_token_id or 0)
        sync(a.device)
        times.append(time.perf_counter() - t0)
        tokens.append(m["tokens"])
        eff.append(m["packing_efficiency"])
        breakdown.append({k[5:-2]: v for k, v in m.items() if k.startswith("time_")})
    base.update(peak(a.device))
    probes.append(gemm_probe(a))
    return _result(times, tokens, base, probes, breakdown=breakdown, packing_efficiency=sum(eff) / len(eff))


def _padded(batch, pad_id):
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
    return ids, att, lab


def worker_hf_loop(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer()
    data = samples(tok, a.steps * a.samples_per_step, a.seq_len)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir(tok, a.shape), dtype=torch.float32, attn_implementation="sdpa"
    ).to(a.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    # CUDA with --bf16: autocast around forward + loss (fp32 master weights), as ours does in one process
    amp = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16" and a.device == "cuda")
    probes = [gemm_probe(a)]
    base = mark_base(a.device)
    times, tokens = [], []
    for s in range(a.steps):
        batch = data[s * a.samples_per_step : (s + 1) * a.samples_per_step]
        sync(a.device)
        t0 = time.perf_counter()
        n, mbr = 0, a.micro_batch_rows or len(batch)  # --micro-batch-rows: samples per forward
        for i in range(0, len(batch), mbr):
            ids, att, lab = (x.to(a.device) for x in _padded(batch[i : i + mbr], tok.pad_token_id or 0))
            with amp:
                loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
            (loss * len(ids) / len(batch) if mbr < len(batch) else loss).backward()
            n += int(att.sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(a.device)
        times.append(time.perf_counter() - t0)
        tokens.append(n)
    base.update(peak(a.device))
    probes.append(gemm_probe(a))
    return _result(times, tokens, base, probes)


def worker_trl(a) -> dict:
    """TRL with Liger kernels where they run (CUDA, liger_kernel installed); should that fail, once
    more without them (the error is kept in the result)."""
    if a.device == "cuda" and _has("liger_kernel"):
        try:
            return _trl(a, use_liger=True)
        except Exception as e:  # noqa: BLE001 - any failure of the optional kernels: measure TRL without
            import sys

            import torch

            err = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"trl with Liger kernels failed ({err}); again without them", file=sys.stderr)
            torch.cuda.empty_cache()
            return {**_trl(a, use_liger=False), "liger_error": err}
    return _trl(a, use_liger=False)


def _trl(a, use_liger: bool) -> dict:
    """TRL's best CPU setup: BFD packing with padding-free rows (no pad token computed), the
    completion-only NLL. Liger kernels need Triton (GPU), so they are off on CPU. Tokens are counted
    from what each step's forward actually receives (real tokens: padding-free rows have none else).
    fp32 like ours on CPU (TRL left alone turns bf16 autocast on); CUDA with --bf16: bf16=True (autocast over
    fp32 master weights, as ours)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = tokenizer()
    data = samples(tok, a.steps * a.samples_per_step, a.seq_len)
    ds = Dataset.from_list(
        [
            {
                "input_ids": s.prompt_ids + s.completion_ids,
                "completion_mask": [0] * len(s.prompt_ids) + s.completion_mask,
            }
            for s in data
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir(tok, a.shape), dtype=torch.float32, attn_implementation="sdpa"
    )
    seen = [0]

    def count(_mod, args, kwargs):
        ids, att = kwargs.get("input_ids"), kwargs.get("attention_mask")
        seen[0] += int(att.sum()) if att is not None else int(ids.numel())

    model.register_forward_pre_hook(count, with_kwargs=True)
    times, tokens, base = [], [], [{}]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            base[0] = base[0] or mark_base(a.device)
            seen[0] = 0
            sync(a.device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync(a.device)
            times.append(time.perf_counter() - self.t0)
            tokens.append(seen[0])

    per_step = _trl_batch(data, a)  # packed rows per optimizer step; --micro-batch-rows of them per forward
    mbr = min(a.micro_batch_rows or per_step, per_step)
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out,
            max_steps=a.steps,
            per_device_train_batch_size=mbr,
            gradient_accumulation_steps=-(-per_step // mbr),
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            adam_beta2=0.95,
            max_grad_norm=1.0,
            logging_steps=10_000,
            save_strategy="no",
            report_to="none",
            use_cpu=a.device == "cpu",
            # bf16 autocast exactly when the run is bf16, as ours. Left unset, SFTConfig turns bf16 on and accelerate
            # runs the CPU forward under bf16 autocast, which is slower on CPUs without AMX (docs/training.md)
            bf16=a.dtype == "bfloat16",
            max_length=a.seq_len,
            packing=True,
            packing_strategy="bfd",
            padding_free=True,
            completion_only_loss=True,
            loss_type="nll",
            use_liger_kernel=use_liger,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
        rows = len(trainer.train_dataset)
        probes = [gemm_probe(a)]
        base[0] = {}  # taken at the first step, after the probe
        trainer.train()
    base[0].update(peak(a.device))
    probes.append(gemm_probe(a))
    return _result(times, tokens, base[0], probes, packed_rows=rows, liger=use_liger)


def _trl_batch(data, a) -> int:
    """Packed rows per step so that TRL's `steps` steps cover the same samples as ours."""
    from trainer.data import best_fit_decreasing

    rows = len(best_fit_decreasing([s.num_tokens for s in data], a.seq_len))
    return max(1, -(-rows // a.steps))


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def linear_shapes(shape: dict, vocab: int) -> list[tuple[int, int, int]]:
    """(out, in, how many per model) of the model's matmuls: per layer q, k, v, o, gate, up, down; lm_head."""
    h, q, kv, i = (shape[k] for k in ("hidden", "heads", "kv_heads", "intermediate"))
    hd, n = h // q, shape["layers"]
    return [(q * hd, h, n), (kv * hd, h, 2 * n), (h, q * hd, n), (i, h, 2 * n), (h, i, n), (vocab, h, 1)]


def gemm_probe(a) -> float:
    """A short bare-GEMM measurement (one timed run of each GEMM), taken by each contender right before
    and after its steps: the machine's speed at that moment, under whatever load shares it.
    One anchor dtype for every contender (bench_device.measures): fp32 on CPU, the run's dtype on CUDA."""
    reps, dtype = a.gemm_reps, a.dtype
    device = getattr(a, "device", "cpu")  # bench_varlen.py's probe arguments name none: CPU
    a.gemm_reps, a.dtype = 1, measures(device, a.dtype == "bfloat16")["anchor_dtype"]
    try:
        return worker_gemm(a)["flops_per_s"]
    finally:
        a.gemm_reps, a.dtype = reps, dtype


def worker_gemm(a) -> dict:
    """Sustained fp32 (or --dtype) matmul FLOP/s over the model's GEMMs, each as the forward
    (x @ W^T), the input gradient (g @ W) and the weight gradient (g^T @ x) of `gemm_tokens` rows,
    weighted by how often the model runs it: the most this machine's BLAS gives these shapes."""
    import torch
    import torch.nn.functional as F

    from trainer.losses.sft import auto_chunk_size

    dt = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
    m, device = a.gemm_tokens, getattr(a, "device", "cpu")
    flops = secs = 0.0
    for out, inp, mult in linear_shapes(a.shape, a.vocab):
        rows = (
            min(m, a.chunk_size or auto_chunk_size(a.vocab)) if out == a.vocab else m
        )  # the loss head runs chunk by chunk
        x, w, g = (torch.randn(r, c, dtype=dt, device=device) for r, c in ((rows, inp), (out, inp), (rows, out)))
        for fn in (lambda: F.linear(x, w), lambda: g @ w, lambda: g.t() @ x):
            flops += 2.0 * rows * inp * out * mult
            secs += median_time(fn, a.gemm_reps, device) * mult
    return {"flops_per_s": flops / secs, "base_rss": rss()}


def _loss_fn(a, h, w, labels, chunk: int):
    from trainer.losses.sft import chunked_nll, naive_nll

    def run():
        hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss = chunked_nll(hh, ww, labels, 1.0, chunk) if chunk else naive_nll(hh, ww, labels, 1.0)
        loss.backward()

    return run


def _loss_inputs(a):
    import torch

    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.loss_tokens, a.shape["hidden"], generator=g)
    w = torch.randn(a.vocab, a.shape["hidden"], generator=g) * 0.02
    labels = torch.randint(0, a.vocab, (a.loss_tokens,), generator=g)
    return h.to(a.device), w.to(a.device), labels.to(a.device)


def worker_loss(a) -> dict:
    """Forward + backward of one loss head on `loss_tokens` trained positions: chunked
    (`--loss-chunk N`) or full fp32 logits (`--loss-chunk 0`, naive_nll); median of a few runs."""
    h, w, labels = _loss_inputs(a)
    base = mark_base(a.device)
    secs = median_time(_loss_fn(a, h, w, labels, a.loss_chunk), a.loss_reps, a.device)
    return {"seconds": secs, **base, **peak(a.device)}


def worker_loss_sweep(a) -> dict:
    """Seconds of the loss head at each chunk size of --sweep and with full logits (0), interleaved
    (one run of each, `loss_reps` times; median) so a change of load hits them alike. Memory: worker_loss."""
    h, w, labels = _loss_inputs(a)
    sizes = [0] + [int(x) for x in a.sweep.split(",")]
    fns = {c: _loss_fn(a, h, w, labels, c) for c in sizes}
    for fn in fns.values():
        fn()  # warm-up
    ts: dict[int, list[float]] = {c: [] for c in sizes}
    for _ in range(a.loss_reps):
        for c, fn in fns.items():
            sync(a.device)
            t0 = time.perf_counter()
            fn()
            sync(a.device)
            ts[c].append(time.perf_counter() - t0)
    return {"seconds": {c: sorted(v)[len(v) // 2] for c, v in ts.items()}, "base_rss": rss()}


WORKERS = {
    "ours": worker_ours,
    "trl": worker_trl,
    "hf-loop": worker_hf_loop,
    "gemm": worker_gemm,
    "loss": worker_loss,
    "loss-sweep": worker_loss_sweep,
}
