"""Scoring throughput: our client (Transport + the vLLM score kind) vs bare concurrent requests.

Against one REAL vLLM server (started here from the vLLM venv, or --url), the same sequences in the
same run: chat-template-rendered SmolLM2 conversations of varied length, scored with prompt_logprobs=k.
  * ours: Transport(concurrency=C) + VLLMScore, --per-request sequences per request (a prompt list),
    every body parsed into per-position logprobs and top-k;
  * bare: plain httpx at the same concurrency, the very same request bodies, the answer read as JSON
    and nothing else (the client-side floor);
  * bare-1: bare requests of one sequence each (what batching buys; for information).
Rounds alternate ours / bare so that load from other processes hits both alike. Prints scored tokens/s
of each and ours/bare (goal >= 0.9).

    python bench/bench_score.py [--sequences 64] [--per-request 4] [--concurrency 4] [--top-k 5] [--rounds 3]
    python bench/bench_score.py --url http://127.0.0.1:8000/v1     # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"  # the vLLM server launcher lives with the tests (tests/support/vllm_server.py)
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(TESTS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # the HTTP library under the openai SDK: httpx2 in openai 3.x, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

TOPICS = ["rain", "snow", "the sea", "a city at night", "bread", "a library", "trains", "autumn", "bees", "chess"]


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """n varied conversations (1-3 turns, answers of varied length) to render with the chat template."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        conv = []
        for turn in range(rng.randint(1, 3)):
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            topic = rng.choice(TOPICS)
            conv.append(
                {"role": "user", "content": f"Question {i}.{turn}: what is {a} + {b}? Then say a word on {topic}."}
            )
            words = " ".join(rng.choice(TOPICS).split()[-1] for _ in range(rng.randint(5, 60)))
            conv.append({"role": "assistant", "content": f"{a} + {b} = {a + b}. About {topic}: {words}."})
        out.append(conv)
    return out


def render_all(n: int) -> list[list[int]]:
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())
    return [list(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in conversations(n)]


def batches(seqs: list[list[int]], per: int) -> list[list[list[int]]]:
    return [seqs[i : i + per] for i in range(0, len(seqs), per)]


async def run_ours(base_url: str, model: str, groups, k: int, concurrency: int) -> tuple[float, int]:
    from orchestrator.kinds import SCORERS
    from orchestrator.kinds.score_types import ScoreBatch, ScoreSeq
    from orchestrator.transport import Transport

    kind = SCORERS["vllm"].score()
    t = Transport([base_url], model, "none", concurrency=concurrency, timeout=600)
    try:
        t0 = time.perf_counter()
        ds = await asyncio.gather(*(t.request(kind, ScoreBatch([ScoreSeq(s) for s in g], k)) for g in groups))
        wall = time.perf_counter() - t0
    finally:
        await t.close()
    scored = sum(len(s.logprobs) for d in ds for s in d.answer.seqs)
    return wall, scored


async def run_bare(base_url: str, model: str, groups, k: int, concurrency: int) -> tuple[float, int]:
    from orchestrator.kinds.score_types import ScoreBatch, ScoreSeq
    from orchestrator.kinds.score_vllm import VLLMScore

    bodies = [VLLMScore().body(model, ScoreBatch([ScoreSeq(s) for s in g], k)) for g in groups]  # identical bodies
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def one(body):
            async with sem:
                r = await client.post("/completions", json=body)
                r.raise_for_status()
                return r.json()

        t0 = time.perf_counter()
        outs = await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    scored = sum(len(c["prompt_logprobs"]) for o in outs for c in o["choices"])
    return wall, scored


def rate(results: list[tuple[float, int]]) -> float:
    """Scored tokens/s over all rounds (total tokens / total wall)."""
    return sum(n for _, n in results) / sum(w for w, _ in results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running vLLM server's base URL (http://HOST:PORT/v1); else one is started")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--per-request", type=int, default=4, help="sequences per request (a prompt list)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from support.vllm_server import VLLMServer, served_model, venv_dir

    server = None
    url = args.url
    if not url:
        from distill.core.student import BUILTIN_NAME, BUILTIN_PREFIX, resolve_student

        venv = venv_dir()
        if venv is None:
            print("bench_score: no vLLM venv (.venv-vllm or $DISTILL_VLLM_VENV): run scripts/setup.sh", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        server = VLLMServer(resolve_student(BUILTIN_PREFIX + BUILTIN_NAME), venv).start()
        url = server.base_url
        print(f"vLLM server up in {time.perf_counter() - t0:.0f}s ({url})")
    try:
        return bench(url.rstrip("/"), served_model(url.rstrip("/")), args)
    finally:
        if server is not None:
            server.stop()


def bench(url: str, model: str, args) -> int:
    seqs = render_all(args.sequences)
    groups = batches(seqs, args.per_request)
    singles = batches(seqs, 1)
    n_tok = sum(map(len, seqs))
    print(
        f"{len(seqs)} sequences, {n_tok} tokens (mean {n_tok / len(seqs):.0f}), {len(groups)} requests of "
        f"{args.per_request}, concurrency {args.concurrency}, top-k {args.top_k}, {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    asyncio.run(run_bare(url, model, groups[:2], args.top_k, args.concurrency))  # warm-up
    ours, bare, bare1 = [], [], []
    for r in range(args.rounds):
        pair = [("ours", ours, run_ours, groups), ("bare", bare, run_bare, groups)]
        for name, acc, fn, g in pair if r % 2 == 0 else pair[::-1]:
            acc.append(asyncio.run(fn(url, model, g, args.top_k, args.concurrency)))
            print(f"  round {r + 1} {name}: {acc[-1][1] / acc[-1][0]:.0f} tok/s ({acc[-1][0]:.1f}s)")
    bare1.append(asyncio.run(run_bare(url, model, singles, args.top_k, args.concurrency)))
    ratio = rate(ours) / rate(bare)
    per_round = [o[1] / o[0] / (b[1] / b[0]) for o, b in zip(ours, bare)]
    print(f"ours   (Transport + VLLMScore, {args.per_request}/request): {rate(ours):8.0f} scored tok/s")
    print(f"bare   (httpx, same bodies, same concurrency):  {rate(bare):8.0f} scored tok/s")
    print(f"bare-1 (httpx, one sequence per request):       {rate(bare1):8.0f} scored tok/s")
    print(
        f"ratio ours/bare: {ratio:.3f} (per round: {', '.join(f'{x:.3f}' for x in per_round)}; median "
        f"{statistics.median(per_round):.3f}) goal >= 0.9; load now {os.getloadavg()[0]:.1f}"
    )
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
