"""What a watched render (template_tracked.py) gives: the text cut at its markers, and
which prefix renders it proves."""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass
class TrackedParts:
    """One watched render: `head` is the text up to the loop's end, `ends[b]` where
    iteration b starts in it (ends[-1]: the loop's end), `first_index[b]` the message
    index of iteration b, `max_before[b]` the largest index read before its fetch,
    `after` the text after the loop and `after_max` the largest index it read."""

    head: str
    ends: list[int]
    indices: list[int]
    max_before: list[int]
    after: str
    after_max: int
    n: int
    states: list | None = None  # per iteration, the snapshot at its fetch (template_prepass.py)
    end_state: tuple | None = ()  # the snapshot at the loop's end
    pre_ok: list[bool] | None = None  # per j, whether the pre-passes prove messages[:j]
    lasts: list | None = None  # per iteration, its text as the last one, (g False, g True) (template_last.py)

    def cut_for(self, j: int) -> int | None:
        """Where render(messages[:j]) stops in `head`, when proven (module docstring); never
        with last units (template_last.py), where the render is not a cut of head: text_for."""
        if self.lasts is not None:
            return None
        b = self._proven(j)
        return None if b is None else self.ends[b]

    def _iteration(self, j: int) -> int | None:
        """b, where indices[b] == j (None: no iteration fetched message j)."""
        b = j - self.indices[0] if self.indices else -1
        if 0 <= b < len(self.indices) and self.indices[b] == j:  # the indices rise one by one: found at once
            return b
        for b, r in enumerate(self.indices):
            if r >= j:
                return b if r == j else None
        return None

    def _proven(self, j: int) -> int | None:
        """The iteration that fetches message j (len(indices) for j == n) when render(messages[:j]) is proven."""
        if j >= self.n:
            return len(self.indices) if j == self.n else None
        if self.pre_ok is not None and not (j >= 0 and self.pre_ok[j]):
            return None
        b = self._iteration(j)
        return b if b is not None and self.max_before[b] < j else None

    def text_for(self, j: int, g: bool) -> str | None:
        """render(messages[:j], g) without after(g), when proven: head[:cut_for(j)] or, with
        last units, the text before iteration j-1 and that iteration's as the last one."""
        if self.lasts is None:
            c = self.cut_for(j)
            return None if c is None else self.head[:c]
        b = self._proven(j)
        if not b:
            return None if b is None else self.head[: self.ends[0]]
        last = self.lasts[b - 1][g]
        return None if last is None else self.head[: self.ends[b - 1]] + last

    def shared_cut(self, j: int) -> int | None:
        """c, where every render of messages[:j] starts with head[:c], when proven."""
        if self.lasts is None:
            return self.cut_for(j)
        b = self._proven(j)
        return None if b is None else self.ends[max(b - 1, 0)]

    def last_for(self, j: int, g: bool) -> str | None:
        """With last units: what render(messages[:j], g) has after head[:shared_cut(j)]
        and before after(g), when proven."""
        b = self._proven(j)
        return None if b is None else self.lasts[b - 1][g] if b else ""  # type: ignore[index]

    def state_for(self, j: int) -> tuple | None:
        """The namespace snapshot after() reads in render(messages[:j]) (None: unknown);
        call only where the render of messages[:j] is proven (cut_for, text_for)."""
        if j >= self.n:
            return self.end_state
        if self.states is None:
            return ()
        return self.states[self._iteration(j)]  # type: ignore[index]


def cut_at_markers(text: str, mark: str, start: str, end: str) -> tuple[int, int, list[str], str]:
    """(text.count(mark), text.count(end), head.split(start), after), where head, _,
    after = text.partition(end): what a marked render's text is cut into.

    Searching a text for the two-character markers (start, end) costs several times a
    search for one character, so the text is split once at `mark` (one character that
    begins both markers and occurs in neither's rest): when every piece but the first
    begins with start's rest and the last with end's, each mark begins a marker, the
    last one the only `end`, and the pieces are those of the four calls; otherwise the
    four calls are made."""
    s, e = start[1:], end[1:]
    parts = text.split(mark) if len(mark) == 1 and start[:1] == end[:1] == mark else []
    if (
        len(parts) >= 2
        and s
        and e
        and mark not in s + e
        and not s.startswith(e)
        and not e.startswith(s)
        and parts[-1].startswith(e)
        and all(p.startswith(s) for p in itertools.islice(parts, 1, len(parts) - 1))
    ):
        n = len(s)
        return (
            len(parts) - 1,
            1,
            [parts[0]] + [p[n:] for p in itertools.islice(parts, 1, len(parts) - 1)],
            parts[-1][len(e) :],
        )
    head, _, after = text.partition(end)
    return text.count(mark), text.count(end), head.split(start), after
