"""A sample's segments tokenised in one text, joined by a special token, as if each were alone.

Part of `Reconstructor` (pipeline.py `_encode`, byte-level tokenizers). Every segment
after the prompt must be tokenised on its own. One text per segment costs the fast
tokenizer a fixed price per text (an Encoding, its Python object and list, a task of its
thread pool): on the mixed bench corpus, 6314 segments of 400 samples took 1.17x the CPU
of the same segments joined into one text per sample.

Why the joined text gives each segment's own ids: the tokenizer's first step splits its
input at added tokens (the Rust `tokenizers` library, `AddedVocabulary`), and every piece
between them is normalised, pre-tokenised and run through the model on its own; a piece
of a longer input differs from the same text alone only through rules that look at the
piece's place in the input, and the one such rule (Metaspace's prepend_scheme "first")
belongs to tokenizers that do not take this path (segment_tokenize.py). So with a
separator token S that is special, not normalised and takes no whitespace around it
(lstrip, rstrip and single_word off), ids(a + S + b) = ids(a) + [id(S)] + ids(b), when
neither text holds S's text.

What is checked rather than argued: the separator is tried on probe segments when the
Reconstructor is made (joined and split, the ids must equal each probe encoded alone; a
tokenizer that fails gets no separator and encodes segments one by one); a sample whose
segment holds S's text is encoded one segment at a time; a joined text whose ids do not
hold S's id as often as it was placed is encoded again one segment at a time; and every
segment's ids are then compared with its text by the self-check (selfcheck.py), which
sends a sample that fails back to be encoded one segment at a time (pipeline._complete).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: probe segment lists: each joined must give exactly the ids of its segments alone
PROBES = (
    ["Hello", " world", "\n"],
    ["  lead", "trail  ", "", "\n\nx", " 42 3.14"],
    ["café naïve 東京", " 😀", "a\r\nb", "\t"],
    ["x", " ", "  ", "y"],
)


class SegmentJoiner:
    """The separator token (text and id) and the join/split of a batch's segment groups."""

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
        sep = self.text
        if sep is None:
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        batch: list[str] = []
        spans: list[tuple[int, int]] = []  # (first text, how many) of each entry of `batch`
        run: list[int] = []

        def flush() -> None:
            if run:
                batch.append(sep.join([texts[i] for i in run]))
                spans.append((run[0], len(run)))
                run.clear()

        for i, t in enumerate(texts):
            if sep in t:  # encoded alone
                flush()
                batch.append(t)
                spans.append((i, 1))
                continue
            run.append(i)
            if len(run) == self.GROUP:
                flush()
        flush()
        out: list[list[int]] = [[] for _ in texts]
        again: list[int] = []
        for (first, n), e in zip(spans, backend.encode_batch_fast(batch, add_special_tokens=False)):
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
        sid, start, parts = self.id, 0, []
        try:
            for _ in range(n - 1):
                k = ids.index(sid, start)
                parts.append(ids[start:k])
                start = k + 1
        except ValueError:
            return None
        parts.append(ids[start:])
        return parts

    def _holds(self, backend: Any, sep: str, sid: int) -> bool:
        self.text, self.id = sep, sid
        try:
            for g in PROBES:
                whole = backend.encode(sep.join(g), add_special_tokens=False).ids
                alone = [e.ids for e in backend.encode_batch(g, add_special_tokens=False)]
                if self.split(whole, len(g)) != alone or whole.count(sid) != len(g) - 1:
                    return False
            return True
        finally:
            self.text, self.id = None, None


def _candidates(added: dict[int, Any], template: str) -> list[tuple[int, Any]]:
    """Special added tokens that may separate segments, those the chat template never
    writes first (a segment then rarely holds their text)."""
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
