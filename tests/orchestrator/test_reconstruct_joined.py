"""Texts encoded in runs joined by a separator token, each as if alone (reconstruction/joined.py)."""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.reconstruct_helpers import convo, masked_text, recon
from tokenizers import AddedToken

from orchestrator.reconstruction.joined import SegmentJoiner, _candidates
from orchestrator.reconstruction.reconstructor import RAMP_DOWN, RAMP_UP, pipeline_chunks


def unjoined(**policy):
    """A Reconstructor that encodes every segment alone (no separator)."""
    r = recon(**policy)
    r._joiner = SegmentJoiner(r.backend, {}, r.template)
    return r


CONVERSATIONS = [
    convo(("q1", "a<|im_end|> b"), ("  q2", "\n two"), ("q3", "x <|im_end|><|im_end|>y"), system="S"),
    convo(("café", "  lead and trail  "), ("\n\n", " 😀 42"), ("x", "\r\nend\n")),
    # the separator's own text in content: that sample is encoded one segment at a time
    convo(("q", "before <|endoftext|> after"), ("q2", "fine")),
]


@pytest.mark.parametrize("msgs", CONVERSATIONS)
def test_joined_segments_equal_segments_encoded_alone(msgs):
    joined, alone = recon(special_tokens_in_content="allow"), unjoined(special_tokens_in_content="allow")
    assert joined._joiner.text == "<|endoftext|>" and alone._joiner.id is None
    samples, rejections = joined.build(msgs, sample_id="m")
    assert rejections == [] and samples == alone.build(msgs, sample_id="m")[0]
    assert "segments_encoded_again" not in joined.stats  # every cut was right the first time
    assert masked_text(joined.tokenizer, samples[0]).count("<|im_end|>") >= 2


class Spy:
    """The tokenizer, with the batches given to encode_batch_fast kept."""

    def __init__(self, backend):
        self.backend, self.batches = backend, []

    def encode_batch_fast(self, texts, **kw):
        self.batches.append(list(texts))
        return self.backend.encode_batch_fast(texts, **kw)


def test_runs_of_texts_are_joined_and_a_text_holding_the_separator_is_encoded_alone():
    r = recon()
    joiner, spy = r._joiner, Spy(r.backend)
    joiner.GROUP = 3
    texts = ["a", " b", "", "c\n", "d<|endoftext|>", "e", "  f"]
    stats: collections.Counter = collections.Counter()
    got = joiner.encode(spy, texts, stats)
    assert got == [e.ids for e in r.backend.encode_batch_fast(texts, add_special_tokens=False)]
    assert spy.batches == [["a<|endoftext|> b<|endoftext|>", "c\n", "d<|endoftext|>", "e<|endoftext|>  f"]]
    assert not stats


def test_a_cut_in_the_wrong_place_is_encoded_again_segment_by_segment():
    r, alone = recon(), unjoined()
    real = r._joiner.split

    def off_by_one(ids, n):  # move the first id of the second segment into the first
        parts = real(ids, n)
        return [parts[0] + parts[1][:1], parts[1][1:]] + parts[2:]

    r._joiner.split = off_by_one
    msgs = convo(("q1", "a1"), ("q2", "a2"))
    assert r.build(msgs, sample_id="x") == alone.build(msgs, sample_id="x")
    assert r.stats["segments_encoded_again"] == 1


def test_a_separator_not_found_where_placed_is_encoded_again():
    r, alone = recon(), unjoined()
    r._joiner.split = lambda ids, n: None
    msgs = convo(("q1", "a1"), ("q2", "a2"))
    assert r.build(msgs, sample_id="x") == alone.build(msgs, sample_id="x")
    assert r.stats["segments_encoded_again"] == 4  # the prompt, two turns and the context between


def test_build_many_joins_texts_of_several_samples():
    msgs = [convo(("q%d" % i, " a%d" % i), ("u", "\nb")) for i in range(40)]
    r, alone = recon(), unjoined()
    spy = Spy(r.backend)
    r.backend = spy
    got = r.build_many([dict(messages=m, sample_id=str(i)) for i, m in enumerate(msgs)])
    r.backend = spy.backend
    assert got == alone.build_many([dict(messages=m, sample_id=str(i)) for i, m in enumerate(msgs)])
    assert all(not rej and len(s) == 1 for s, rej in got)
    texts = [t for b in spy.batches for t in b]
    assert all(t.count("<|endoftext|>") == r._joiner.GROUP - 1 for t in texts[:-1])


def test_split_cuts_at_the_separator_and_refuses_too_few():
    r = recon()
    sid = r._joiner.id
    assert r._joiner.split([1, sid, sid, 2, 3], 3) == [[1], [], [2, 3]]
    assert r._joiner.split([1, 2], 2) is None


def test_candidates_are_special_tokens_that_take_no_whitespace_template_ones_last():
    added = {
        1: AddedToken("<a>", special=True, normalized=False),
        2: AddedToken("<b>", special=True, normalized=False, lstrip=True),
        3: AddedToken("<c>", special=True, normalized=False, rstrip=True),
        4: AddedToken("<d>", special=False, normalized=False),
        5: AddedToken("<e>", special=True, normalized=True),
        6: AddedToken("<f>", special=True, normalized=False),
    }
    assert [t for t, _ in _candidates(added, "{{ '<a>' }}")] == [6, 1]


def test_a_token_the_template_writes_from_a_variable_is_not_the_separator():
    """Llama 3.1's template writes bos_token (from a variable, not its source) at the start of
    every prompt: with it as the separator every prompt was an input of its own."""
    from support import tokenizer_builds

    tok = tokenizer_builds.load_or_skip("llama3", "llama3_1")
    r = recon(tok=tok)
    assert r._joiner.text is not None and r._joiner.text not in r.probe_render
    msgs = [convo((f"q{i}", f"a{i}"), ("u", "b")) for i in range(20)]
    spy = Spy(r.backend)
    r.backend = spy
    got = r.build_many([dict(messages=m, sample_id=str(i)) for i, m in enumerate(msgs)])
    r.backend = spy.backend
    assert all(not rej and len(s) == 1 for s, rej in got)
    texts = [t for b in spy.batches for t in b]
    # 20 prompts and 60 later segments in runs of GROUP texts, no prompt alone (with bos: 24 inputs)
    assert len(texts) == -(-80 // r._joiner.GROUP)
    assert got == recon(tok=tok).build_many([dict(messages=m, sample_id=str(i)) for i, m in enumerate(msgs)])


def test_a_tokenizer_whose_pieces_depend_on_their_place_gets_no_separator():
    """Metaspace with prepend_scheme "first": a text alone gets the dummy prefix, the same
    text after a separator does not, so the probe refuses every separator."""
    from support import tokenizer_builds

    tok = tokenizer_builds.load_or_skip("mistral_sp_metaspace", "mistral_v0_1")
    backend = tok.backend_tokenizer
    assert SegmentJoiner(backend, tok.added_tokens_decoder, tok.chat_template).id is None
    # and the rule is real: "</s>Hello" gives the text after the separator no prefix
    sid = backend.token_to_id("</s>")
    whole = backend.encode("x</s>Hello", add_special_tokens=False).ids
    alone = backend.encode("Hello", add_special_tokens=False).ids
    assert whole[whole.index(sid) + 1 :] != alone


# -- the argument, tested on random texts: joined and cut == each text alone --------------

_TOKENIZERS: dict[str, object] = {}


def _joiner_of(name: str):
    """(tokenizer, SegmentJoiner) of a real tokenizer: byte-level SmolLM2, Qwen (NFC
    normaliser), Llama 3; SentencePiece Mistral v0.1 with its dummy prefix on every piece
    of text, and ("mistral_sp:copy") its copy without it, which trained turns take."""
    if name not in _TOKENIZERS:
        if name == "smollm2":
            r = recon()
        else:
            from support import tokenizer_builds

            base = name.split(":")[0]
            tok = tokenizer_builds.load_or_skip(
                base, {"qwen": "qwen2_5", "llama3": "llama3_1"}.get(base, "mistral_v0_1")
            )
            r = recon(tok=tok)
        _TOKENIZERS[name] = (r._continuation, r._cont_joiner) if name.endswith(":copy") else (r.backend, r._joiner)
    return _TOKENIZERS[name]


_PIECES = st.sampled_from(
    [
        " ",
        "  ",
        "\n",
        "\n\n",
        "\r\n",
        "\t",
        "a",
        "A1",
        "42",
        "'s",
        "e\u0301",
        "\u0301",
        "東京",
        "😀",
        "<|im_end|>",
        "<|endoftext|>",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|im_",
        "end|>",
        ".",
        "...",
        "é",
        "ﬁ",
        "\u2581",
        "</s>",
        "<s>",
        "<unk>",
        " [INST] ",
    ]
)
_TEXTS = st.lists(st.one_of(st.lists(_PIECES, max_size=6).map("".join), st.text(max_size=12)), min_size=1, max_size=40)


@settings(
    max_examples=int(os.environ.get("RECONSTRUCT_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(texts=_TEXTS)
@pytest.mark.parametrize("name", ["smollm2", "qwen", "llama3", "mistral_sp", "mistral_sp:copy"])
def test_random_texts_joined_and_cut_are_each_text_alone(name, texts):
    backend, joiner = _joiner_of(name)
    assert joiner.id is not None
    stats: collections.Counter = collections.Counter()
    alone = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    assert joiner.encode(backend, texts, stats) == alone
    assert not stats  # the separator was always found where it was placed


def test_helper_thread_only_runs_the_tokenizer():
    # build_many keeps the tokenizer busy: on the byte-level path its helper thread makes
    # only the joined inputs' encode call (which releases the GIL); joining, cutting and the
    # prompts' resolution run on the calling thread, beside the next chunk's call.
    import threading

    r, ref = recon(), unjoined()
    calls = collections.Counter()

    class Spy:
        def __init__(self, backend):
            self.backend = backend

        def encode_batch_fast(self, texts, **kw):
            calls["encode", threading.current_thread() is threading.main_thread()] += 1
            calls["prompts encoded"] += sum(t.count("shared ") for t in texts)
            sizes.append(sum(t.count("answer ") for t in texts))  # one trained turn per conversation
            return self.backend.encode_batch_fast(texts, **kw)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    cut_all = r._joiner.cut_all

    def spied_cut_all(*a):
        calls["cut", threading.current_thread() is threading.main_thread()] += 1
        return cut_all(*a)

    sizes: list[int] = []
    r.backend, r._joiner.cut_all = Spy(r.backend), spied_cut_all
    # prompts repeat across chunks: one the chunk before has not yet cached is taken from
    # that chunk's jobs once they have resolved, not encoded again
    convs = [dict(messages=convo((f"shared {i % 3}", f"answer {i}")), sample_id=f"c{i}") for i in range(70)]
    assert r.build_many(convs) == [ref.build(**c) for c in convs]
    chunks = len(pipeline_chunks(len(convs), r.PIPELINE_CHUNK))
    assert calls == {("encode", False): chunks, ("cut", True): chunks, "prompts encoded": 3}
    assert sizes == pipeline_chunks(len(convs), r.PIPELINE_CHUNK) == [4, 16, 17, 17, 12, 4]


@pytest.mark.parametrize("n", [0, 1, 32, 33, 35, 36, 37, 64, 68, 69, 128, 257, 1000])
@pytest.mark.parametrize("chunk", [32, 1, 4, 5, 16])
def test_pipeline_chunks_are_small_at_both_ends(n, chunk):
    # the tokenizer waits while the first chunk is planned and Python finishes the last one
    # alone: small ends; the rest at most `chunk` and as even as can be
    sizes = pipeline_chunks(n, chunk)
    assert sum(sizes) == n and (n == 0 or min(sizes) > 0) and max(sizes) <= max(chunk, n if n <= chunk else 0)
    if n <= chunk:
        assert sizes == [n]
        return
    up, down = [x for x in RAMP_UP if x < chunk], [x for x in RAMP_DOWN if x < chunk]
    if sum(up) + sum(down) < n:
        assert sizes[: len(up)] == up and sizes[len(sizes) - len(down) :] == down
        middle = sizes[len(up) : len(sizes) - len(down)]
        assert middle and max(middle) - min(middle) <= 1
    if chunk == 32:
        assert sizes[0] == RAMP_UP[0] and sizes[-1] == RAMP_DOWN[-1]
