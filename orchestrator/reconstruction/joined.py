"""Texts tokenised in runs joined by a special separator token, each as if alone.

Part of `Reconstructor` (pipeline.py `_encode_job`: the tokenizer, and with a dummy-prefix
rule also its copy without the prefix, segment_tokenize.py, each with its own). Every prompt and
every segment after it must be tokenised on its own. One tokenizer input per text costs a
fixed price per text (an Encoding, its Python object, a task of the tokenizer's thread
pool), so runs of up to GROUP texts go in as one input, joined by a separator, and the ids
are cut back at the separator's id.

Why that gives each text its own ids: the tokenizer's first step splits its input at
added tokens (the Rust `tokenizers` library, `AddedVocabulary`), and every piece between
them is normalised, pre-tokenised and run through the model on its own; a piece of a
longer input differs from the same text alone only through rules that look at the
piece's place in the input. A dummy prefix on every piece (a Prepend normaliser,
Metaspace "always") goes before a text after a separator as before the same text
alone; the one rule that looks at the place, Metaspace's prepend_scheme "first", fails
the probe below (its tokenizer encodes one text per input; its prefix-less copy joins). So with a
separator token S that is special, not normalised and takes no whitespace around it
(lstrip, rstrip and single_word off), ids(a + S + b) = ids(a) + [id(S)] + ids(b), when
neither text holds S's text.

What is checked rather than argued: a separator is admitted only after probe texts
joined and cut give exactly their ids alone (a tokenizer where none does gets no
separator: every text is encoded alone); a text that holds S's text is encoded alone; a
joined input whose ids hold S's id fewer times than it was placed is encoded again text
by text; and every segment's ids are then compared with its text by the self-check
(selfcheck.py), which sends a failing sample to be encoded again text by text
(pipeline._complete). A hypothesis test checks joined == alone on random texts for
real tokenizers: three byte-level ones, Mistral's SentencePiece and its prefix-less copy
(tests/orchestrator/test_reconstruct_joined.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

#: probe text lists: each joined and cut must give exactly the ids of its texts alone
PROBES = (
    ["Hello", " world", "\n"],
    ["  lead", "trail  ", "", "\n\nx", " 42 3.14"],
    ["café naïve 東京", " 😀", "a\r\nb", "\t"],
    ["x", " ", "  ", "y"],
)


class Joined(NamedTuple):
    """Texts, the tokenizer inputs they were joined into, and per input (first text, how many)."""

    texts: list[str]
    inputs: list[str]
    spans: list[tuple[int, int]]


class SegmentJoiner:
    """The separator token (text and id; None when no token passed the probe) and the
    joined encoding of a batch's texts."""

    def __init__(self, backend: Any, added: dict[int, Any], template: str):
        self.text: str | None = None
        self.id: int | None = None
        for tid, tok in _candidates(added, template):
            if backend.token_to_id(tok.content) == tid and self._holds(backend, tok.content, tid):
                self.text, self.id = tok.content, tid
                return

    #: texts per joined text: few enough that a batch still has a text per tokenizer thread
    GROUP = 16

    def encode(self, backend: Any, texts: list[str], stats: Counter) -> list[list[int]]:
        """The ids of each text as if tokenised alone: runs of up to GROUP texts that do
        not hold the separator's text are encoded as one text, joined by it."""
        batch = self.join(texts)
        return self.cut_all(batch, backend.encode_batch_fast(batch.inputs, add_special_tokens=False), backend, stats)

    def join(self, texts: list[str]) -> "Joined":
        """The tokenizer inputs for `texts`: runs of up to GROUP texts joined by the
        separator; a text that holds the separator's text (or every text, without a
        separator) is an input on its own."""
        sep = self.text
        if sep is None:
            return Joined(texts, texts, [(i, 1) for i in range(len(texts))])
        inputs: list[str] = []
        spans: list[tuple[int, int]] = []  # (first text, how many) of each input
        run: list[int] = []

        def flush() -> None:
            if run:
                inputs.append(sep.join([texts[i] for i in run]))
                spans.append((run[0], len(run)))
                run.clear()

        for i, t in enumerate(texts):
            if sep in t:  # encoded alone
                flush()
                inputs.append(t)
                spans.append((i, 1))
                continue
            run.append(i)
            if len(run) == self.GROUP:
                flush()
        flush()
        return Joined(texts, inputs, spans)

    def cut_all(self, batch: "Joined", encodings: list, backend: Any, stats: Counter) -> list[list[int]]:
        """Each text's ids from the encodings of `batch.inputs`, cut at the separator; the
        texts of an input where it is missing are encoded again one at a time."""
        texts = batch.texts
        out: list[list[int]] = [[]] * len(texts)  # every entry is replaced below
        again: list[int] = []
        for (first, n), e in zip(batch.spans, encodings):
            parts = [e.ids] if n == 1 else self.split(e.ids, n)
            if parts is None:
                again += range(first, first + n)
            else:
                out[first : first + n] = parts
        if again:  # the separator was not found where it was placed: one text at a time
            stats["segments_encoded_again"] += len(again)
            for i, e in zip(again, backend.encode_batch_fast([texts[i] for i in again], add_special_tokens=False)):
                out[i] = e.ids
        return out

    def split(self, ids: list[int], n: int) -> list[list[int]] | None:
        """`ids` cut at the first n - 1 occurrences of the separator's id (dropped), or None
        when it occurs fewer times."""
        return cut(ids, self.id, n)

    @staticmethod
    def _holds(backend: Any, sep: str, sid: int) -> bool:
        for g in PROBES:
            whole = backend.encode(sep.join(g), add_special_tokens=False).ids
            alone = [e.ids for e in backend.encode_batch(g, add_special_tokens=False)]
            if cut(whole, sid, len(g)) != alone or whole.count(sid) != len(g) - 1:
                return False
        return True


def cut(ids: list[int], sid: int | None, n: int) -> list[list[int]] | None:
    """`ids` cut at the first n - 1 occurrences of `sid` (dropped), or None when it occurs fewer times."""
    start, parts = 0, []
    try:
        for _ in range(n - 1):
            k = ids.index(sid, start)
            parts.append(ids[start:k])
            start = k + 1
    except ValueError:
        return None
    parts.append(ids[start:])
    return parts


def _candidates(added: dict[int, Any], template: str) -> list[tuple[int, Any]]:
    """Special added tokens that may separate texts, those the chat template never writes
    first (a text then rarely holds theirs): `template` is its source and a render of it (a
    token it writes from a variable, like Llama 3's bos at the start of every prompt, would
    make every prompt an input of its own)."""
    ok = [
        (tid, t)
        for tid, t in added.items()
        if getattr(t, "special", False)
        and t.content.strip() == t.content
        and t.content
        and not (getattr(t, "lstrip", False) or getattr(t, "rstrip", False) or getattr(t, "single_word", False))
        and not getattr(t, "normalized", False)
    ]
    return sorted(ok, key=lambda x: (x[1].content in template, x[0]))
