"""Reconstruction speed: our Reconstructor vs transformers' assistant-mask path.

Per student family (--families), the same tokenizer and template on both sides, the
same generated multi-turn corpus, in the same run:

  smollm2:  SmolLM2's tokenizer, ChatML with {% generation %} markers
            (tests/templates/chatml_generation.jinja): an append-only template
  llama3_1: Llama 3.2's real tokenizer with Llama 3.1's template (not append-only:
            `messages[1:]`, `messages|length`; prefixes proven by watched renders)
  qwen3:    Qwen's real tokenizer with Qwen3's template (a pre-pass over all messages:
            every prefix rendered; earlier <think> blocks dropped, so one sample per turn)
  mistral_v0_1: Mistral 7B v0.1's real SentencePiece tokenizer (a dummy prefix "▁" on every
            piece of text, Llama-2 style) with its template (append-only; " " before each answer)
  deepseek_v3: DeepSeek's real tokenizer with DeepSeek V3's template (a pre-pass gathers the
            system prompt, and the text after the loop reads a namespace: watched renders
            with orchestrator/template_prepass.py)
  olmo2_tulu, granite3_3: OLMo 2's and Granite 3.3's real templates with stand-in tokenizers
            (they write the generation prompt inside the loop, at loop.last: watched renders
            with orchestrator/template_last.py)

  ours:          Reconstructor.build_many over chunks of 128 conversations
  ours in N processes: the same chunks, each split between N-1 worker processes and this one
                 (orchestrator/build_pool.py ParallelBuilder, as `distill tokenize` and replay
                 use it; N = --processes, default one per core). Its pool is started before
                 timing: the one-time startup is printed on its own line.
  peer:          tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                 return_assistant_tokens_mask=True), one conversation at a time
  batched peer:  the same over the list of a chunk's conversations in one call
  floor:         tokenising the already rendered texts in one batch call, and nothing else

For a template that rewrites history (qwen3) the peers render what gives the same samples
as ours: the history through each assistant turn. Real templates without generation
markers give the peers an empty mask (less work for them). Printed per family, in one
line: build_many's speed as a fraction of the floor's, and its speed-up over both peers;
its CPU time (all threads of this process) over the floor's, and the inverse: the
fraction of the floor's speed that build_many's work would reach spread over as many
cores as the floor's keeps busy, a ceiling for any overlap of its Python with the
tokenizer; then the cost per token as conversations grow (1, 2, 4, 8, 16 turns).
--corpus shared-system: every conversation starts with the same ~800-token system prompt
(as distillation corpora often do), then 1-3 short turns.
Usage: python bench/bench_reconstruct.py [--conversations 10000]
       [--families smollm2,llama3_1,qwen3,mistral_v0_1,deepseek_v3,olmo2_tulu,granite3_3]
       [--corpus mixed|shared-system]
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


def shared_system_corpus(n: int, seed: int, turns: int | None = None, system_words: int = 560) -> list[list[dict]]:
    """One long system prompt (~800 tokens) shared by every conversation, short varied
    user turns (3-30 words), 1-3 turns (or `turns`), answers of 20-120 words."""
    rng = random.Random(seed)
    system = {"role": "system", "content": "You are a careful assistant. " + words(rng, system_words, system_words)}
    out = []
    for _ in range(n):
        msgs = [system]
        for _ in range(turns or rng.randint(1, 3)):
            msgs.append({"role": "user", "content": words(rng, 3, 30)})
            msgs.append({"role": "assistant", "content": words(rng, 20, 120)})
        out.append(msgs)
    return out


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


def run_ours_processes(builder, convs, base: int = 0) -> int:
    from distill.core.conversation import Conversation

    tokens = 0
    for res in builder.build([Conversation(m, sample_id=str(base + i)) for i, m in enumerate(convs)]):
        assert not isinstance(res, Exception) and not res[1], res
        tokens += sum(s.num_tokens for s in res[0])
    return tokens


def run_peer(tok, convs, base: int = 0) -> int:
    tokens = 0
    for msgs in convs:
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        tokens += len(out["input_ids"])
    return tokens


def run_peer_batched(tok, convs, base: int = 0) -> int:
    """transformers' path over a list of conversations in one call (one batch tokenisation)."""
    out = tok.apply_chat_template(convs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return sum(len(ids) for ids in out["input_ids"])


def run_floor(tok, texts) -> int:
    """Tokenising the already rendered texts in one batch call, and nothing else: a
    lower bound for any method that tokenises every character once with this tokenizer."""
    return sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False))


def peer_units(convs, split: bool) -> list[list[list[dict]]]:
    """Per conversation, the message lists a peer renders to produce the same samples as
    ours: the conversation itself, or (for a template that rewrites the history, where
    ours makes one sample per trained turn) the history through each assistant turn."""
    if not split:
        return [[c] for c in convs]
    return [[c[: i + 1] for i, m in enumerate(c) if m["role"] == "assistant"] for c in convs]


def measure(
    fam, convs, chunk: int = 128, floor: bool = False, per_prefix=None, one_at_a_time=True, processes=False
) -> dict:
    """Seconds and tokens per method. The methods take turns on chunks of the corpus,
    so that load from other processes on the machine falls on all of them alike.
    `fam.recons` are two Reconstructors, so that build_many does not find the prompts
    that build has just cached. Peers render `peer_units` (the same samples as ours)."""
    tok, recons = fam.tok, fam.recons
    units = peer_units(convs, fam.split)
    flat = [[m for u in units[b : b + chunk] for m in u] for b in range(0, len(convs), chunk)]
    runs = {
        "build_many": lambda c, b: run_ours_batched(recons[1], c, b),
        "peer": lambda c, b: run_peer(tok, flat[b // chunk], b),
        "peer_batched": lambda c, b: run_peer_batched(tok, flat[b // chunk], b),
    }
    if one_at_a_time:
        runs["build"] = lambda c, b: run_ours(recons[0], c, b)
    if processes and fam.builder is not None:  # build_many in several processes
        runs["processes"] = lambda c, b: run_ours_processes(fam.builder, c, b)
    if per_prefix is not None:  # a Reconstructor that renders every prefix
        runs["per_prefix"] = lambda c, b: run_ours_batched(per_prefix, c, b)
    if floor:  # rendered before timing
        texts = [[tok.apply_chat_template(m, tokenize=False) for m in f] for f in flat]
        runs["floor"] = lambda c, b: run_floor(tok, texts[b // chunk])
    acc = {k: [0.0, 0, 0.0] for k in runs}
    for b in range(0, len(convs), chunk):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            acc[name][1] += fn(convs[b : b + chunk], b)
            acc[name][0] += time.perf_counter() - t0
            acc[name][2] += time.process_time() - c0  # this process's threads (the tokenizer's too)
    return {k: (v[0], v[1], v[2]) for k, v in acc.items()}


class Family:
    """A student tokenizer + chat template, and the corpus shape its template accepts."""

    def __init__(
        self, name: str, processes: int = 1, one_thread: bool = True, kind: str = "mixed", prefix_reuse: bool = True
    ):
        from distill.core.config import Reconstruction
        from distill.core.student import load_tokenizer, tokenizer_only_dir
        from orchestrator.reconstruct import Reconstructor

        self.name = name
        self.kind = kind  # "mixed" (corpus) or "shared-system" (shared_system_corpus)
        # Llama 3.1 trims content, Qwen3 strips a final turn's leading newlines: such content is rejected
        self.strip = name in ("llama3_1", "qwen3")
        self.split = name == "qwen3"  # drops earlier <think> blocks: one sample per turn
        if name == "smollm2":
            self.tok = load_tokenizer(tokenizer_only_dir())
            self.tok.chat_template = (ROOT / "tests" / "templates" / "chatml_generation.jinja").read_text(
                encoding="utf-8"
            )
            self.label = "SmolLM2 tokenizer, ChatML with generation markers (append-only)"
        elif name in STANDIN_FAMILIES:  # a real tokenizer with the family's turn tokens (family_standins.py)
            sys.path.insert(0, str(ROOT / "tests"))
            from support.family_standins import standin

            self.tok = standin(name)
            self.label = f"{name} template, stand-in tokenizer (tests/support/family_standins.py)"
        else:
            from tests.support import tokenizer_builds

            tokenizer = {
                "llama3_1": "llama3",
                "qwen3": "qwen",
                "mistral_v0_1": "mistral_sp",
                "deepseek_v3": "deepseek",
                "deepseek_v3_1": "deepseek",
            }[name]
            self.tok = tokenizer_builds.load(tokenizer, name)
            self.label = f"{name} template, real tokenizer" + (
                " (SentencePiece with a dummy prefix on every piece of text)" if tokenizer == "mistral_sp" else ""
            )
        self.recons = (Reconstructor(self.tok, Reconstruction()), Reconstructor(self.tok, Reconstruction()))
        t = self.recons[0].chat_template
        if not t.append_only:
            how = "watched renders" if t.tracked is not None else "not watched: " + t.why_not_tracked
            self.label += f" (not append-only: {t.why_not_append_only}; {how})"
        # The same template, rendering every prefix (neither proof used).
        self.per_prefix = Reconstructor(self.tok, Reconstruction())
        self.per_prefix.chat_template.append_only = False
        self.per_prefix.chat_template.tracked = None
        for r in (*self.recons, self.per_prefix):
            if not prefix_reuse and r._prompt_reuse is not None:  # the run before prompt_jobs.py's shared prefixes
                r._prompt_reuse.shared = None
        self.builder = None
        self.startup_s = 0.0
        self.processes = processes
        if processes > 1:
            from orchestrator.build_pool import ParallelBuilder

            self.builder = ParallelBuilder(
                Reconstructor(self.tok, Reconstruction()), processes - 1, 1, 0, one_thread=one_thread
            )
            if not prefix_reuse and self.builder.reconstructor._prompt_reuse is not None:  # its own part only
                self.builder.reconstructor._prompt_reuse.shared = None
            self.startup_s = self.builder.start()  # once per run, not timed with the others

    def corpus(self, n: int, seed: int, turns: int | None = None) -> list[list[dict]]:
        cs = (shared_system_corpus if self.kind == "shared-system" else corpus)(n, seed, turns)
        return [[dict(m, content=m["content"].strip()) for m in c] for c in cs] if self.strip else cs


# families whose real tokenizer no package ships: the template is real, the tokenizer a stand-in
STANDIN_FAMILIES = ("olmo2_tulu", "granite3_3")
CORPORA = {"mixed": "1-16 turns", "shared-system": "one ~800-token system prompt, 1-3 short turns"}


def report(fam: Family, convs, res: dict) -> None:
    ours = res["build_many"]
    samples = sum(len(u) for u in peer_units(convs, fam.split))
    print(
        f"\n== {fam.label}\ncorpus: {len(convs)} conversations ({CORPORA[fam.kind]}), {samples} samples, {ours[1]} tokens; "
        f"{os.cpu_count()} CPUs, TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}"
    )
    names = {
        "build": "ours: Reconstructor.build, one at a time",
        "build_many": "ours: Reconstructor.build_many (128)",
        "processes": f"ours: build_many (128) in {fam.processes} processes",
        "per_prefix": "ours, every prefix rendered (no proof)",
        "peer": "peer: apply_chat_template, per example",
        "peer_batched": "peer: apply_chat_template, batch of 128",
        "floor": "floor: encode_batch_fast of rendered texts",
    }
    for k, label in names.items():
        if k in res:
            secs, ntok, cpu = res[k]
            busy = f"{cpu:6.2f} s CPU ({cpu / secs:.2f} cores)" if k != "processes" else "(CPU in workers)"
            print(f"{label:44s} {secs:8.2f} s {len(convs) / secs:8.0f} conv/s {ntok / secs / 1e3:8.1f} k tok/s  {busy}")
    floor_speed = res["floor"][1] / res["floor"][0]
    cpu_ratio = ours[2] / res["floor"][2]
    print(
        f"RATIOS {fam.name}: build_many / floor speed {ours[1] / ours[0] / floor_speed:.2f}; "
        f"CPU build_many / floor {cpu_ratio:.2f} (using as many cores as the floor, it would reach "
        f"{1 / cpu_ratio:.2f} of its speed); "
        f"speed-up vs per-example peer {res['peer'][0] / ours[0]:.2f}x, "
        f"vs batched peer {res['peer_batched'][0] / ours[0]:.2f}x"
        + (f"; every prefix rendered: {res['peer'][0] / res['per_prefix'][0]:.2f}x" if "per_prefix" in res else "")
        + (
            f"; in {fam.processes} processes: / floor speed {res['processes'][1] / res['processes'][0] / floor_speed:.2f}, "
            f"vs per-example peer {res['peer'][0] / res['processes'][0]:.2f}x, "
            f"vs batched peer {res['peer_batched'][0] / res['processes'][0]:.2f}x"
            if "processes" in res
            else ""
        )
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=10000, help="corpus size (1-16 turns each)")
    p.add_argument(
        "--families",
        default="smollm2,llama3_1,qwen3,mistral_v0_1,deepseek_v3,olmo2_tulu,granite3_3",
        help="comma-separated: smollm2 (append-only), llama3_1, qwen3, deepseek_v3, deepseek_v3_1, olmo2_tulu, granite3_3 (real "
        "templates that are not), mistral_v0_1 (SentencePiece)",
    )
    p.add_argument(
        "--scaling-conversations",
        type=int,
        default=None,
        help="conversations per row of the scaling table (default: conversations // 10; 0: no table)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="mixed",
        help="mixed: 1-16 turns, short system prompts; shared-system: one long system prompt for all",
    )
    p.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="switch off prompt prefixes shared across conversations (in this process; not in the workers)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="processes for the multi-process contender (default: one per core; 1: not measured)",
    )
    p.add_argument(
        "--worker-tokenizer-threads",
        choices=("one", "all"),
        default="one",
        help="the worker processes' tokenizer: one thread (the default in distill) or all cores",
    )
    a = p.parse_args(argv)
    m = a.scaling_conversations if a.scaling_conversations is not None else max(20, a.conversations // 10)
    for name in a.families.split(","):
        from orchestrator.build_pool import cores

        procs = a.processes if a.processes is not None else cores()
        fam = Family(name, procs, a.worker_tokenizer_threads == "one", a.corpus, not a.no_prefix_reuse)
        if fam.builder is not None:
            print(
                f"\n{name}: pool of {procs - 1} worker process(es) started in {fam.startup_s:.2f} s "
                "(one-time, not in the timings below)"
            )
        # one sample per turn makes qwen3's corpus ~8x the tokens: a fifth of the conversations
        convs = fam.corpus(max(20, a.conversations // 5) if fam.split else a.conversations, a.seed)
        # warm-up (template compile) on other conversations: the workers' caches cannot be cleared
        measure(fam, fam.corpus(20, a.seed + 12345), per_prefix=fam.per_prefix, processes=True)
        for r in (*fam.recons, fam.per_prefix, *([fam.builder.reconstructor] if fam.builder else [])):
            forget(r)
        first = name == a.families.split(",")[0]
        res = measure(fam, convs, floor=True, per_prefix=fam.per_prefix, one_at_a_time=first, processes=True)
        report(fam, convs, res)
        if first and m:
            d = distillation_corpus(4 * m, a.seed + 99)
            r = measure(fam, d, one_at_a_time=True)
            print(
                f"single-turn, 4 teacher samples per prompt ({len(d)} conversations): speed-up vs per-example peer: "
                f"build {r['peer'][0] / r['build'][0]:.2f}x, build_many {r['peer'][0] / r['build_many'][0]:.2f}x"
            )
        if m:
            scaling(fam, m, a.seed)
        if fam.builder is not None:
            fam.builder.close()


def forget(recon) -> None:
    """Clear what an earlier run cached (prompt ids, renders, shared prompt prefixes)."""
    recon._prompt_cache.clear()
    recon._render_cache.clear()
    if recon._prompt_reuse is not None and recon._prompt_reuse.shared is not None:
        recon._prompt_reuse.shared = type(recon._prompt_reuse.shared)()


def scaling(fam: Family, m: int, seed: int) -> None:
    print(
        f"cost per token as turns grow ({m} conversations per row; 'every prefix' = build_many rendering "
        "every prefix, as without a proof):"
    )
    print(
        f"{'turns':>5} {'tokens':>9} {'build_many us/tok':>18} {'every prefix':>13} {'peer us/tok':>12} {'renders/turn':>13}"
    )
    for turns in (1, 2, 4, 8, 16):
        cs = fam.corpus(m, seed + turns, turns)
        before = fam.recons[1].stats["renders"]
        r = measure(fam, cs, per_prefix=fam.per_prefix, one_at_a_time=False)
        renders = (fam.recons[1].stats["renders"] - before) / (turns * len(cs))
        ntok = r["build_many"][1]
        print(
            f"{turns:>5} {ntok:>9} {r['build_many'][0] / ntok * 1e6:>18.2f} {r['per_prefix'][0] / ntok * 1e6:>13.2f} "
            f"{r['peer'][0] / r['peer'][1] * 1e6:>12.2f} {renders:>13.2f}"
        )


if __name__ == "__main__":
    main()
