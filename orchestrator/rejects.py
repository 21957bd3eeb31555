"""rejects.jsonl of a teacher run: what produced no sample, and why -- kept exact across resumes.

Invariant after every run (complete, stopped or killed and resumed): every (prompt id, sample
index) pair that is done is either published (a sample in the shards) or listed here, and a
pair-level rejection (item id "<prompt_id>/<index>") is never listed for a published pair. The
one overlap is a conversation reconstruction split into per-turn samples: a rejected turn
("<prompt_id>/<index>/turn<k>") is listed while other turns of the pair are published.

During a run the file is append-only (each line flushed as it is written). It is rewritten
atomically (temporary file + rename) only when lines have gone stale:
- on open: pair-level lines of pairs that are now published (a failure retried by a later run
  that succeeded, whose sample was published before the crash that kept this file unchanged);
- on close: besides those, lines from earlier runs for a pair this run gave an outcome of its
  own (re-requested after a failure, rebuilt): the pair's newest outcome is the one listed.
Lines are never duplicated (same item and reason).
"""

from __future__ import annotations

from pathlib import Path

from distill.core.contract import Rejection, atomic_write_text
from distill.core.jsonl import read_jsonl


def pair_of(item_id: str) -> str:
    """ "<prompt_id>/<sample_index>" of an item id (drops a "/turn<k>" suffix)."""
    return "/".join(item_id.split("/")[:2])


class RejectLog:
    def __init__(self, path: Path, published: set[str]):
        self.path = path
        self.lines: list[tuple[str, str, str]] = []  # (item_id, reason, json line) of earlier runs, kept
        dropped = self._read()
        kept = [x for x in self.lines if not (x[0] == pair_of(x[0]) and x[0] in published)]
        if dropped or len(kept) != len(self.lines):
            self.lines = kept
            atomic_write_text(path, "".join(line + "\n" for _, _, line in kept))
        self.seen = {(item, reason) for item, reason, _ in self.lines}
        self.this_run: set[tuple[str, str]] = set()  # (item, reason) rejected by this run
        self.new: list[tuple[str, str, str]] = []
        self.touched: set[str] = set()  # pairs this run rejected something of
        self._f = open(path, "a", encoding="utf-8", errors="backslashreplace")  # JSONL: lossless

    def _read(self) -> int:
        """Loads the earlier runs' lines; returns how many were unreadable or repeated (then the file is rewritten)."""
        if not self.path.exists():
            return 0
        bad, seen = 0, set()
        for ln in read_jsonl(self.path):  # one reader, one torn-line policy (distill/core/jsonl.py)
            try:
                d = ln.value
                if ln.reason is not None:
                    raise ValueError(ln.problem)
                key = (str(d["item_id"]), str(d["reason"]))
            except (ValueError, KeyError, TypeError):
                bad += 1  # a torn last line from a crash; the rejection is written again if it recurs
                continue
            if key in seen:
                bad += 1
                continue
            seen.add(key)
            self.lines.append((*key, ln.raw.decode("utf-8").rstrip("\n")))
        return bad

    def add(self, item_id: str, reason: str, detail: str = "") -> None:
        self.this_run.add((item_id, reason))
        self.touched.add(pair_of(item_id))
        if (item_id, reason) in self.seen:
            return
        self.seen.add((item_id, reason))
        line = Rejection(item_id, reason, detail).to_json()
        self.new.append((item_id, reason, line))
        self._f.write(line + "\n")
        self._f.flush()

    def close(self, published: set[str], published_this_run: set[str]) -> dict[str, int]:
        """Closes the file, rewriting it without stale lines if any; returns the pair counts."""
        self._f.close()
        fresh = self.touched | published_this_run

        def keep(item: str, reason: str, old: bool) -> bool:
            p = pair_of(item)
            if item == p and p in published:
                return False
            return not (old and p in fresh and (item, reason) not in self.this_run)

        kept = [x for x in self.lines if keep(x[0], x[1], True)] + [x for x in self.new if keep(x[0], x[1], False)]
        if len(kept) != len(self.lines) + len(self.new):
            atomic_write_text(self.path, "".join(line + "\n" for _, _, line in kept))
        rejected = {pair_of(item) for item, _, _ in kept}
        return {
            "pairs_published": len(published),
            "pairs_rejected": len(rejected - published),
            "pairs_done": len(published | rejected),
        }
