"""SentencePiece students at tokenisation speed: the self-check's token bytes
(reconstruction/sp_bytes.py) and texts joined by a separator for both of the tokenizers
a dummy-prefix rule uses (pipeline.py, joined.py), on Mistral v0.1's real tokenizer."""

from __future__ import annotations

import json
import random
import threading

import pytest
from support import tokenizer_builds

from orchestrator.reconstruction.joined import SegmentJoiner
from orchestrator.reconstruction.reconstructor import pipeline_chunks
from orchestrator.reconstruction.sp_bytes import sentencepiece_bytes_uncached


def _tok(name: str = "mistral_sp", template: str = "mistral_v0_1"):
    return tokenizer_builds.load_or_skip(name, template)


def _recon(tok=None, **policy):
    from support.reconstruct_helpers import recon

    return recon(tok=tok if tok is not None else _tok(), **policy)


WORDS = "Hello world café naïve 東京 😀 ✓ Ω 42 3.14 x=y+1 (see) [note] {k} 'q' \"dq\" ü ⅞ 鑫 \t tab".split(" ")


def _conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 4)):
            msgs.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))})
            lead = rng.choice(["", "", "\n", "x\n\n"])
            msgs.append({"role": "assistant", "content": lead + " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))})
        out.append(msgs)
    return out


class DecodeSpy:
    """The tokenizer, counting the sequences given to decode_batch."""

    def __init__(self, backend):
        self.backend, self.decoded = backend, 0

    def decode_batch(self, seqs, **kw):
        self.decoded += len(seqs)
        return self.backend.decode_batch(seqs, **kw)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def _without_shortcuts(tok):
    """A Reconstructor that decodes every sample for the self-check and encodes every text alone."""
    r = _recon(tok)
    r._sp_bytes = None
    r._joiner = SegmentJoiner(r.backend, {}, r.template)
    r._cont_joiner = SegmentJoiner(r._continuation, {}, r.template)
    return r


def test_token_bytes_agree_with_the_decoder():
    tok = _tok()
    backend = tok.backend_tokenizer
    table = sentencepiece_bytes_uncached(backend, "</s>")
    assert table is not None
    ids = tok.convert_tokens_to_ids
    assert table[ids("▁Hello")] == b" Hello" and table[ids("<0x0A>")] == b"\n" and table[ids("</s>")] == b"</s>"
    # the 13 byte tokens that never occur in valid UTF-8 are left unchecked (None): no text matches them
    assert sum(t is None for t in table) == 13 and table[ids("<0xFF>")] is None
    # random token runs whose bytes are valid UTF-8 decode (after an anchor) to exactly those bytes
    rng = random.Random(1)
    aid = ids("</s>")
    runs = []
    while len(runs) < 300:
        run = [rng.randrange(3, len(table)) for _ in range(rng.randint(1, 8))]
        if all(table[i] is not None for i in run):
            try:
                runs.append((run, b"".join(table[i] for i in run).decode("utf-8")))
            except UnicodeDecodeError:
                continue
    got = backend.decode_batch([[aid] + run for run, _ in runs], skip_special_tokens=False)
    assert got == ["</s>" + text for _, text in runs]


def test_other_decoders_get_no_table():
    spec = json.loads(_tok().backend_tokenizer.to_str())
    from tokenizers import Tokenizer

    spec["decoder"]["decoders"][3]["start"] = 2  # strips two leading spaces: not the chain we model
    assert sentencepiece_bytes_uncached(Tokenizer.from_str(json.dumps(spec)), "</s>") is None
    assert sentencepiece_bytes_uncached(_tok().backend_tokenizer, "</none>") is None  # no such anchor
    # the same decoder with the dummy prefix only at the input's start ("first"): a table too
    assert _recon(_tok("mistral_sp_metaspace"))._sp_bytes is not None
    from support.reconstruct_helpers import tokenizer_with

    assert sentencepiece_bytes_uncached(tokenizer_with(None).backend_tokenizer, "<|im_end|>") is None  # byte-level


def test_good_samples_are_checked_without_decoding_and_equal_the_decoded_check():
    tok = _tok()
    fast, slow = _recon(tok), _without_shortcuts(tok)
    assert fast._sp_bytes is not None and fast._joiner.id is not None and fast._cont_joiner.id is not None
    spy = DecodeSpy(fast.backend)
    fast.backend = spy
    convs = [dict(messages=m, sample_id=str(i)) for i, m in enumerate(_conversations(60))]
    got = fast.build_many(convs)
    assert got == slow.build_many(convs)
    assert sum(len(s) for s, _ in got) == 60 and all(not rej for _, rej in got)
    assert spy.decoded == 0 and slow.stats["samples"] == 60
    assert "segments_encoded_again" not in fast.stats


def test_a_token_that_differs_from_the_text_is_still_rejected():
    r = _recon()
    results: list = []
    pending = r._prepare_chunk([dict(messages=_conversations(1)[0], sample_id="m")], 0, results)
    ids = r._encode([p for _, p in pending])
    ps = [p for _, p in pending]
    assert r._roundtrip(ps, ids) == [None]
    hello, bare = r.backend.token_to_id("▁Hello"), r.backend.token_to_id("Hello")
    for seg in (1, len(ids[0]) - 1):  # a trained turn, then the last segment
        wrong = [list(x) for x in ids[0]]
        wrong[seg] = [bare] + wrong[seg]  # an extra token: "Hello" before the turn
        (check,) = r._roundtrip(ps, [wrong])
        assert check is not None and check.reason == "roundtrip_mismatch"
    # a dummy space where the student emits none: "▁Hello" in place of "Hello"
    wrong = [list(x) for x in ids[0]]
    wrong[1] = [hello] + wrong[1]
    assert r._roundtrip(ps, [wrong])[0].reason == "roundtrip_mismatch"


def test_raw_text_of_an_empty_prompt_is_left_to_the_decoder():
    rule = _recon()._prefix_rule
    for known in (False, True):  # an empty prompt that passed the decoded check once, too
        assert rule.raw_utf8(["", " A</s>"], [False, True], [b"", b" A</s>"], known) is None
    assert rule.raw_utf8(
        ["<s> [INST] Q [/INST]", "A</s>", "ctx"], [False, True, False], [b"", b"A</s>", b"ctx"], False
    ) == [
        b"<s>  [INST] Q [/INST]",
        b"A</s>",
        b" ctx",
    ]


def test_cut_in_the_wrong_place_on_the_prefix_less_copy_is_encoded_again():
    tok = _tok()
    r, ref = _recon(tok), _without_shortcuts(tok)
    real = r._cont_joiner.split

    def off_by_one(ids, n):  # the second trained turn's first id moves into the first
        parts = real(ids, n)
        return [parts[0] + parts[1][:1], parts[1][1:]] + parts[2:]

    r._cont_joiner.split = off_by_one
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "second answer"},
    ]
    assert r.build(msgs, sample_id="x") == ref.build(msgs, sample_id="x")
    assert r.stats["segments_encoded_again"] == 1


def test_the_helper_thread_only_runs_the_two_tokenizers():
    r = _recon()
    seen = []

    class Spy:
        def __init__(self, backend):
            self.backend = backend

        def encode_batch_fast(self, texts, **kw):
            seen.append(threading.current_thread() is threading.main_thread())
            return self.backend.encode_batch_fast(texts, **kw)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    ref = _without_shortcuts(r.tokenizer)
    r.backend, r._continuation = Spy(r.backend), Spy(r._continuation)
    convs = [dict(messages=m, sample_id=str(i)) for i, m in enumerate(_conversations(70, seed=3))]
    assert r.build_many(convs) == ref.build_many(convs)
    # one call per chunk for each of the two (prompts and context; trained turns), none on this thread
    assert len(seen) == 2 * len(pipeline_chunks(len(convs), r.PIPELINE_CHUNK)) and not any(seen)


@pytest.mark.parametrize("name", ["mistral_sp", "mistral_sp_metaspace"])
def test_both_prefix_rules_give_the_samples_of_the_unjoined_decoded_path(name):
    tok = _tok(name)
    r, ref = _recon(tok), _without_shortcuts(tok)
    spy = DecodeSpy(r.backend)
    r.backend = spy
    convs = [dict(messages=m, sample_id=str(i)) for i, m in enumerate(_conversations(40, seed=5))]
    got = r.build_many(convs)
    assert got == ref.build_many(convs) and all(not rej for _, rej in got)
    assert spy.decoded == 0  # every sample's bytes matched: no decoding
    # "first": the tokenizer's own pieces depend on their place, so it gets no separator
    assert (r._joiner.id is None) == (name == "mistral_sp_metaspace") and r._cont_joiner.id is not None


def test_an_empty_prompt_is_decoded_every_time():
    # nothing before the first turn: the decoder's strip reaches the turn's own first space,
    # so a turn " Hi" cannot be told apart from "Hi" - rejected, also after a prompt "" passed
    tok = _tok()
    tok.chat_template = "{%- for m in messages %}{{- m['content'] + eos_token }}{%- endfor %}"
    r = _recon(tok)
    ok, _ = r.build([{"role": "assistant", "content": "Hello"}], sample_id="a")
    assert len(ok) == 1
    samples, rejections = r.build([{"role": "assistant", "content": " Hi"}], sample_id="b")
    assert samples == [] and [x.reason for x in rejections] == ["roundtrip_mismatch"]


def _gemma_style():
    """Mistral v0.1's model with Gemma's kind of pipeline: no dummy prefix (the normaliser
    only turns spaces into "▁") and a decoder that strips no space (no package here ships
    a Gemma tokenizer)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = _tok()
    spec = json.loads(base.backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    spec["decoder"]["decoders"] = [d for d in spec["decoder"]["decoders"] if d["type"] != "Strip"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = base.chat_template
    return tok


def test_a_decoder_without_the_strip_gets_its_table_without_a_rule():
    tok = _gemma_style()
    fast, slow = _recon(tok), _without_shortcuts(tok)
    assert fast._prefix_rule.kind == "none" and fast._continuation is None
    assert fast._sp_bytes is not None and fast._sp_bytes[tok.convert_tokens_to_ids("▁Hello")] == b" Hello"
    assert sentencepiece_bytes_uncached(tok.backend_tokenizer, "</s>", strip=True) is None  # the chain differs
    spy = DecodeSpy(fast.backend)
    fast.backend = spy
    convs = [dict(messages=m, sample_id=str(i)) for i, m in enumerate(_conversations(40, seed=7))]
    got = fast.build_many(convs)
    assert got == slow.build_many(convs) and all(not rej for _, rej in got)
    assert spy.decoded == 0
    # no dummy prefix: the answer's own space is the template's, one "▁"
    s = got[0][0][0]
    assert tok.convert_ids_to_tokens(s.completion_ids)[0].startswith("▁")


def test_first_rule_prompts_with_and_without_the_prefix():
    # "first": the tokenizer puts its dummy prefix before a prompt that starts with text,
    # none after a leading added token; the decoder drops that one space. Both pass by
    # bytes; a prompt starting with a space (the decoder would drop the text's own) does not.
    tok = _tok("mistral_sp_metaspace")
    r = _recon(tok)
    from orchestrator.reconstruction.plan import Pending
    from orchestrator.reconstruction.selfcheck import _ruled_bytes_match

    for prompt, ok in (("<s> [INST] Q [/INST]", True), ("[INST] Q [/INST]", True), (" Q", False), ("", False)):
        texts = [prompt, " A</s>"]
        p = Pending("x", texts, [t.encode() for t in texts], [False, True], False, False, {}, {})
        ids = [
            r.backend.encode(prompt, add_special_tokens=False).ids,
            r._continuation.encode(" A</s>", add_special_tokens=False).ids,
        ]
        assert _ruled_bytes_match(r._sp_bytes, r._prefix_rule, p, ids, False) is ok, prompt
        if ok:  # and the decoder agrees: the texts joined
            assert r.backend.decode(ids[0] + ids[1], skip_special_tokens=False) == prompt + " A</s>"
