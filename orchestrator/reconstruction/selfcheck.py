"""The self-check: decoding a sample's tokens must give back exactly what was rendered.

Part of `Reconstructor` (reconstructor.py sets the state used here). decode(prompt +
completion) must equal the rendered text and the decoded trained tokens the trained
text; else the sample is rejected (roundtrip_mismatch). With GPT-2's byte-level decoder
(SmolLM2, Llama 3, Qwen) the check compares token bytes from a table checked against
the tokenizer's own decoder (token_bytes) with the text's UTF-8, without decoding; with
a Llama-2-style SentencePiece decoder (Mistral v0.x, Llama 2, Phi-3) likewise with the
text the dummy-prefix rule says the tokens stand for, and with Gemma's (no dummy prefix)
with the text (sp_bytes.py); otherwise, and where
the bytes differ, it decodes with the tokenizer.
"""

from __future__ import annotations

import itertools
from operator import itemgetter
from typing import Any

from orchestrator.reconstruction.cache import per_tokenizer, put_bounded
from orchestrator.reconstruction.plan import Pending
from orchestrator.reconstruction.reasons import Reject
from orchestrator.segment_tokenize import PIECE, PrefixSpaceRule


class SelfCheck:
    """Checks tokenised samples against their texts (a mixin of Reconstructor)."""

    # Set by Reconstructor.__init__:
    PROMPT_CACHE_SIZE: int
    backend: Any  # the fast tokenizer's Rust tokenizer
    eot: str  # the template's end-of-turn token
    _token_bytes: list[bytes | None] | None  # token_bytes(backend)
    _sp_bytes: list[bytes | None] | None  # sp_bytes.sentencepiece_bytes(backend): "piece" rule, or none
    _verified_prompts: dict[str, None]  # prompt texts whose ids decoded back exactly
    _prefix_rule: PrefixSpaceRule | None
    _continuation: Any
    _anchor: list[int]  # the end-of-turn token's id with a dummy-prefix rule, else []

    def _roundtrip(self, pending: list["Pending"], seg_ids: list[list[list[int]]]) -> list["Reject | None"]:
        """Self-check of every sample: decoding all its tokens gives back the rendered
        text, and decoding its trained tokens gives back the trained text exactly.

        With a byte-level decoder (GPT-2 style) decoding is the UTF-8 of the tokens'
        bytes concatenated, so a sample whose every segment's token bytes are exactly its
        text's UTF-8 passes both checks; the bytes come from a table checked against the
        tokenizer's own decoder when the Reconstructor was made (token_bytes). Samples
        where that does not hold, and every sample with another decoder, are checked by
        decoding the whole and the trained token sequences with the tokenizer. A prompt
        text seen to pass is not checked again (tokenisation is deterministic: same ids)."""
        out: list[Reject | None] = [None] * len(pending)
        todo: Any = range(len(pending))
        table, rule = self._token_bytes, None
        if table is None and self._sp_bytes is not None:  # SentencePiece's token bytes (sp_bytes.py)
            table = self._sp_bytes
            # with a dummy-prefix rule, compared with the text the rule says the tokens stand for
            rule = self._prefix_rule if self._continuation is not None else None
        if table is not None:
            todo = []
            verified = self._verified_prompts
            for n, (p, ids) in enumerate(zip(pending, seg_ids)):
                known = p.texts[0] in verified
                if not (
                    bytes_match(table, p.utf8, ids, 1 if known else 0)
                    if rule is None
                    else _ruled_bytes_match(table, rule, p, ids, known)
                ):
                    todo.append(n)
                elif not known:
                    put_bounded(verified, p.texts[0], None, self.PROMPT_CACHE_SIZE)
        seqs = []
        for n in todo:
            ids = seg_ids[n]
            seqs.append(list(itertools.chain.from_iterable(ids)))
            seqs.append(self._anchor + [i for x, f in zip(ids, pending[n].trained) if f for i in x])
        decoded = self.backend.decode_batch(seqs, skip_special_tokens=False) if seqs else []
        rule = self._prefix_rule if self._continuation is not None else None
        for j, n in enumerate(todo):
            try:
                self._self_check(pending[n], decoded[2 * j], decoded[2 * j + 1], rule, self.eot)
            except Reject as r:
                out[n] = r
        return out

    @staticmethod
    def _self_check(
        p: "Pending", got_all: str, got_masked: str, rule: PrefixSpaceRule | None = None, anchor: str = ""
    ) -> None:
        """The tokens must say exactly what the template rendered (with a dummy-prefix
        rule: the prompt as the rule says its tokens decode, the trained tokens decoded
        after the end-of-turn token as an anchor; orchestrator/segment_tokenize.py)."""
        full = "".join(p.texts) if rule is None else rule.expected_text(p.texts, p.trained)
        masked = (anchor if rule is not None else "") + "".join(x for x, f in zip(p.texts, p.trained) if f)
        if got_all == full and got_masked == masked:
            return
        raise _mismatch(*((got_all, full) if got_all != full else (got_masked, masked)))

    def _checked_prompt(self, text: str, ids: list[int]) -> list[int]:
        """`ids`, a prompt's tokens alone (on-policy mode samples after them: Reconstructor.prompt_ids), checked
        as a sample's prompt is: the token bytes (byte-level decoders), else the decode, must give back the text
        (with a dummy-prefix rule, the text as the rule says the prompt's tokens decode); else roundtrip_mismatch,
        the rejection build gives a conversation with this prompt. A text seen to pass is not checked again."""
        if text in self._verified_prompts:
            return ids
        if self._token_bytes is None or not bytes_match(self._token_bytes, [text.encode()], [ids], 0):
            rule = self._prefix_rule if self._continuation is not None else None
            want = text if rule is None else rule.expected_prompt(text)
            got = self.backend.decode(ids, skip_special_tokens=False)
            if got != want:
                raise _mismatch(got, want)
        put_bounded(self._verified_prompts, text, None, self.PROMPT_CACHE_SIZE)
        return ids


def _mismatch(bad: str, ref: str) -> Reject:
    """roundtrip_mismatch: the decoded tokens `bad` where the text is `ref`, at the first char that differs."""
    pos = next((i for i, (x, y) in enumerate(zip(bad, ref)) if x != y), min(len(bad), len(ref)))
    return Reject(
        "roundtrip_mismatch",
        f"decoding the tokens differs from the rendered text at char {pos}: {bad[pos : pos + 20]!r} "
        f"vs {ref[pos : pos + 20]!r} (the tokenizer cannot represent this text exactly)",
    )


def _ruled_bytes_match(table: list, rule: PrefixSpaceRule, p: "Pending", ids: list[list[int]], known: bool) -> bool:
    """bytes_match for SentencePiece with a dummy-prefix rule (sp_bytes.py: the decoder drops
    the output's first space). "piece": against the text the rule says the tokens stand for
    (PrefixSpaceRule.raw_utf8). "first": the segments after the prompt have no prefix
    (their own text); the prompt's tokens stand for " " + its text (the prefix, which the
    decoder drops) or, for a prompt that neither is empty nor starts with a space, its
    text (the decoder then drops nothing): either way the decode is the texts joined."""
    if rule.kind == PIECE:
        want = rule.raw_utf8(p.texts, p.trained, p.utf8, known)
        return want is not None and bytes_match(table, want, ids, 1 if known else 0)
    if not bytes_match(table, p.utf8, ids, 1):
        return False
    u0 = p.utf8[0]
    if known:
        return True
    return bool(u0) and (
        bytes_match(table, [b" " + u0], ids, 0) or (not u0.startswith(b" ") and bytes_match(table, [u0], ids, 0))
    )


def bytes_match(table: list, utf8: list[bytes], seg_ids: list[list[int]], first: int) -> bool:
    """Whether the tokens of each segment (from `first` on) are exactly its text's UTF-8."""
    # itemgetter(*ids) looks all ids up in one C loop: ~35% less than map(table.__getitem__)
    # (one call per id); it returns the item itself for one id and cannot take none.
    try:
        for text, ids in zip(utf8[first:], seg_ids[first:]):
            n = len(ids)
            got = b"".join(itemgetter(*ids)(table)) if n > 1 else (table[ids[0]] if n else b"")
            if got != text:
                return False
        return True
    except (TypeError, IndexError):  # an id the table has no bytes for
        return False


def utf8_contexts(bytes_: Any) -> list[list[int]]:
    """For each of `bytes_`, a short valid UTF-8 sequence holding it; none for the bytes that
    never occur in valid UTF-8 (0xC0, 0xC1, 0xF5-0xFF): a token of such a byte can never
    match a text, so it needs no check."""
    out = []
    for b in bytes_:
        if b < 0x80:
            out.append([b])
        elif b < 0xC0:
            out.append([0xC2, b])
        elif 0xC2 <= b < 0xE0:
            out.append([b, 0x80])
        elif 0xE0 <= b < 0xF0:
            out.append([b, 0xA0 if b == 0xE0 else 0x80, 0x80])
        elif 0xF0 <= b < 0xF5:
            out.append([b, 0x90 if b == 0xF0 else 0x80, 0x80, 0x80])
    return out


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte in a
    token's string (printable Latin-1 characters for themselves, the other bytes
    shifted to U+0100 onwards)."""
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(0x100, 0x200))
    return {chr(b) if b in kept else chr(next(shifted)): b for b in range(256)}


_TOKEN_BYTES_CACHE: dict[tuple, list[bytes | None] | None] = {}


def token_bytes(backend) -> list[bytes | None] | None:
    """token_bytes_uncached, kept per process for each distinct tokenizer (cache.per_tokenizer);
    None at once for another kind of decoder, without the cache key's serialisation of the
    whole tokenizer (a SentencePiece tokenizer's table is keyed in sp_bytes.py)."""
    if not _is_byte_level(backend):
        return None
    return per_tokenizer(_TOKEN_BYTES_CACHE, backend, (), lambda: token_bytes_uncached(backend))


def token_bytes_uncached(backend) -> list[bytes | None] | None:
    """The bytes of every token id, when the tokenizer's decoder is exactly GPT-2's
    byte-level one (SmolLM2, Llama 3, Qwen): that decoder maps each character of each
    token's string to a byte (or, for a token with a character outside the alphabet,
    takes the string's UTF-8) and decodes the concatenation as UTF-8, so the bytes of a
    token sequence are the concatenation of the table's entries.

    Nothing here is taken on trust: the alphabet is checked on the decoder itself, each
    byte in a context where it is valid UTF-8 (bytes that never occur in valid UTF-8 can
    never match a text, so they need no check), and every id's single-token decode is
    compared with its entry. Any disagreement, or another kind of decoder: None, and the
    self-check decodes with the tokenizer instead."""
    if not _is_byte_level(backend):
        return None
    alphabet = _gpt2_byte_chars()
    char_of = {b: c for c, b in alphabet.items()}
    # (token strings, expected text): each byte inside valid UTF-8
    contexts = [([char_of[x] for x in seq], bytes(seq).decode("utf-8")) for seq in utf8_contexts(range(256))]
    try:
        if any(backend.decoder.decode(toks) != text for toks, text in contexts):
            return None
        vocab = backend.get_vocab(with_added_tokens=True)
        table: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        # A token's string -> bytes: translate the alphabet to Latin-1, in which every other
        # character fails to encode (the token then stands for its own UTF-8).
        to_latin1 = {ord(c): b for c, b in alphabet.items()}
        to_latin1.update({x: 0x100 for x in range(0x100) if x not in to_latin1})
        for token, i in vocab.items():
            try:
                table[i] = token.translate(to_latin1).encode("latin-1")
            except UnicodeEncodeError:
                table[i] = token.encode("utf-8")
        ids = [i for i, t in enumerate(table) if t is not None]
        decoded = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    except Exception:  # noqa: BLE001 - a decoder or vocabulary we cannot read: decode with the tokenizer
        return None
    if any(table[i].decode("utf-8", "replace") != d for i, d in zip(ids, decoded)):
        return None
    return table


def _is_byte_level(backend) -> bool:
    """Whether the tokenizer's decoder is exactly GPT-2's byte-level one (see token_bytes)."""
    try:
        from tokenizers import decoders

        return isinstance(backend.decoder, decoders.ByteLevel)
    except (ImportError, AttributeError):  # pragma: no cover
        return False
