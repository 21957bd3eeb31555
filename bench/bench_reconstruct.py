"""Reconstruction speed: our Reconstructor vs transformers' assistant-mask path.

Both sides use the same tokenizer (SmolLM2's) with the same ChatML template carrying
{% generation %} markers (tests/templates/chatml_generation.jinja), on the same
generated multi-turn corpus, in the same run:

  ours:  Reconstructor.build(messages)  (renders - one or two per conversation for
         append-only templates -, segment tokenisation in one batch, token-bytes self-check)
  peer:  tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
         return_assistant_tokens_mask=True)  (one render, one-piece tokenisation,
         char_to_token per assistant span)

plus a floor: tokenising the rendered texts and nothing else, which bounds the
speed-up any method tokenising every character once with this tokenizer can reach.
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

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what up out can said my "
    'ratio, value: 42 3.14 x=y+1 (see) [note] {key} "quoted" café naïve 東京 ü Ω → ✓ 😀 \n - * #'
).split(" ")


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


def distillation_corpus(n: int, seed: int, per_prompt: int = 4) -> list[list[dict]]:
    """Single-turn conversations, `per_prompt` teacher samples per prompt (as `sampling.n` gives)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        prompt = conversation(rng, 1)[:-1]
        out += [prompt + [{"role": "assistant", "content": words(rng, 20, 200)}] for _ in range(per_prompt)]
    return out[:n]


def run_ours(recon, convs, base: int = 0) -> int:
    tokens = 0
    for i, msgs in enumerate(convs):
        samples, rejections = recon.build(msgs, sample_id=str(base + i))
        assert not rejections, rejections
        tokens += sum(s.num_tokens for s in samples)
    return tokens


def run_ours_batched(recon, convs, base: int = 0) -> int:
    from distill.core.conversation import Conversation

    tokens = 0
    for samples, rejections in recon.build_many(
        [Conversation(m, sample_id=str(base + i)) for i, m in enumerate(convs)]
    ):
        assert not rejections, rejections
        tokens += sum(s.num_tokens for s in samples)
    return tokens


def run_peer(tok, convs, base: int = 0) -> int:
    tokens = 0
    for msgs in convs:
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        tokens += len(out["input_ids"])
    return tokens


def run_floor(tok, texts) -> int:
    """Tokenising the already rendered texts in one batch call, and nothing else: a
    lower bound for any method that tokenises every character once with this tokenizer."""
    return sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False))


def measure(recons, tok, convs, chunk: int = 128, floor: bool = False, per_prefix=None) -> dict[str, tuple[float, int]]:
    """Seconds and tokens per method. The methods take turns on chunks of the corpus,
    so that load from other processes on the machine falls on all of them alike.
    `recons` are two Reconstructors, so that build_many does not find the prompts
    that build has just cached."""
    runs = {
        "build": lambda c, b: run_ours(recons[0], c, b),
        "build_many": lambda c, b: run_ours_batched(recons[1], c, b),
        "peer": lambda c, b: run_peer(tok, c, b),
    }
    if per_prefix is not None:  # a Reconstructor told the template is not append-only
        runs["per_prefix"] = lambda c, b: run_ours_batched(per_prefix, c, b)
    if floor:
        texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]  # rendered before timing
        runs["floor"] = lambda c, b: run_floor(tok, texts[b : b + len(c)])
    acc = {k: [0.0, 0] for k in runs}
    for b in range(0, len(convs), chunk):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            acc[name][1] += fn(convs[b : b + chunk], b)
            acc[name][0] += time.perf_counter() - t0
    return {k: (v[0], v[1]) for k, v in acc.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=10000, help="corpus size (1-16 turns each)")
    p.add_argument(
        "--scaling-conversations",
        type=int,
        default=None,
        help="conversations per row of the scaling table (default: conversations // 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from distill.core.config import Reconstruction
    from orchestrator.reconstruct import Reconstructor
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())
    tok.chat_template = (ROOT / "tests" / "templates" / "chatml_generation.jinja").read_text(encoding="utf-8")
    recons = (Reconstructor(tok, Reconstruction()), Reconstructor(tok, Reconstruction()))

    convs = corpus(a.conversations, a.seed)
    n_turns = sum(sum(m["role"] == "assistant" for m in c) for c in convs)
    measure(recons, tok, convs[:20])  # warm-up (template compile, caches)
    for r in recons:
        r._prompt_cache.clear()
    res = measure(recons, tok, convs, floor=True)
    print(
        f"corpus: {len(convs)} conversations (1-16 turns), {n_turns} assistant turns, {res['build'][1]} tokens; "
        f"{os.cpu_count()} CPUs, TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}"
    )
    names = {
        "build": "ours: Reconstructor.build, one at a time",
        "build_many": "ours: Reconstructor.build_many (128)",
        "peer": "peer: apply_chat_template(assistant mask)",
    }
    for k, label in names.items():
        secs, ntok = res[k]
        print(f"{label:42s} {secs:8.2f} s {len(convs) / secs:8.0f} conv/s {ntok / secs / 1e3:8.1f} k tok/s")
    peer = res["peer"][0]
    print(
        f"{'floor: encode_batch_fast of the rendered texts':42s} {res['floor'][0]:8.2f} s "
        f"{len(convs) / res['floor'][0]:8.0f} conv/s {res['floor'][1] / res['floor'][0] / 1e3:8.1f} k tok/s"
    )
    print(
        f"speed-up vs peer: build {peer / res['build'][0]:.2f}x, build_many {peer / res['build_many'][0]:.2f}x "
        f"(tokenising alone, the floor, would be {peer / res['floor'][0]:.2f}x)"
    )

    m = a.scaling_conversations or max(20, a.conversations // 10)
    d = distillation_corpus(4 * m, a.seed + 99)
    r = measure(recons, tok, d)
    print(
        f"\nsingle-turn, 4 teacher samples per prompt ({len(d)} conversations): speed-up vs peer: "
        f"build {r['peer'][0] / r['build'][0]:.2f}x, build_many {r['peer'][0] / r['build_many'][0]:.2f}x"
    )
    # The same template with prefix derivation switched off: every P_k and F_k rendered,
    # as for templates that are not append-only (docs/reconstruction.md, "Prefix renders").
    per_prefix = Reconstructor(tok, Reconstruction())
    per_prefix.chat_template.append_only = False
    print(
        f"\ncost per token as turns grow ({m} conversations per row; 'per-prefix' = build_many "
        "rendering every prefix, as for a template that is not append-only):"
    )
    print(
        f"{'turns':>5} {'tokens':>9} {'build us/tok':>13} {'build_many':>11} {'per-prefix':>11} "
        f"{'peer us/tok':>12} {'renders/turn':>13}"
    )
    for turns in (1, 2, 4, 8, 16):
        cs = corpus(m, a.seed + turns, turns)
        before = recons[0].stats["renders"]
        r = measure(recons, tok, cs, per_prefix=per_prefix)
        renders = (recons[0].stats["renders"] - before) / (turns * len(cs))
        ntok = r["build"][1]
        print(
            f"{turns:>5} {ntok:>9} {r['build'][0] / ntok * 1e6:>13.2f} {r['build_many'][0] / ntok * 1e6:>11.2f} "
            f"{r['per_prefix'][0] / ntok * 1e6:>11.2f} {r['peer'][0] / r['peer'][1] * 1e6:>12.2f} "
            f"{renders:>13.2f}"
        )


if __name__ == "__main__":
    main()
