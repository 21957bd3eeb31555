"""Reconstruction speed: our Reconstructor vs transformers' assistant-mask path.

Both sides use the same tokenizer (SmolLM2's) with the same ChatML template carrying
{% generation %} markers (tests/templates/chatml_generation.jinja), on the same
generated multi-turn corpus, in the same run:

  ours:  Reconstructor.build(messages)  (per-turn renders, segment tokenisation in
         one batch, decode self-checks)
  peer:  tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
         return_assistant_tokens_mask=True)  (one render, one-piece tokenisation,
         char_to_token per assistant span)

Then the cost per token of ours as conversations grow (1, 2, 4, 8, 16 turns), to show
how it scales. Usage: python bench/bench_reconstruct.py [--conversations 10000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

# build_many hands all segments of a batch to the Rust tokenizer at once, which may
# use several threads; set TOKENIZERS_PARALLELISM=false to measure one thread.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no what up out can said my "
         "ratio, value: 42 3.14 x=y+1 (see) [note] {key} \"quoted\" café naïve 東京 ü Ω → ✓ 😀 \n - * #").split(" ")


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def conversation(rng: random.Random, turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": words(rng, 5, 20)}] if rng.random() < 0.5 else []
    for _ in range(turns):
        msgs.append({"role": "user", "content": words(rng, 5, 60)})
        lead = rng.choice(["", "", "", " ", "  ", "\n"])
        msgs.append({"role": "assistant", "content": lead + words(rng, 20, 200)})
    return msgs


def corpus(n: int, seed: int, turns: int | None = None) -> list[list[dict]]:
    rng = random.Random(seed)
    return [conversation(rng, turns or rng.randint(1, 16)) for _ in range(n)]


def time_ours(recon, convs) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    for i, msgs in enumerate(convs):
        samples, rejections = recon.build(msgs, sample_id=str(i))
        assert not rejections, rejections
        tokens += sum(s.num_tokens for s in samples)
    return time.perf_counter() - t0, tokens


def time_ours_batched(recon, convs, batch: int = 256) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    for b in range(0, len(convs), batch):
        chunk = [dict(messages=m, sample_id=str(b + i)) for i, m in enumerate(convs[b: b + batch])]
        for samples, rejections in recon.build_many(chunk):
            assert not rejections, rejections
            tokens += sum(s.num_tokens for s in samples)
    return time.perf_counter() - t0, tokens


def time_peer(tok, convs) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    for msgs in convs:
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        tokens += len(out["input_ids"])
    return time.perf_counter() - t0, tokens


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=10000, help="corpus size (1-16 turns each)")
    p.add_argument("--scaling-conversations", type=int, default=None,
                   help="conversations per row of the scaling table (default: conversations // 10)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from distill.config import Reconstruction
    from orchestrator.reconstruct import Reconstructor
    from orchestrator.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())
    tok.chat_template = (ROOT / "tests" / "templates" / "chatml_generation.jinja").read_text(encoding="utf-8")
    recon = Reconstructor(tok, Reconstruction())

    convs = corpus(a.conversations, a.seed)
    n_turns = sum(sum(m["role"] == "assistant" for m in c) for c in convs)
    time_ours(recon, convs[:50]), time_peer(tok, convs[:50])  # warm-up (template compile, caches)
    ours_s, ours_tok = time_ours(recon, convs)
    many_s, _ = time_ours_batched(recon, convs)
    peer_s, peer_tok = time_peer(tok, convs)
    print(f"corpus: {len(convs)} conversations, {n_turns} assistant turns, {ours_tok} tokens (ours), "
          f"{peer_tok} tokens (peer); {os.cpu_count()} CPUs, "
          f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}")
    for name, secs, ntok in (("ours: Reconstructor.build, one at a time", ours_s, ours_tok),
                             ("ours: Reconstructor.build_many, 256/batch", many_s, ours_tok),
                             ("peer: apply_chat_template(assistant mask)", peer_s, peer_tok)):
        print(f"{name:42s} {secs:8.2f} s {len(convs) / secs:8.0f} conv/s {ntok / secs / 1e3:8.1f} k tok/s")
    print(f"speed-up vs peer: build {peer_s / ours_s:.2f}x, build_many {peer_s / many_s:.2f}x")

    m = a.scaling_conversations or max(20, a.conversations // 10)
    print(f"\ncost per token as turns grow ({m} conversations per row):")
    print(f"{'turns':>5} {'tokens':>9} {'build us/tok':>13} {'build_many':>11} {'peer us/tok':>12} "
          f"{'renders/turn':>13}")
    recon.stats.clear()
    for turns in (1, 2, 4, 8, 16):
        cs = corpus(m, a.seed + turns, turns)
        before = recon.stats["renders"]
        o_s, o_tok = time_ours(recon, cs)
        renders = (recon.stats["renders"] - before) / (turns * len(cs))
        b_s, _ = time_ours_batched(recon, cs)
        p_s, p_tok = time_peer(tok, cs)
        print(f"{turns:>5} {o_tok:>9} {o_s / o_tok * 1e6:>13.2f} {b_s / o_tok * 1e6:>11.2f} "
              f"{p_s / p_tok * 1e6:>12.2f} {renders:>13.2f}")


if __name__ == "__main__":
    main()
