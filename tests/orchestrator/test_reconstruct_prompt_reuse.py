"""Prompt ids reused across split samples (orchestrator/reconstruction/prompt_reuse.py).

Real tokenizers (tests/support/tokenizer_builds.py, SmolLM2's): the cut argument checked
on random texts for Qwen (NFC normaliser), Llama 3.2, DeepSeek (normalised added tokens,
empty normaliser) and SmolLM2 (special tokens also in the model's vocabulary); build_many
gives the same samples with the reuse on and off on Qwen3, DeepSeek-R1-Distill and
SmolLM2 + a Qwen3-style template; tokenizers where the argument fails do not reuse.
"""

from __future__ import annotations

import functools
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.reconstruct_helpers import recon, tokenizer_with

from orchestrator.reconstruction.prompt_reuse import PromptReuse, _assemble, prompt_reuse, why_not_reuse

SMOL = ("smollm2", "reasoning_rewrite")  # SmolLM2's tokenizer, a Qwen3-style template that splits
FAMILIES = [("qwen", "qwen3"), ("llama3", "llama3_1"), ("deepseek", "deepseek_r1_distill"), SMOL]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=None)
def family(name: str, template: str | None = None):
    from support import tokenizer_builds

    if name == "smollm2":
        return tokenizer_with(template)

    return tokenizer_builds.load_or_skip(name, template)


@functools.lru_cache(maxsize=None)
def reuse_of(name: str, template: str) -> PromptReuse:
    r = recon(tok=family(name, template))
    assert r._prompt_reuse is not None and r._prompt_reuse.cuts
    return r._prompt_reuse


def encode(tok, text: str) -> list[int]:
    return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


WORDS = ["hello", "Hello", "world", "it's", "don't", "42", "3.14", "x_y", "café", "naïve", "e\u0301", ">\u0338"]
SPACES = [" ", "  ", "\n", "\n\n", " \n", "\t", "   \n\n", "\r\n"]
OTHER = ["你好", "世界", "🎉", "👍🏽", "ü", "\u0301", "\u0338", "|", "<", ">", "<|", "|>", "<｜", "｜>", "▁"]


def pieces(name: str, template: str):
    tok = family(name, template)
    added = [t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values()]
    cuts = list(reuse_of(name, template).cuts)
    fragments = [c[: len(c) // 2] for c in cuts] + [c[len(c) // 2 :] for c in cuts]
    return st.sampled_from(WORDS + SPACES + OTHER + cuts + fragments + added[:40])


def texts(name: str, template: str):
    return st.lists(pieces(name, template), max_size=40).map("".join)


@pytest.mark.parametrize("name,template", FAMILIES)
def test_the_ids_of_a_text_are_those_of_its_two_sides_at_every_cut(name, template):
    """ids(text) == ids(text[:c]) + ids(text[c:]) wherever a cut token starts."""
    tok = family(name, template)
    cuts = reuse_of(name, template).cuts

    @SETTINGS
    @given(texts(name, template))
    def check(text):
        whole = encode(tok, text)
        for s in cuts:
            c = text.find(s)
            while c != -1:
                assert encode(tok, text[:c]) + encode(tok, text[c:]) == whole, (s, c, text)
                c = text.find(s, c + 1)

    check()


@pytest.mark.parametrize("name,template", FAMILIES)
def test_a_prompt_assembled_from_an_earlier_one_is_encoded_whole(name, template):
    """The cut the code chooses for two texts with a common start gives the whole text's ids."""
    tok = family(name, template)
    reuse = reuse_of(name, template)
    cut_tokens = st.sampled_from(list(reuse.cuts))

    @SETTINGS
    @given(texts(name, template), cut_tokens, texts(name, template), texts(name, template), texts(name, template))
    def check(head, s, mid, prev_tail, tail):
        prev, text = "x" + head + s + mid + prev_tail, "x" + head + s + mid + tail
        plan = reuse.cut(prev, text)
        assert plan is not None  # s lies wholly in the common part, after position 0
        c, sid, n = plan
        assert c >= len(head) + 1 and text.startswith(prev[:c])
        got = _assemble(encode(tok, prev), sid, n, encode(tok, text[c:]))
        assert got == encode(tok, text), (prev, text, c)

    check()


def conversation(i: int, turns: int) -> dict:
    """A multi-turn conversation with reasoning (so Qwen3 / R1-Distill split it per turn)."""
    text = ["plain", "two  spaces ", "para\n\nbreak", "trailing  \n", "你好 世界", "emoji 🎉👍🏽", "café naïve"]
    msgs = [{"role": "system", "content": f"System {i % 3}."}] if i % 2 else []
    for k in range(turns):
        msgs.append({"role": "user", "content": f"Q{k} of {i}: {text[(i + k) % len(text)]}"})
        msgs.append(
            {"role": "assistant", "content": f"A{k} {text[(i * 3 + k) % len(text)]}", "reasoning_content": f"R{k} ."}
        )
    return dict(messages=msgs, sample_id=f"c{i}")


def as_data(results):
    return [([vars(s) for s in ss], [vars(r) for r in rr]) for ss, rr in results]


@pytest.mark.parametrize("name,template", [("qwen", "qwen3"), ("deepseek", "deepseek_r1_distill"), SMOL])
def test_build_many_gives_the_same_samples_with_and_without_the_reuse(name, template):
    tok = family(name, template)
    convs = [conversation(i, 1 + i % 6) for i in range(70)]  # more than one pipeline chunk
    on, off = recon(tok=tok), recon(tok=tok)
    off._prompt_reuse = None
    got, want = on.build_many(convs), off.build_many(convs)
    assert as_data(got) == as_data(want)
    n_samples = sum(len(ss) for ss, _ in got)
    assert n_samples == sum(1 + i % 6 for i in range(70)) and all(not rr for _, rr in got)
    # every split sample after a conversation's first reuses its predecessor's prompt ids
    assert on.stats["prompt_reused"] == n_samples - len(convs) > 0
    assert "prompt_reused" not in off.stats and "prompt_reuse_refused" not in on.stats
    for ss, _ in got:  # and they are the whole prompt's ids
        for s in ss:
            prompt = tok.backend_tokenizer.decode(s.prompt_ids, skip_special_tokens=False)
            assert s.prompt_ids == encode(tok, prompt)
    # again on the same reconstructor: the prompts now come from the prompt cache
    assert as_data(on.build_many(convs)) == as_data(want)
    assert on.stats["prompt_reused"] == n_samples - len(convs)


def edited(tmp_path, name: str, template: str, edit) -> object:
    """The tokenizer `name` with its tokenizer.json's added tokens changed by `edit`."""
    from support import tokenizer_builds
    from transformers import PreTrainedTokenizerFast

    family(name, template)
    folder = tmp_path / name
    shutil.copytree(tokenizer_builds.tokenizer_dir(name), folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    edit(spec["added_tokens"])
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok.chat_template = family(name, template).chat_template
    return tok


def test_a_cut_token_that_strips_whitespace_is_refused(tmp_path):
    def lstrip(tokens):
        for t in tokens:
            if t["content"] == "<|im_start|>":
                t["lstrip"] = True

    tok = edited(tmp_path, "qwen", "qwen3", lstrip)
    reuse = recon(tok=tok)._prompt_reuse
    assert "<|im_start|>" not in reuse.cuts and "lstrip" in reuse.refused["<|im_start|>"]
    # why: the token takes the whitespace before it, which text[:c] alone tokenises as text
    text = "a \n<|im_start|>b"
    c = text.index("<|im_start|>")
    assert encode(tok, text) != encode(tok, text[:c]) + encode(tok, text[c:])


def test_an_added_token_overlapping_the_cut_tokens_turns_the_reuse_off(tmp_path):
    def overlap(tokens):
        tokens.append(
            dict(id=max(t["id"] for t in tokens) + 1, content="zz<", single_word=False, lstrip=False, rstrip=False)
            | dict(normalized=False, special=False)
        )

    tok = edited(tmp_path, "qwen", "qwen3", overlap)
    r = recon(tok=tok)
    # "zz<" ends with "<", which every candidate cut token starts with: none is safe
    assert r._prompt_reuse is None
    refused = PromptReuse(tok.backend_tokenizer, ["<|im_start|>", "<think>"]).refused
    assert refused == {s: "added token 'zz<' overlaps it ('<')" for s in ["<|im_start|>", "<think>"]}
    # why: "zz<" matches first, so <|im_start|> is no token there, yet would be after the cut
    text = "zz<|im_start|>x"
    assert encode(tok, text) != encode(tok, "zz") + encode(tok, text[2:])
    convs = [conversation(i, 3) for i in range(4)]
    assert r.build_many(convs) and r.stats["prompt_reused"] == 0 and r.stats["split"] == 4


def test_sentencepiece_tokenizer_takes_the_old_path():
    tok = family("mistral_sp", "mistral_v0_1")
    r = recon(tok=tok)
    assert r._prompt_reuse is None and r._continuation is not None
    assert why_not_reuse(tok.backend_tokenizer, False) == (
        "not a byte-level tokenizer (a dummy-prefix rule or another decoder)"
    )
    assert prompt_reuse(tok.backend_tokenizer, tok.chat_template, True) is None  # <s>, </s>: model vocabulary


def test_a_tokenizer_that_does_not_split_special_tokens_or_truncates_does_not_reuse():
    from support import tokenizer_builds

    family("qwen", "qwen3")
    backend = tokenizer_builds.load("qwen", "qwen3").backend_tokenizer  # a fresh copy to change
    assert why_not_reuse(backend, True) is None
    backend.encode_special_tokens = True
    assert "encode_special_tokens" in why_not_reuse(backend, True)
    assert prompt_reuse(backend, "<|im_start|>", True) is None
    backend.encode_special_tokens = False
    backend.enable_truncation(64)
    assert why_not_reuse(backend, True) == "the tokenizer truncates or pads"


def test_an_added_token_that_could_start_inside_a_cut_token_refuses_it(tmp_path):
    def inner(tokens):
        tokens.append(
            dict(id=max(t["id"] for t in tokens) + 1, content="start|>", single_word=False, lstrip=False, rstrip=False)
            | dict(normalized=False, special=False)
        )

    tok = edited(tmp_path, "qwen", "qwen3", inner)
    reuse = recon(tok=tok)._prompt_reuse
    assert reuse.refused["<|im_start|>"] == "added token 'start|>' overlaps it ('start|>')"
    assert "<|im_end|>" in reuse.cuts
