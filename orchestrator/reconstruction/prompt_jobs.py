"""Which prompts `_encode` tokenises, and how: whole, or only the text after a proven cut.

Part of `Reconstructor` (pipeline.py `_encode`). A prompt not in the exact-text cache is
encoded as the text after a cut `c`, with the ids before the cut taken from elsewhere,
where `c` is the start of a proven cut token (prompt_reuse.py: ids(text) =
ids(text[:c]) + ids(text[c:])):

- **same conversation**: a split sample's prompt after the previous sample's prompt
  (prompt_reuse.py, `PromptReuse.cut`);
- **shared prefixes across conversations**: prompts that start with the same long text
  (one system prompt, tool schemas) up to a cut. For every prompt it encodes, `_encode`
  remembers the ids of its prefixes that end just before one of the first `CUTS` cut
  tokens at or after `MIN_CHARS` characters, keyed by the prefix text (`PrefixCache`,
  bounded in entries and characters); a new prompt looks those keys up, longest first,
  at its own first `CUTS` cuts, and within one batch also among the prompts of that batch.

Exact by the same argument: the prefix `p[:c]` was remembered from a prompt `p` whose
position `c` starts a cut token (so its ids are `p`'s ids before that token's id), the new
prompt `t` has `t[:c] == p[:c]` and a cut token at `c` too, so ids(t) = ids(p[:c]) +
ids(t[c:]); the first id of the delta must be that cut token's id, else the prompt is
encoded whole (`stats["prompt_reuse_refused"]`). docs/reconstruction.md, "Prompt prefixes
shared across conversations".

In build_many's pipeline a chunk's jobs are made before the chunk before has resolved
(its ids are still being read): that chunk's PromptJobs (`before`) then counts as a
cache, its prompts and its batch's prefixes taken from it once it has resolved.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from orchestrator.reconstruction.plan import Pending
from orchestrator.reconstruction.prompt_reuse import PromptReuse, _nth

# a prefix's ids: known ids, or (prompt of this batch, S's id, n): that prompt's ids before
# the n-th occurrence of S's id
Head = list[int] | tuple[str, int, int]


class PromptJobs:
    """The prompts of one `_encode` call: from the cache, encoded whole, or encoded as the
    text after a cut (same conversation's previous prompt, or a shared prefix)."""

    #: prefixes shorter than this are not worth a lookup
    MIN_CHARS = 64
    #: cut positions per prompt looked up (and remembered), from MIN_CHARS on
    CUTS = 8

    def __init__(
        self,
        pending: list[Pending],
        cache: dict[str, list[int]],
        reuse: PromptReuse | None,
        before: "PromptJobs | None" = None,
    ):
        self.ids: dict[str, list[int] | None] = {}
        # the jobs of the chunk before, made but not yet resolved (build_many's pipeline):
        # their prompts and prefixes are used as if cached, and resolve before these do
        self._before = before
        self._later: list[str] = []  # prompts taken from `before` once it has resolved
        self.texts: list[str] = []  # what to encode, in order: whole prompts and deltas
        # (prompt, head or None, the delta's first id, the stats key counting the reuse)
        self._jobs: list[tuple[str, Head | None, int, str]] = []
        self._reuse = reuse
        self._shared = reuse.shared if reuse is not None else None
        # this batch's prefixes: key -> (prompt, S's id, n), put in `_shared` by resolve
        self._batch: dict[str, tuple[str, int, int]] = {}
        self._hits: set[str] = set()  # keys of `_batch` that a later prompt of the batch used
        prev: Pending | None = None
        for p in pending:
            t = p.texts[0]
            if t not in self.ids:
                self.ids[t] = cache.get(t)
                if self.ids[t] is None and before is not None and t in before.ids:
                    self._later.append(t)
                elif self.ids[t] is None:
                    plan = None
                    if reuse is not None and prev is not None and p.split and _same_conversation(prev, p):
                        plan = reuse.cut(prev.texts[0], t)
                    if plan is not None:
                        c, sid, n = plan
                        self._add(t, c, (prev.texts[0], sid, n), sid, "prompt_reused")
                    else:
                        self._plan_shared(t)
            prev = p

    def _add(self, t: str, c: int, head: Head | None, first: int, kind: str) -> None:
        self.texts.append(t[c:] if c else t)
        self._jobs.append((t, head, first, kind))

    def _plan_shared(self, t: str) -> None:
        """Plan prompt `t` after its longest known prefix at one of its first cuts (else
        whole), and note its prefixes at the cuts after that one for later prompts."""
        if self._shared is None or self._reuse is None:
            self._add(t, 0, None, 0, "")
            return
        cuts = self._reuse.cut_points(t, self.MIN_CHARS, self.CUTS)
        k = len(cuts) - 1
        while k >= 0:  # longest first
            c, sid, _ = cuts[k]
            key = t[:c]
            head: Head | None = self._shared.get(key)
            if head is None:
                head = self._batch.get(key)
                if head is not None:
                    self._hits.add(key)
                elif self._before is not None:
                    head = self._before._batch.get(key)
                    if head is not None:
                        self._before._hits.add(key)  # in time: `before` resolves after this
            if head is not None:
                self._add(t, c, head, sid, "prompt_prefix_reused")
                break
            k -= 1
        else:
            self._add(t, 0, None, 0, "")
        for c, sid, n in cuts[k + 1 :]:
            self._batch.setdefault(t[:c], (t, sid, n))

    def resolve(self, encs: Iterator, backend, stats: collections.Counter) -> dict[str, list[int]]:
        """Every prompt's ids, taking one id list from `encs` per text in `self.texts`."""
        again: list[str] = []
        for t, head, first, kind in self._jobs:
            ids = next(encs)
            if head is not None:
                got = self._head_ids(head)
                if got is None or not ids or ids[0] != first:  # the delta must start with the cut token
                    again.append(t)
                    continue
                got += ids  # got is a fresh list: the prefix's ids, then the delta's
                ids = got
                stats[kind] += 1
            self.ids[t] = ids
        for t in self._later:  # `before` has resolved by now
            self.ids[t] = self._before.ids[t]  # type: ignore[union-attr]  # set with _later
        if again:  # not expected (the argument holds): encode those prompts whole
            stats["prompt_reuse_refused"] += len(again)
            for t, e in zip(again, backend.encode_batch_fast(again, add_special_tokens=False)):
                self.ids[t] = e.ids
        if self._shared is not None:
            for key, head in self._batch.items():  # those seen twice (PrefixCache)
                if key not in self._hits and not self._shared.worth_keeping(key):
                    continue
                ids = self._head_ids(head)
                if ids is not None:
                    self._shared.put(key, ids)
        self._before = None  # resolved: nothing more to take from it
        return self.ids  # type: ignore[return-value]  # every value is set now

    def _head_ids(self, head: Head) -> list[int] | None:
        """The prefix's ids, in a new list: known, or a prompt's of this batch before the n-th
        S id (None if that prompt has no ids yet, or fewer S ids: not expected)."""
        if isinstance(head, list):
            return head[:]
        base, sid, n = head
        ids = self.ids.get(base)
        if ids is None and self._before is not None:  # a prompt of the chunk before
            ids = self._before.ids.get(base)
        if ids is None:
            return None
        at = _nth(ids, sid, n)
        return None if at is None else ids[:at]


def _same_conversation(a: Pending, b: Pending) -> bool:
    return a.split and a.meta.get("split_from") == b.meta.get("split_from")
