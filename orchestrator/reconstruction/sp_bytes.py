"""Token bytes for SentencePiece tokenizers converted Llama-2 style (the self-check's table).

Part of `Reconstructor` (selfcheck.py). Llama 2, Mistral v0.x and Phi-3 tokenizers, as
transformers converts them, decode with the chain Replace("▁" -> " "), ByteFallback, Fuse,
Strip(" ", 1, 0): each token's string with "▁" read as a space, a run of byte tokens
"<0xHH>" read as the UTF-8 of those bytes (each byte U+FFFD when the run is not valid
UTF-8), everything joined, then one leading space dropped. So, as with GPT-2's byte-level
decoder (selfcheck.token_bytes), a token has bytes of its own, and:

    decode(ids) == strip1(B.decode("utf-8"))   when B, the ids' bytes joined, is valid UTF-8

Gemma's tokenizers (SentencePiece with no dummy prefix) decode with the same chain less
the Strip: there decode(ids) == B.decode("utf-8"), and B is compared with the text itself.

A normal token's bytes are whole UTF-8 characters, so in a valid B it starts and ends on
character boundaries; every run of byte tokens between them is then whole characters
too, which ByteFallback decodes exactly. The self-check compares B with the text the rule
says the tokens stand for before that strip (segment_tokenize.PrefixSpaceRule.raw_utf8),
with no decoding; a sample where that fails is decoded by the tokenizer as before.

Nothing is taken on trust: the decoder must be exactly that chain, and every id's decode
after an anchor token (which keeps the strip away) is compared with its entry; byte
tokens inside valid UTF-8 sequences. Anything else: no table (the self-check decodes).
"""

from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.reconstruction.cache import per_tokenizer
from orchestrator.reconstruction.selfcheck import utf8_contexts

_CHAIN = [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"},
    {"type": "Fuse"},
]
_STRIP = {"type": "Strip", "content": " ", "start": 1, "stop": 0}
_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

_CACHE: dict[tuple, list[bytes | None] | None] = {}


def sentencepiece_bytes(backend: Any, anchor: str, strip: bool = True) -> list[bytes | None] | None:
    """sentencepiece_bytes_uncached, kept per process for each distinct tokenizer, anchor and
    chain (cache.per_tokenizer)."""
    return per_tokenizer(_CACHE, backend, (anchor, strip), lambda: sentencepiece_bytes_uncached(backend, anchor, strip))


def sentencepiece_bytes_uncached(backend: Any, anchor: str, strip: bool = True) -> list[bytes | None] | None:
    """The bytes of every token id (None: an id without a token), when the decoder is the
    chain above (with the Strip, or without it: `strip`) and every entry is checked against
    the decoder; else None. `anchor` is an added token whose text does not start with a
    space (the end-of-turn token)."""
    try:
        chain = _CHAIN + [_STRIP] if strip else _CHAIN
        if json.loads(backend.decoder.__getstate__()) != {"type": "Sequence", "decoders": chain}:
            return None
        aid = backend.token_to_id(anchor)
        if aid is None or anchor.startswith(" ") or backend.decode([aid], skip_special_tokens=False) != anchor:
            return None
        vocab = backend.get_vocab(with_added_tokens=True)
        table: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        byte_ids: dict[int, int] = {}  # byte -> its token's id
        for token, i in vocab.items():
            m = _BYTE.fullmatch(token)
            if m:
                table[i] = bytes([int(m.group(1), 16)])
                byte_ids[int(m.group(1), 16)] = i
            else:
                table[i] = token.replace("\u2581", " ").encode("utf-8")
        is_byte = set(byte_ids.values())
        plain = [i for i, t in enumerate(table) if t and i not in is_byte]
        decoded = backend.decode_batch([[aid, i] for i in plain], skip_special_tokens=False)
        if any(d != anchor + table[i].decode("utf-8") for i, d in zip(plain, decoded)):  # type: ignore[union-attr]
            return None
        runs = [seq for seq in utf8_contexts(sorted(byte_ids)) if all(b in byte_ids for b in seq)]
        decoded = backend.decode_batch([[aid] + [byte_ids[b] for b in seq] for seq in runs], skip_special_tokens=False)
        if any(d != anchor + bytes(seq).decode("utf-8") for seq, d in zip(runs, decoded)):
            return None
        checked = set(plain) | {byte_ids[b] for seq in runs for b in seq}
    except Exception:  # noqa: BLE001 - a decoder or vocabulary we cannot read: decode with the tokenizer
        return None
    return [t if i in checked else None for i, t in enumerate(table)]
