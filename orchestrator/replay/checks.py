"""What a replay checks against its run folder at the end: that a resumed replay built again every sample
published before it, unchanged (a published sample cannot be taken back), and that a replay made something."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from distill.core.contract import ShardWriter, iter_samples
from distill.core.conversation import Conversation
from distill.core.verbosity import quoted
from orchestrator.failures import reason_fix
from orchestrator.replay.records import ReplayError

_FIX = "replay into a new output_dir, or delete that samples folder to build it again"


def _digest(s) -> bytes:
    """What a sample trains on (its ids and mask), hashed."""
    return hashlib.blake2b(repr((s.prompt_ids, s.completion_ids, s.completion_mask)).encode(), digest_size=16).digest()


class PublishedBefore:
    """The samples a resumed replay finds already published: each must be built again, the same."""

    def __init__(self, writer: ShardWriter):
        self.dir = writer.dir
        self.digests = {s.sample_id: _digest(s) for s in iter_samples(writer.dir)} if writer.published else {}
        self.found: set[str] = set()

    def built_again(self, s, c: Conversation) -> bool:
        """Whether sample `s` (built from `c`) was published before; one published with other tokens is an error."""
        if s.sample_id not in self.digests:
            return False
        if self.digests[s.sample_id] != _digest(s):
            raise ReplayError(
                c.file,
                c.line,
                None,
                f"the sample built from this record now differs from the one published as {s.sample_id!r} in "
                f"{self.dir} (the record, the student's tokenizer or [orchestrator.reconstruction] "
                "changed since), which a resumed replay cannot take back",
                _FIX,
            )
        self.found.add(s.sample_id)
        return True

    def check_all_built(self) -> None:
        """After reading all the input: a published sample not built again is from a record edited (an
        id-less record's id is its content's), removed or now filtered, and would still be trained."""
        if len(self.found) == len(self.digests):
            return
        gone = sorted(set(self.digests) - self.found)
        raise ReplayError(
            str(self.dir),
            None,
            None,
            f"{len(gone)} sample(s) published by an earlier run of this replay were not built from the input "
            f"this time (e.g. {', '.join(repr(g) for g in gone[:3])}): their records were edited (a record "
            "without an id is known by its content), removed, or are now filtered or rejected, and a resumed "
            "replay cannot take a published sample back. Nothing was marked done",
            _FIX,
        )


def nothing_replayed(summary: dict, run_dir: Path) -> ReplayError:
    """The error of a replay that ended without a single sample (none published before either)."""
    o, inputs = summary["outcomes"], summary["inputs"]
    where = ", ".join(inputs[:3]) + (f" (+{len(inputs) - 3} more)" if len(inputs) > 3 else "")
    if not summary["records"]:
        return ReplayError(where, None, None, "no record to replay (empty input)", "give a file with records")
    why = [
        f"{o[k]} {name} {json.dumps(summary[detail])}"
        for k, name, detail in (
            ("filtered", "filtered", "filtered"),
            ("rejected", "rejected", "rejected"),
            ("bad_records", "bad", "bad_record_reasons"),
        )
        if o[k]
    ]
    return ReplayError(
        where,
        None,
        None,
        f"no sample was produced from {summary['records']} record(s): "
        + " + ".join(why or ["none trained"])
        + f" (rejects in {run_dir / 'rejects.jsonl'}, bad records in {run_dir / 'replay_rejects.jsonl'}). "
        + _first_example(summary)
        + "Nothing was marked done",
        "; ".join(summary.get("not_jsonl", [])[:1])
        or "fix the records or the filters ([orchestrator.replay])"
        + reason_fix(Counter(summary["rejected"]))
        + " and rerun the same command",
    )


def _first_example(summary: dict) -> str:
    """The first filtered, rejected or unreadable record's reason and detail, shortened: the counts by
    reason alone do not say what to fix (a chat file with ShareGPT's roles is all `no_assistant_turn`,
    and only the detail names the roles it holds)."""
    example = summary.get("first_problem", "")
    return f"The first: {quoted(example)}. " if example else ""
