"""Prompt ids from an earlier prompt's ids plus the new text only (split samples).

Part of `Reconstructor` (pipeline.py `_encode`, through prompt_jobs.py). When a conversation is
split into one sample per trained turn (Qwen3, DeepSeek-R1-Distill drop earlier thinking
blocks), sample k+1's prompt usually starts with most of sample k's prompt: tokenising
every prompt whole is quadratic in the number of turns. Here sample k+1's prompt ids
are sample k's ids up to a cut plus the ids of the text after the cut, which are exactly
`encode(prompt, add_special_tokens=False)` of the whole prompt, by the argument below
(docs/reconstruction.md, "Prompt ids reused across split samples").

A fast tokenizer first splits its input at the matches of its added tokens (non-normalised
ones on the raw text, leftmost-longest), and normalises, pre-tokenises and tokenises
each piece between matches on its own (`AddedVocabulary::extract_and_normalize` in
tokenizers): no token spans a match boundary, and a piece's ids depend on that piece
alone. So if position c of a text is the start of a match of added token S,
ids(text) = ids(text[:c]) + ids(text[c:]) when both sides find the same matches as the
whole text, which `PromptReuse` proves once per tokenizer for each cut token S:

- S strips no whitespace (lstrip/rstrip) and has no single_word rule; its first and
  last characters are ASCII punctuation, so a neighbour token's whitespace stripping or
  word-boundary test reads the same character on both sides of the cut;
- S is not normalised (matched on the raw text, before any normaliser runs; Qwen's NFC
  then runs on each piece on its own), or the normaliser is the identity (none, or an
  empty Sequence as DeepSeek's), so matching after it is matching on the raw text;
- no added token A (S included) has a proper suffix A[i:] (i >= 1) that is a prefix of
  S or has S as a prefix: then no occurrence of any added token starts before c and ends
  after it, so the leftmost-longest scan finds the same matches in text[:c] as in the
  text, and in text[c:] those after c; no other added token is a prefix of S or starts
  with it, and none is prefix-compatible with a proper suffix of S (which would start
  inside S, and be matched first if matched before the normaliser while S is matched
  after it), so every occurrence of S in a text is a match of S;
- S's id is not in the model's own vocabulary, or it is there as S itself (printable
  ASCII, so the entry holds S's bytes) and the normaliser is the identity (SmolLM2):
  then the model only sees pieces of the raw text, none holding S (each occurrence is a
  match), and a byte-level BPE token's bytes lie within its piece's, so the id comes
  from matches of S only;
- the tokenizer is byte-level (token-bytes table, no dummy-prefix rule: a Metaspace
  "prepend first" scheme depends on where the whole input starts), with no truncation
  or padding, and special tokens are split (`encode_special_tokens` off).

ids(text[:c]) are then the earlier prompt's ids (its text starts with the same text[:c],
and c is a match of S there too) cut just before the n-th occurrence of S's id, n =
text[:c].count(S) + 1. A delta whose first id is not S's id (never expected) is encoded
again whole (`stats["prompt_reuse_refused"]`).
"""

from __future__ import annotations

import collections
import json
import re
import string

_EDGE = frozenset(string.punctuation) - {"_"}


class PromptReuse:
    """The cut tokens of one tokenizer for which the argument above holds."""

    def __init__(self, backend, candidates: list[str]):
        by_text = {t.content: (tid, t) for tid, t in backend.get_added_tokens_decoder().items()}
        model_vocab = backend.get_vocab(with_added_tokens=False)
        model_ids = set(model_vocab.values())
        identity = _identity_normalizer(backend)
        self.cuts: dict[str, int] = {}  # cut token text -> id
        self.refused: dict[str, str] = {}  # candidate -> why it is not a cut token
        for s in dict.fromkeys(candidates):
            why = _why_not(s, by_text, model_vocab, model_ids, identity)
            if why is None:
                self.cuts[s] = by_text[s][0]
            else:
                self.refused[s] = why
        # every occurrence of a cut token (none overlaps another: `_overlap`)
        alternatives = "|".join(re.escape(s) for s in sorted(self.cuts, key=len, reverse=True))
        self._pattern = re.compile(alternatives) if alternatives else None
        # prefixes shared across conversations (prompt_jobs.py); None switches that off
        self.shared: PrefixCache | None = PrefixCache()

    def cut_points(self, text: str, start: int, most: int) -> list[tuple[int, int, int]]:
        """(c, S's id, n) for the first `most` occurrences at c >= start of a cut token S in
        `text`, in order; S is there the n-th occurrence of itself."""
        seen: dict[str, int] = {}
        out: list[tuple[int, int, int]] = []
        if self._pattern is None:
            return out
        for m in self._pattern.finditer(text):
            s = m.group()
            n = seen[s] = seen.get(s, 0) + 1
            if m.start() >= start:
                out.append((m.start(), self.cuts[s], n))
                if len(out) == most:
                    break
        return out

    def cut(self, prev: str, text: str) -> tuple[int, int, int] | None:
        """(c, S's id, n): the latest occurrence of a cut token S in `prev` that lies
        wholly within the text `prev` and `text` share; `text[:c]`'s ids are `prev`'s
        ids before the n-th occurrence of S's id. None when there is none after 0."""
        limit = _common_prefix(prev, text)
        best, tok = 0, ""
        for s in self.cuts:
            at = prev.rfind(s, 0, limit)
            if at > best:
                best, tok = at, s
        if not tok:
            return None
        return best, self.cuts[tok], prev.count(tok, 0, best) + 1


def prompt_reuse(backend, template: str, byte_level: bool) -> PromptReuse | None:
    """A PromptReuse for this tokenizer, with the added tokens the template's text
    contains as candidate cuts; None when the tokenizer as a whole does not qualify
    (`why_not_reuse`) or no candidate is a safe cut."""
    if why_not_reuse(backend, byte_level) is not None:
        return None
    added = [t.content for t in backend.get_added_tokens_decoder().values()]
    reuse = PromptReuse(backend, [t for t in added if t and t in template])
    return reuse if reuse.cuts else None


def why_not_reuse(backend, byte_level: bool) -> str | None:
    """Why prompt ids are never reused with this tokenizer, or None."""
    if not byte_level:
        return "not a byte-level tokenizer (a dummy-prefix rule or another decoder)"
    if backend.truncation is not None or backend.padding is not None:
        return "the tokenizer truncates or pads"
    if getattr(backend, "encode_special_tokens", False):
        return "encode_special_tokens is on: special tokens are not split off"
    pre = backend.pre_tokenizer
    if pre is not None and b'"Metaspace"' in pre.__getstate__():
        return "a Metaspace pre-tokenizer"
    return None


def _why_not(s: str, by_text: dict, model_vocab: dict[str, int], model_ids: set[int], identity: bool) -> str | None:
    """Why added token `s` is not a safe cut (the conditions in the module's docstring), or None."""
    if s not in by_text:
        return "not an added token"
    tid, tok = by_text[s]
    if tok.lstrip or tok.rstrip or tok.single_word:
        return "lstrip, rstrip or single_word"
    if tok.normalized and not identity:
        return "matched after the normaliser (normalized=True), which is not the identity"
    if s[0] not in _EDGE or s[-1] not in _EDGE:
        return "does not start and end with ASCII punctuation"
    if (tid in model_ids or s in model_vocab) and not (identity and model_vocab.get(s) == tid and _plain(s)):
        return "in the model's own vocabulary (other than as itself in printable ASCII, identity normaliser)"
    return _overlap(s, by_text)


def _overlap(s: str, added) -> str | None:
    """The added token that could take part of an occurrence of s (or s part of its), if any:
    one that starts with s or s with it, or one whose proper suffix is prefix-compatible with
    s (it would start before the cut and end after it), or one prefix-compatible with a
    proper suffix of s (it would start inside s: matched first when s is matched after the
    normaliser and it before)."""
    firsts = {a[0] for a in added if a}
    inner = [s[i:] for i in range(1, len(s)) if s[i] in firsts]
    for a in added:
        if a != s and (a.startswith(s) or s.startswith(a)):
            return f"added token {a!r} and it: one starts with the other"
        i = a.find(s[0], 1)
        while i != -1:
            tail = a[i:]
            if tail.startswith(s) or s.startswith(tail):
                return f"added token {a!r} overlaps it ({tail!r})"
            i = a.find(s[0], i + 1)
        for tail in inner:
            if a and (tail.startswith(a) or a.startswith(tail)):
                return f"added token {a!r} overlaps it ({tail!r})"
    return None


def _plain(s: str) -> bool:
    """Whether every character of s is printable ASCII other than space: GPT-2's byte-level
    alphabet writes those bytes as themselves, so a vocabulary entry s holds s's bytes."""
    return all("!" <= ch <= "~" for ch in s)


def _identity_normalizer(backend) -> bool:
    """Whether the tokenizer has no normaliser, or one that changes nothing (an empty Sequence)."""
    n = backend.normalizer
    return n is None or json.loads(n.__getstate__()) == {"type": "Sequence", "normalizers": []}


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of a and b (a few C-speed comparisons)."""
    n = min(len(a), len(b))
    if b.startswith(a[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if b.startswith(a[lo:mid], lo):
            lo = mid
        else:
            hi = mid
    return lo


def _nth(ids: list[int], sid: int, n: int) -> int | None:
    """Index of the n-th (from 1) occurrence of `sid` in ids, or None."""
    at = -1
    try:
        for _ in range(n):
            at = ids.index(sid, at + 1)
    except ValueError:
        return None
    return at


def _assemble(base: list[int] | None, sid: int, n: int, delta: list[int]) -> list[int] | None:
    """base's ids before the n-th occurrence of `sid`, then `delta` (which must start with it)."""
    if base is None or not delta or delta[0] != sid:
        return None
    at = _nth(base, sid, n)
    return None if at is None else base[:at] + delta


class PrefixCache:
    """Prompt-prefix text (ending just before a cut token) -> its ids; least recently used
    dropped beyond `max_entries` entries or `max_chars` characters of keys.

    Most prefixes a prompt offers (those past its own user turn) never recur, so a prefix's
    ids are kept only once it has been seen twice (`worth_keeping`): the first time only its
    hash is noted, in a bounded FIFO of `max_seen` hashes (a collision only keeps a prefix
    that is not needed; lookups compare the text)."""

    def __init__(self, max_entries: int = 512, max_chars: int = 2_000_000, max_seen: int = 16384):
        self.max_entries, self.max_chars, self.max_seen = max_entries, max_chars, max_seen
        self._d: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        self._seen: dict[int, None] = {}
        self.chars = 0

    def worth_keeping(self, key: str) -> bool:
        """Whether `key` was offered before (else note it, and say no)."""
        h = hash(key)
        if h in self._seen:
            return True
        self._seen[h] = None
        if len(self._seen) > self.max_seen:
            del self._seen[next(iter(self._seen))]
        return False

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def get(self, key: str) -> list[int] | None:
        ids = self._d.get(key)
        if ids is not None:
            self._d.move_to_end(key)
        return ids

    def put(self, key: str, ids: list[int]) -> None:
        if len(key) > self.max_chars:
            return
        old = self._d.pop(key, None)
        if old is not None:
            self.chars -= len(key)
        self._d[key] = ids
        self.chars += len(key)
        while len(self._d) > self.max_entries or self.chars > self.max_chars:
            k, _ = self._d.popitem(last=False)
            self.chars -= len(k)
