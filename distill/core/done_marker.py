"""The DONE marker's check: a finished samples folder holds what its producer wrote.

`ShardWriter.close` writes DONE as {"shards": N, "samples": M}. A reader that reached the end of a
folder marked done compares: a shard deleted, added or cut by hand (or a DONE copied from another
folder) would otherwise train on other data than was produced, in silence. An empty DONE (written by
hand, or by tools that only mark the end) is taken as it is.
"""

from __future__ import annotations

import json
from pathlib import Path


class DoneMismatch(Exception):
    """A folder marked done does not hold what its DONE marker says (a user error: named, with the fix)."""


def check_done(directory: Path, shards: int, samples: int) -> None:
    """Raises DoneMismatch when DONE in `directory` disagrees with the `shards` and `samples` read."""
    path = Path(directory) / "DONE"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        text = "?"
    if not text:
        return
    try:
        said = json.loads(text)
        want = (int(said["shards"]), int(said["samples"]))
    except (ValueError, TypeError, KeyError):
        raise DoneMismatch(
            f'{path} is damaged ({text[:60]!r}; the producer writes {{"shards": N, "samples": M}}). Fix: rerun '
            "the command that made the samples (it writes DONE again), or delete the folder and produce it anew"
        ) from None
    if want != (shards, samples):
        raise DoneMismatch(
            f"{directory}: its DONE marker says {want[0]} shard(s) with {want[1]} sample(s), but the folder holds "
            f"{shards} shard(s) with {samples} sample(s): shards were removed, added or cut since it was "
            "written. Fix: put the folder back as it was produced, or produce it anew (delete it and rerun the "
            "command that made it)"
        )
