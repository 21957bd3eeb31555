"""Orchestrator overhead benchmark.

Part 1 (always): against a zero-latency FaultServer (no faults) running in its own
process, measure the full pipeline — teacher requests, durable recording,
reconstruction with the real SmolLM2 tokenizer, shard publishing — and compare it
with two peers measured in the same run on the same machine:
  * raw: the same number of requests sent with the bare AsyncOpenAI SDK at the same
    concurrency, doing nothing with the answers (the client-side floor);
  * reconstruct-only: Reconstructor.build over the same conversations, no HTTP.

Part 2 (with --llama-url): against a running llama.cpp server, the orchestrator's
achieved completion-token throughput as a ratio of what direct concurrent requests
(bare SDK, same prompts, same concurrency) get from that server.

    python bench/bench_orchestrator.py [--prompts 1500] [--n 4] [--concurrency 32]
    python bench/bench_orchestrator.py --llama-url http://127.0.0.1:8080/v1 --llama-model x
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"  # the fault-injection server lives with the tests (tests/support/fault_server.py)
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(TESTS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def start_server() -> tuple[subprocess.Popen, str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "support.fault_server", "--port", "0", "--max-seconds", "900"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("FaultServer did not start")
    return proc, url


def make_cfg(
    base_url: str,
    model: str,
    prompts: Path,
    n: int,
    concurrency: int,
    max_tokens: int | None,
    out: Path,
    workers: int = 0,
):
    from distill.core.config import load_config

    sampling = {"n": n}
    if max_tokens:
        sampling["max_tokens"] = max_tokens
    return load_config(
        None,
        {
            "output_dir": str(out),
            "orchestrator": {
                "rollout_model": {"base_url": base_url, "model": model, "timeout": 600},
                "sampling": sampling,
                "concurrency": concurrency,
                "samples_per_shard": 256,
                "reconstruct_workers": workers,
                "source": {"type": "jsonl", "path": str(prompts)},
            },
            "trainer": {"seq_len": 2048},
        },
    )


def prompt_messages(prompts: Path) -> list[list[dict]]:
    return [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in prompts.read_text().splitlines()]


async def raw_sdk(
    base_url: str, model: str, messages: list[list[dict]], n: int, concurrency: int, max_tokens: int | None
) -> tuple[float, int, int]:
    """Bare AsyncOpenAI at fixed concurrency: (seconds, choices, completion tokens)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    choices = tokens = 0

    async def one(m):
        nonlocal choices, tokens
        kw = {"n": n} if n > 1 else {}
        if max_tokens:
            kw["max_tokens"] = max_tokens
        async with sem:
            r = await client.chat.completions.create(model=model, messages=m, **kw)
        choices += len(r.choices)
        tokens += r.usage.completion_tokens if r.usage else 0

    t0 = time.perf_counter()
    await asyncio.gather(*(one(m) for m in messages))
    dt = time.perf_counter() - t0
    await client.close()
    return dt, choices, tokens


def run_pipeline(cfg, out: Path, recon) -> tuple[float, dict]:
    from orchestrator.scheduler import rollout

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = rollout(cfg, out, recon, progress=False, backpressure=False)
    return time.perf_counter() - t0, summary


def part1(args, tmp: Path, recon_factory) -> None:
    from support.fault_server import write_prompts

    prompts = tmp / "prompts.jsonl"
    write_prompts(prompts, args.prompts)
    proc, url = start_server()
    try:
        cfg = make_cfg(url, "fault-teacher", prompts, args.n, args.concurrency, None, tmp / "run")
        recon = recon_factory(cfg)
        # warm-up (imports, template compile, connections)
        if args.warmup:
            run_pipeline(
                make_cfg(url, "fault-teacher", prompts, args.n, args.concurrency, None, tmp / "warm"),
                tmp / "warm",
                recon,
            )
        dt, summary = run_pipeline(cfg, tmp / "run", recon)
        wcfg = make_cfg(url, "fault-teacher", prompts, args.n, args.concurrency, None, tmp / "runw", args.workers)
        wdt, wsummary = run_pipeline(wcfg, tmp / "runw", recon) if args.workers else (None, None)
        raw_dt, raw_choices, _ = asyncio.run(
            raw_sdk(url, "fault-teacher", prompt_messages(prompts), args.n, args.concurrency, None)
        )
    finally:
        proc.kill()
        proc.wait()
    recs = [json.loads(x) for x in (tmp / "run" / "recording.jsonl").read_text().splitlines()]
    t0 = time.perf_counter()
    built = 0
    for r in recs:
        s, _ = recon.build(r["messages"] + [r["response"]], None, sample_id=f"{r['prompt_id']}/{r['sample_index']}")
        built += len(s)
    rec_dt = time.perf_counter() - t0

    reqs = summary["requests"]
    samples = summary["samples"]
    print(
        f"part 1: zero-latency FaultServer (separate process), {args.prompts} prompts x n={args.n}, "
        f"concurrency {args.concurrency}, {os.cpu_count()} CPU cores"
    )
    print(
        f"  pipeline (request+record+fsync+reconstruct+publish): {dt:.2f} s, {reqs / dt:,.0f} requests/s, "
        f"{samples / dt:,.0f} samples/s  ({samples} samples, stop={summary['stop_reason']})"
    )
    if wdt:
        print(
            f"  same, reconstruct_workers={args.workers}:                    {wdt:.2f} s, "
            f"{wsummary['requests'] / wdt:,.0f} requests/s, {wsummary['samples'] / wdt:,.0f} samples/s "
            "(worker start-up included)"
        )
    print(
        f"  peer raw SDK (requests only):                        {raw_dt:.2f} s, "
        f"{args.prompts / raw_dt:,.0f} requests/s, {raw_choices / raw_dt:,.0f} choices/s"
    )
    print(f"  peer reconstruct-only:                               {rec_dt:.2f} s, {built / rec_dt:,.0f} samples/s")
    print(f"  ratio pipeline / raw SDK (requests/s): {(reqs / dt) / (args.prompts / raw_dt):.2f}")
    print(f"  ratio pipeline / reconstruct-only (samples/s): {(samples / dt) / (built / rec_dt):.2f}")
    print(
        f"  ratio pipeline time / (raw SDK time + reconstruct-only time): {dt / (raw_dt + rec_dt):.2f} "
        "(1.0 = no overhead beyond the two peers run back to back)"
    )
    if wdt:
        print(f"  ratio pipeline with workers / without (samples/s): {dt / wdt:.2f}")


def part2(args, tmp: Path, recon_factory) -> None:
    from support.fault_server import write_prompts

    prompts = tmp / "llama_prompts.jsonl"
    write_prompts(prompts, args.llama_prompts)
    msgs = prompt_messages(prompts)
    direct_dt, _, direct_tok = asyncio.run(
        raw_sdk(args.llama_url, args.llama_model, msgs, 1, args.llama_concurrency, args.llama_max_tokens)
    )
    cfg = make_cfg(
        args.llama_url, args.llama_model, prompts, 1, args.llama_concurrency, args.llama_max_tokens, tmp / "llama_run"
    )
    cfg.orchestrator.reconstruction.truncated = "keep"
    dt, summary = run_pipeline(cfg, tmp / "llama_run", recon_factory(cfg))
    ours = summary["completion_tokens"] / dt
    direct = direct_tok / direct_dt
    print(
        f"part 2: llama.cpp at {args.llama_url}, {args.llama_prompts} prompts, concurrency "
        f"{args.llama_concurrency}, max_tokens {args.llama_max_tokens}"
    )
    print(f"  direct concurrent requests: {direct:,.1f} completion tokens/s ({direct_dt:.1f} s)")
    print(f"  orchestrator pipeline:      {ours:,.1f} completion tokens/s ({dt:.1f} s)")
    print(f"  ratio orchestrator / direct: {ours / direct:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=1500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", action="store_true", help="run the pipeline once before measuring")
    ap.add_argument("--workers", type=int, default=1, help="also measure with this many reconstruct_workers (0: skip)")
    ap.add_argument("--llama-url", default=None)
    ap.add_argument("--llama-model", default="teacher")
    ap.add_argument("--llama-prompts", type=int, default=32)
    ap.add_argument("--llama-concurrency", type=int, default=2)
    ap.add_argument("--llama-max-tokens", type=int, default=64)
    args = ap.parse_args()

    from orchestrator.reconstruct import Reconstructor
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())

    def recon_factory(cfg):
        return Reconstructor(tok, cfg.orchestrator.reconstruction)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        part1(args, tmp, recon_factory)
        if args.llama_url:
            part2(args, tmp, recon_factory)


if __name__ == "__main__":
    main()
