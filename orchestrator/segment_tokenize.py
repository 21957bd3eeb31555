"""Tokenising a sample's segments as the student emits them after the preceding text.

SentencePiece tokenizers converted Llama-2 style (Llama 2, Mistral v0.x, Phi-3, older
Gemma setups) put a dummy prefix "▁" (a space) before text: a normaliser
`Prepend("▁")` applied to every piece of text between added tokens ("legacy"), or a
`Metaspace` pre-tokenizer with prepend_scheme "always" (every piece) or "first" (only
at the very start of the input). Tokenised alone, an assistant turn "Hello</s>" then
becomes "▁Hello</s>": a space the student never emits after the preceding text, and a
sample that does not decode back to the render.

`PrefixSpaceRule` reads that rule from the tokenizer's own serialisation and makes a
copy of the tokenizer without it (the "continuation" tokenizer). The prompt is still
tokenised with the tokenizer itself (what an inference server does with the rendered
prompt); every trained turn continues the text the student is emitting, so it is
tokenised with the copy: the same model, vocabulary and merges, only without the dummy
prefix, which is what SentencePiece does to text that does not start the input. With a
"piece" rule the untrained context between turns, which always starts right after the
end-of-turn token (an added token), is tokenised with the tokenizer itself: that is
what a server does to the same text when it tokenises the next turn's prompt.

What the self-check then compares (orchestrator/reconstruction/selfcheck.py):
decode(prompt + completion) must equal `expected_text`: the segments' text with the
rule the tokenizer states applied to the prompt and (with "piece") the context - a
space before every piece of text between added tokens, less the one space the decoder
strips at the start of the output; nothing for "first" (the only prefix is at the
start, which the decoder strips).
The trained tokens are decoded after the end-of-turn token as an anchor, so that the
decoder's start-of-text strip cannot hide or add a space. The rule is checked on probe
texts when the Reconstructor is made; a tokenizer whose behaviour does not match the
rule it states gets no continuation tokenizer (its samples then fail the self-check
and are rejected, as before).
"""

from __future__ import annotations

import json
import re
from typing import Any

NONE, PIECE, FIRST = "none", "piece", "first"


def _strip_prefix(node: Any) -> tuple[Any, str]:
    """(node without its dummy-prefix rule, the rule's kind) for a normaliser or
    pre-tokenizer JSON node (possibly a Sequence)."""
    if not isinstance(node, dict):
        return node, NONE
    kind = node.get("type")
    if kind == "Sequence":
        key = "normalizers" if "normalizers" in node else "pretokenizers"
        items, found = [], NONE
        for child in node.get(key, []):
            if isinstance(child, dict) and child.get("type") == "Prepend":
                found = PIECE
                continue
            new, k = _strip_prefix(child)
            found = k if k != NONE else found
            items.append(new)
        return dict(node, **{key: items}), found
    if kind == "Prepend":
        return None, PIECE
    if kind == "Metaspace":
        scheme = node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never")
        if scheme == "never":
            return node, NONE
        new = dict(node, prepend_scheme="never")
        if "add_prefix_space" in new:
            new["add_prefix_space"] = False
        return new, FIRST if scheme == "first" else PIECE
    return node, NONE


class PrefixSpaceRule:
    """The tokenizer's dummy-prefix rule and a copy of the tokenizer without it."""

    def __init__(self, backend, added_tokens: list[str]):
        from tokenizers import Tokenizer

        self.kind = NONE
        self.continuation = None
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - cannot read it: treat as having no rule
            return
        norm, k1 = _strip_prefix(spec.get("normalizer"))
        pre, k2 = _strip_prefix(spec.get("pre_tokenizer"))
        kind = PIECE if PIECE in (k1, k2) else FIRST if FIRST in (k1, k2) else NONE
        if kind == NONE:
            return
        spec["normalizer"], spec["pre_tokenizer"] = norm, pre
        self._split = re.compile("(" + "|".join(map(re.escape, added_tokens)) + ")") if added_tokens else None
        self.kind = kind
        self.continuation = Tokenizer.from_str(json.dumps(spec))
        self.continuation.no_truncation()
        self.continuation.no_padding()
        if not self._holds(backend, added_tokens):
            self.kind, self.continuation = NONE, None

    def expected_prompt(self, text: str) -> str:
        """What the prompt's tokens (tokenizer itself) decode to, by the rule: with
        "piece", a space before every text piece, less the one the decoder strips at the
        start of the output."""
        if self.kind != PIECE:
            return text
        out = self._with_prefixes(text)
        return out[1:] if out.startswith(" ") else out

    def _with_prefixes(self, text: str) -> str:
        pieces = self._split.split(text) if self._split is not None else [text]
        return "".join(p if i % 2 else " " + p for i, p in enumerate(pieces) if p)

    def context_has_prefix(self, trained: bool) -> bool:
        """Whether a segment after the prompt is tokenised with the rule: with "piece",
        untrained context, which always follows an added token (the turn's end token)
        and so is what a server's tokenisation of the next prompt puts there; trained
        turns never (they continue the text the student is emitting)."""
        return self.kind == PIECE and not trained

    def encode_after_prompt(self, backend, segments: list[tuple[str, bool]]) -> list:
        """Encodings of (text, trained) segments that follow a prompt, in order."""
        ruled = [t for t, f in segments if self.context_has_prefix(f)]
        plain = [t for t, f in segments if not self.context_has_prefix(f)]
        a = iter(backend.encode_batch_fast(ruled, add_special_tokens=False) if ruled else [])
        b = iter(self.continuation.encode_batch_fast(plain, add_special_tokens=False) if plain else [])
        return [next(a) if self.context_has_prefix(f) else next(b) for _, f in segments]

    def expected_text(self, texts: list[str], trained: list[bool]) -> str:
        """What a sample's tokens (prompt first) decode to, by the rule."""
        return self.expected_prompt(texts[0]) + "".join(
            self._with_prefixes(t) if self.context_has_prefix(f) else t for t, f in zip(texts[1:], trained[1:])
        )

    def raw_utf8(self, texts: list[str], trained: list[bool], utf8: list[bytes], known: bool) -> list[bytes] | None:
        """Per segment, the UTF-8 its tokens stand for before the decoder drops the output's
        first space (reconstruction/sp_bytes.py): with "piece", the prompt and the context
        with a space before every text piece, trained turns as they are (`utf8`). None
        when the prompt is empty (the strip would then reach the next segment) or the rule
        is not "piece". A `known` prompt (one that passed before) gets b"" in its place: it
        is not compared again."""
        if self.kind != PIECE or not texts[0]:  # a text gives a text with the rule's spaces
            return None
        out = [b"" if known else self._with_prefixes(texts[0]).encode("utf-8")]
        for t, f, u in zip(texts[1:], trained[1:], utf8[1:]):
            out.append(self._with_prefixes(t).encode("utf-8") if self.context_has_prefix(f) else u)
        return out

    def _holds(self, backend, added_tokens: list[str]) -> bool:
        """The rule, checked on probe texts: continuation segments decode to themselves
        (after an anchor token), prompts to expected_prompt."""
        anchor = next((t for t in added_tokens if backend.token_to_id(t) is not None), None)
        if anchor is None:
            return False
        aid = backend.token_to_id(anchor)
        plain = ["Hello world", " lead", "  two", "a\nb", "x"]
        for t in plain:
            ids = self.continuation.encode(t, add_special_tokens=False).ids
            if backend.decode([aid] + ids, skip_special_tokens=False) != anchor + t:
                return False
        for t in ["Hi there", anchor + "Hi " + anchor + " x", "a" + anchor]:
            ids = backend.encode(t, add_special_tokens=False).ids
            if backend.decode(ids, skip_special_tokens=False) != self.expected_prompt(t):
                return False
        return True
