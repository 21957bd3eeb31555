"""Prompt prefixes shared across conversations (orchestrator/reconstruction/prompt_jobs.py).

Real tokenizers and templates (Qwen + qwen3, Llama 3.2 + llama3_1, SmolLM2 +
chatml_generation, DeepSeek + R1-Distill): conversations sharing one long system prompt,
or one nearly (differing in its last character, in the whitespace before the cut, in a
combining mark Qwen's NFC would merge), give byte-identical samples with every reuse on
and with none; the stats show the shared prefixes were reused; the prefix cache stays
within its bounds; the prefix ids the cache remembers are those of the prefix alone.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from support.reconstruct_helpers import recon, tokenizer_with
from test_reconstruct_prompt_reuse import SETTINGS, as_data, encode, family, reuse_of, texts

from orchestrator.reconstruction.prompt_reuse import PrefixCache, _nth

FAMILIES = [
    ("qwen", "qwen3"),
    ("llama3", "llama3_1"),
    ("smollm2", "chatml_generation"),
    ("deepseek", "deepseek_r1_distill"),
]
WORDS = ["alpha", "beta", "tool", "JSON", "café", "你好", "🎉", "42,", "x_y", "don't", "\n", "  ", "\n\n"]


def tok_of(name: str, template: str):
    return tokenizer_with(template) if name == "smollm2" else family(name, template)


def system_prompt(rng: random.Random, words: int = 600) -> str:
    return "You are a careful assistant. " + " ".join(rng.choice(WORDS) for _ in range(words)) + " End."


# near-shared: the same long text with another ending (the cut then falls before it)
ENDINGS = ["", "!", " ", "  ", "\n", "\n\n", " \n", "e\u0301", "é", "\t"]


def corpus(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    base = system_prompt(rng)
    out = []
    for i in range(n):
        system = base + ENDINGS[i % len(ENDINGS)] if i % 7 else system_prompt(rng, 100)
        msgs = [{"role": "system", "content": system}]
        for k in range(1 + (i % 3 == 0)):
            msgs.append(
                {"role": "user", "content": f"Q{k} {i}: " + " ".join(rng.choice(WORDS) for _ in range(9)) + "?"}
            )
            msgs.append(
                {"role": "assistant", "content": f"A{k} " + " ".join(rng.choice(WORDS) for _ in range(12)) + " ok"}
            )
        out.append(dict(messages=msgs, sample_id=f"c{i}"))
    return out


@pytest.mark.parametrize("name,template", FAMILIES)
def test_shared_system_prompts_give_the_same_samples_with_and_without_reuse(name, template):
    tok = tok_of(name, template)
    convs = corpus(90)  # several pipeline chunks: prefixes reused within a batch and across
    on, off = recon(tok=tok), recon(tok=tok)
    assert on._prompt_reuse is not None and on._prompt_reuse.shared is not None
    off._prompt_reuse = None  # every prompt encoded whole
    got, want = on.build_many(convs), off.build_many(convs)
    assert as_data(got) == as_data(want)
    # Qwen's NFC merges the "e\u0301" ending: roundtrip_mismatch, with and without reuse alike
    rejected = [r.reason for _, rr in got for r in rr]
    assert set(rejected) <= {"roundtrip_mismatch"} and len(rejected) <= len(convs) // len(ENDINGS) + 1
    assert sum(len(ss) for ss, _ in got) >= len(convs) - len(rejected)
    # all but the first of each distinct ending (and the odd other prompt) reuse a prefix
    assert on.stats["prompt_prefix_reused"] >= len(convs) - 30
    assert "prompt_reuse_refused" not in on.stats and "prompt_prefix_reused" not in off.stats
    # one at a time (build): the cache carries over between calls, same samples; a prefix
    # is kept the second time it is seen, reused from the third (10 endings, 60 prompts)
    one = recon(tok=tok)
    assert as_data([one.build(**c) for c in convs[:60]]) == as_data(want[:60])
    assert one.stats["prompt_prefix_reused"] >= 60 - 9 - 2 * len(ENDINGS)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{k}",
            "description": "Looks things up. " * 8,
            "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "the query"}}},
        },
    }
    for k in range(6)
]


@pytest.mark.parametrize("name,template", [("qwen", "qwen3"), ("llama3", "llama3_1")])
def test_shared_tool_schemas_give_the_same_samples_with_and_without_reuse(name, template):
    """Tool schemas before short questions: Qwen3 renders them in the system turn (a shared
    prefix up to the user's <|im_start|>); Llama 3.1 in the first user message, after its
    header (only the header part is shared: nothing to cut inside the text)."""
    tok = family(name, template)
    convs = [dict(c, tools=TOOLS) for c in corpus(40, seed=9)]
    on, off = recon(tok=tok), recon(tok=tok)
    off._prompt_reuse = None
    got = on.build_many(convs)
    assert as_data(got) == as_data(off.build_many(convs)) and sum(len(ss) for ss, _ in got) >= 30
    assert "prompt_reuse_refused" not in on.stats
    if name == "qwen":
        assert on.stats["prompt_prefix_reused"] >= 20


def test_only_the_shared_prefix_is_reused_off_switch_and_refusal():
    tok = tok_of("qwen", "qwen3")
    convs = corpus(40, seed=3)
    r = recon(tok=tok)
    r._prompt_reuse.shared = None  # the switch for this reuse alone
    want = as_data(r.build_many(convs))
    assert "prompt_prefix_reused" not in r.stats
    sp = recon(tok=family("mistral_sp", "mistral_v0_1"))  # SentencePiece: the proof does not hold
    assert sp._prompt_reuse is None
    sp.build_many(corpus(10, seed=3))
    assert "prompt_prefix_reused" not in sp.stats
    on = recon(tok=tok)
    assert as_data(on.build_many(convs)) == want and on.stats["prompt_prefix_reused"] > 0


def test_the_prefix_cache_stays_within_its_bounds():
    tok = tok_of("llama3", "llama3_1")
    convs = corpus(60, seed=5)
    want = as_data(recon(tok=tok).build_many(convs))
    r = recon(tok=tok)
    small = r._prompt_reuse.shared = PrefixCache(max_entries=3, max_chars=12_000)
    sizes = []
    for k in range(0, len(convs), 10):
        assert as_data(r.build_many(convs[k : k + 10])) == want[k : k + 10]
        sizes.append((len(small), small.chars))
        assert small.chars == sum(len(key) for key in small._d)
    assert all(n <= 3 and c <= 12_000 for n, c in sizes) and max(n for n, _ in sizes) == 3
    assert r.stats["prompt_prefix_reused"] > 0


def test_many_system_prompts_in_turn_are_kept_once_seen_twice():
    """100 system prompts in turn: each prompt's own prefixes (past its user turn) are never
    kept, so the shared ones (2 per system prompt: before its <|im_end|> and before the
    user's <|im_start|>) stay in a cache of 256 entries until their prompt comes back; with
    all 4 cuts of every prompt kept (400 entries) none would."""
    tok = tok_of("smollm2", "chatml_generation")
    rng = random.Random(11)
    systems = [system_prompt(rng, 40) for _ in range(100)]
    convs = [
        dict(
            messages=[
                {"role": "system", "content": systems[i % 100]},
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ],
            sample_id=f"c{i}",
        )
        for i in range(400)
    ]
    off = recon(tok=tok)
    off._prompt_reuse = None
    want = as_data(off.build_many(convs))
    r = recon(tok=tok)
    cache = r._prompt_reuse.shared = PrefixCache(max_entries=256)
    assert as_data(r.build_many(convs)) == want
    # first round: hashes noted; second: kept; third and fourth: reused
    assert r.stats["prompt_prefix_reused"] == 200 and len(cache) == 200


def test_prefix_cache_drops_least_recently_used():
    c = PrefixCache(max_entries=2, max_chars=10)
    c.put("aaa", [1])
    c.put("bbb", [2])
    assert c.get("aaa") == [1]  # now the most recent
    c.put("ccc", [3])
    assert "bbb" not in c and "aaa" in c and "ccc" in c and c.chars == 6
    c.put("dddddd", [4])  # 12 characters in all: the oldest goes
    assert "aaa" not in c and c.chars == 9
    c.put("x" * 11, [5])  # longer than the whole bound: not kept
    assert "x" * 11 not in c and len(c) == 2
    seen = PrefixCache(max_seen=2)
    # kept the second time; "c" pushes out the oldest hash ("a"), "a" then "b", "b" then "c"
    assert [seen.worth_keeping(k) for k in "abacab"] == [False, False, True, False, False, False]
    assert seen.worth_keeping("b") and len(seen._seen) == 2


@pytest.mark.parametrize(
    "name,template", [("qwen", "qwen3"), ("llama3", "llama3_1"), ("deepseek", "deepseek_r1_distill")]
)
def test_the_ids_remembered_for_a_prefix_are_the_prefix_alone(name, template):
    """What the cache keeps for text[:c] (the text's ids before the cut token's n-th id)
    are encode(text[:c]), and encode(text[:c]) + encode(rest) is the whole of any text
    starting with text[:c] and a cut token."""
    tok = family(name, template)
    reuse = reuse_of(name, template)

    @SETTINGS
    @given(texts(name, template), texts(name, template))
    def check(text, other):
        whole = encode(tok, text)
        for c, sid, n in reuse.cut_points(text, 0, 50):
            assert any(text.startswith(s, c) and i == sid for s, i in reuse.cuts.items())
            at = _nth(whole, sid, n)
            assert at is not None and whole[:at] == encode(tok, text[:c]), (text, c)
            s = list(reuse.cuts)[(c + len(other)) % len(reuse.cuts)]  # any cut token may follow
            t = text[:c] + s + other
            assert whole[:at] + encode(tok, t[c:]) == encode(tok, t), (text, c, other)

    check()


@pytest.mark.slow  # spawns a worker process that imports transformers
def test_worker_processes_keep_their_own_prefix_cache_same_samples():
    from distill.core.conversation import Conversation
    from orchestrator.build_pool import ParallelBuilder

    tok = tok_of("qwen", "qwen3")
    convs = [Conversation(**c) for c in corpus(80, seed=7)]
    off = recon(tok=tok)
    off._prompt_reuse = None
    want = as_data(off.build_many(convs))
    r = recon(tok=tok)
    with ParallelBuilder(r, 1, min_batch=2, start_after=0) as b:
        got = b.build(convs)
        assert len(b.worker_pids()) == 1
        again = b.build(convs[::-1])  # another split: each process's cache holds other prefixes
    assert as_data(got) == want and as_data(again) == want[::-1]
    # the worker's stats are added to r's: both processes reused the shared prefix
    assert r.stats["prompt_prefix_reused"] > len(convs) and "prompt_reuse_refused" not in r.stats
