"""The orchestrator -> trainer contract: the one module both sides agree on.

The orchestrator turns teacher responses into `Sample`s and hands them to the
trainer on disk, in a samples directory:

    samples/
      shard-000000.jsonl   one JSON object per line, one `Sample` each
      shard-000001.jsonl   shards appear atomically (written to a temp file,
      ...                  fsynced, then renamed), so a reader never sees half a shard
      DONE                 written last (atomically) when the producer has finished;
                           holds {"shards": N, "samples": M}
      CONSUMED             written by the trainer: {"samples": K}, how many samples it
                           has taken; the producer waits while it is too far ahead

Nothing here imports torch or transformers: both sides, and tools such as
`distill inspect`, read samples with the standard library alone.

Each line records its format version (FORMAT_VERSION); a reader refuses a line of a newer
version. Optional per-token teacher fields (version 2) and on-policy fields (version 3) are
written only when set (docs/training.md, "Per-token teacher fields", "On-policy fields").
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from distill.core.done_marker import check_done
from distill.core.jsonl import read_jsonl
from distill.core.sample_fields import check_on_policy_fields, check_teacher_fields, check_token_fields

#: Bumped when a field is added or changes meaning; readers refuse samples of a newer format.
#: 1: the SFT fields. 2: adds the optional per-token teacher fields (TEACHER_FIELDS).
#: 3: adds the optional on-policy fields (ON_POLICY_FIELDS): a version-2 reader would drop them
#: silently and train the student's own samples as if they were the teacher's, so it must refuse.
#: Each line records the lowest version that holds it, so shards without these fields stay
#: version 1 (or 2), readable by older distills; a line without "version" is version 1.
FORMAT_VERSION = 3
TEACHER_FIELDS = ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")
ON_POLICY_FIELDS = ("sampling_logprobs", "group_id")

SHARD_RE = re.compile(r"^shard-(\d{6})\.jsonl$")
DONE_FILE = "DONE"
CONSUMED_FILE = "CONSUMED"
_OPTIONAL_FIELDS = frozenset(TEACHER_FIELDS + ON_POLICY_FIELDS)


@dataclass(frozen=True)
class Sample:
    """One training example for the student, in the student's own token ids."""

    # Stable unique id: "<prompt_id>/<sample_index>", plus "/turn<k>" when a
    # conversation was split into per-turn samples. Used for dedup and resume.
    sample_id: str
    # Context tokens: the conversation up to the first trained token, rendered with
    # the student's chat template and tokenised on its own, exactly as the student
    # would see it at inference. Never trained.
    prompt_ids: list[int]
    # Tokens after the prompt: assistant turns (trained) and, in multi-turn
    # samples, the user/tool turns between them (not trained).
    completion_ids: list[int]
    # One entry per `completion_ids` token: 1 = the student learns to emit this
    # token (assistant content, its tool calls, its end-of-turn token); 0 = context.
    completion_mask: list[int]
    # Id of the prompt this sample answers (from the prompt source or replay file).
    prompt_id: str = ""
    # Which of the n teacher samples for this prompt (0-based).
    sample_index: int = 0
    # Teacher's finish_reason for the last assistant turn ("stop", "length", "tool_calls").
    finish_reason: str | None = None
    # Reward from the optional online filter / recorded reward; None when not scored.
    reward: float | None = None
    # Teacher model name as the endpoint reported it.
    teacher_model: str | None = None
    # Free-form provenance (source dataset, recording offset, split policy, ...).
    meta: dict[str, Any] = field(default_factory=dict)
    # Optional per-token teacher fields (format version 2; written only when set), each with one
    # entry per `completion_ids` token, about that token. The teacher's log-probability of the
    # token: a finite number at every trained position (completion_mask 1), null allowed elsewhere.
    teacher_logprobs: list[float | None] | None = None
    # The teacher's top-k alternatives at each position, in the student's vocabulary: token ids and
    # their log-probabilities, as many of each at a position ([] where there are none). Set both or neither.
    teacher_topk_ids: list[list[int]] | None = None
    teacher_topk_logprobs: list[list[float]] | None = None
    # Optional on-policy fields (format version 3; written only when set). The log-probability of each
    # completion token under the policy that sampled it (mu_t; the student's weights at sampling time),
    # one entry per `completion_ids` token: finite at every trained position, null allowed elsewhere.
    sampling_logprobs: list[float | None] | None = None
    # Samples answering the same prompt in the same round share it: group-relative advantages
    # (`reward` minus the group's mean reward) are taken over it.
    group_id: str | None = None
    # Contract format version of this sample: the lowest that holds its fields (set on construction).
    version: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        if len(self.completion_ids) != len(self.completion_mask):
            raise ValueError(
                f"sample {self.sample_id}: completion_ids ({len(self.completion_ids)}) and "
                f"completion_mask ({len(self.completion_mask)}) differ in length"
            )
        if any(getattr(self, f) is not None for f in TEACHER_FIELDS):
            check_teacher_fields(self, TEACHER_FIELDS)
            object.__setattr__(self, "version", 2)
        if any(getattr(self, f) is not None for f in ON_POLICY_FIELDS):
            check_on_policy_fields(self)
            object.__setattr__(self, "version", 3)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    @property
    def num_trained(self) -> int:
        return sum(self.completion_mask)

    def to_json(self) -> str:
        # Same output as json.dumps(asdict(self)), without asdict's deep copy of every token list
        # (it dominated the orchestrator's per-sample cost); unset teacher fields are left out.
        d = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in _OPTIONAL_FIELDS or getattr(self, name) is not None
        }
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "Sample":
        version = d.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"{where}: sample format version {version!r} is not a version number (1, 2, ...)")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{where}: sample format version {version} was written by a newer distill; this one reads "
                f"versions up to {FORMAT_VERSION}. Fix: upgrade distill"
            )
        missing = [k for k in ("sample_id", "prompt_ids", "completion_ids", "completion_mask") if k not in d]
        if missing:
            hint = (  # a chat file given where samples are read (distill inspect, distill train --samples)
                ": a line with 'messages' is a conversation, not a sample. Fix: make samples of it with "
                "`distill tokenize` or `distill replay`"
                if "messages" in d or "conversations" in d
                else ""
            )
            raise ValueError(f"{where}: sample is missing field(s) {missing}{hint}")
        known = {f.name for f in fields(cls) if f.init}
        try:
            check_token_fields(d)
            return cls(**{k: v for k, v in d.items() if k in known})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Rejection:
    """A conversation that produced no sample, and why (written to rejects.jsonl)."""

    # Id of what was rejected (sample id, or "line <N>" for file input).
    item_id: str
    # Short machine-readable reason, e.g. "truncated", "invalid_tool_arguments".
    reason: str
    # Human-readable detail: what was wrong and where.
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------
# Atomic file helpers
# ---------------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:  # a full disk: name the file (one line in the CLI)
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Writer side
# ---------------------------------------------------------------------------


class ShardWriter:
    """Buffers samples and publishes them as numbered shards by atomic rename.

    Resumable: on open it continues after the highest shard present, and
    `existing_ids()` tells the producer which samples were already published.
    """

    def __init__(self, directory: str | os.PathLike, samples_per_shard: int = 64):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = max(1, samples_per_shard)
        self._buf: list[Sample] = []
        existing = list_shards(self.dir)
        self.next_index = (shard_index(existing[-1]) + 1) if existing else 0
        # One pass over what is already published: its count and its ids (for resume).
        self._ids: set[str] = set()
        self.published = 0
        for s in iter_samples(self.dir):
            self._ids.add(s.sample_id)
            self.published += 1
        done = self.dir / DONE_FILE
        if done.exists():  # a resumed producer is not done any more
            done.unlink()

    def existing_ids(self) -> set[str]:
        """Ids of every sample published so far (before and by this writer)."""
        return set(self._ids)

    def add(self, sample: Sample) -> None:
        self._buf.append(sample)
        if len(self._buf) >= self.samples_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        path = self.dir / f"shard-{self.next_index:06d}.jsonl"
        atomic_write_text(path, "".join(s.to_json() + "\n" for s in self._buf))
        self._ids.update(s.sample_id for s in self._buf)
        self.published += len(self._buf)
        self.next_index += 1
        self._buf = []

    def close(self) -> None:
        """Flush and mark the stream finished."""
        self.flush()
        atomic_write_text(
            self.dir / DONE_FILE,
            json.dumps({"shards": self.next_index, "samples": self.published}) + "\n",
        )


# ---------------------------------------------------------------------------
# Reader side
# ---------------------------------------------------------------------------


def shard_index(path: Path) -> int:
    m = SHARD_RE.match(path.name)
    assert m, path
    return int(m.group(1))


def list_shards(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if SHARD_RE.match(p.name)), key=shard_index)


_NO_LIMIT = 1 << 62  # shards are ours: no line length limit


class SamplesTimeout(TimeoutError):
    """The trainer waited trainer.sample_timeout for a sample that no producer wrote (a user error:
    the message names the folder, the key and the fix)."""


class ShardError(ValueError):
    """A shard line that cannot be read (damaged, malformed, or from a newer distill); the message names
    file:line and the fix. Readers (trainer, inspect) stop on it: a shard is never half-trained. Also a
    samples folder that ended without a sample to train on (trainer/train.py)."""


def read_shard(path: Path) -> list[Sample]:
    out = []
    for ln in read_jsonl(path, _NO_LIMIT, torn=False):  # written atomically: no torn line, any bad line is damage
        if ln.blank:
            continue
        where = f"{path}:{ln.number}"
        if ln.reason is not None:
            raise ShardError(
                f"{where}: {ln.problem}; shards are written atomically, so this file was edited or corrupted by hand"
            )
        try:
            out.append(Sample.from_dict(ln.value, where))
        except ShardError:
            raise
        except ValueError as e:  # the message already names file:line and the field
            raise ShardError(str(e)) from None
    return out


def iter_samples(directory: str | os.PathLike) -> Iterator[Sample]:
    """All samples published so far, in shard order (does not wait)."""
    for p in list_shards(directory):
        yield from read_shard(p)


def is_done(directory: str | os.PathLike) -> bool:
    return (Path(directory) / DONE_FILE).exists()


def follow_samples(
    directory: str | os.PathLike,
    start: int = 0,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
    producer_alive: Callable[[], bool] | None = None,
) -> Iterator[Sample]:
    """Yield samples from `start` on, waiting for new shards until DONE appears.

    `producer_alive`, if given, is a callable; when it returns False and no DONE
    marker exists, the stream ends with a RuntimeError instead of waiting forever.
    """
    seen = 0
    shard_pos = 0
    waited = 0.0
    while True:
        shards = list_shards(directory)
        progressed = False
        while shard_pos < len(shards):
            samples = read_shard(shards[shard_pos])
            shard_pos += 1
            progressed = True
            for s in samples:
                if seen >= start:
                    yield s
                seen += 1
        if progressed:
            waited = 0.0
            continue
        if is_done(directory):
            # DONE is written after the last shard; one more listing catches a shard
            # renamed between our listing and the DONE check.
            if len(list_shards(directory)) == shard_pos:
                check_done(Path(directory), shard_pos, seen)  # what was produced is what is here
                return
            continue
        if producer_alive is not None and not producer_alive():
            raise RuntimeError(
                f"the sample producer stopped before finishing {directory} (no {DONE_FILE} marker); "
                "see the orchestrator's error above"
            )
        if timeout_s is not None and waited >= timeout_s:
            fix = (
                "Fix: run the producer into that folder (`distill rollout CFG` or `distill replay CFG` with the "
                "same output_dir; `distill run CFG` does both and trains), or wait longer with trainer.sample_timeout"
                if producer_alive is None
                else "the producer is running but wrote none (a stalled or rate-limited teacher?). Fix: see the "
                "orchestrator's progress above, or wait longer with trainer.sample_timeout"
            )
            raise SamplesTimeout(
                f"no new samples in {directory} for {timeout_s:.0f}s, and no {DONE_FILE} marker. {fix}"
            )
        time.sleep(poll_s)
        waited += poll_s


def write_consumed(directory: str | os.PathLike, n: int) -> None:
    atomic_write_text(Path(directory) / CONSUMED_FILE, json.dumps({"samples": n}) + "\n")


def read_consumed(directory: str | os.PathLike) -> int:
    p = Path(directory) / CONSUMED_FILE
    try:
        return int(json.loads(p.read_text())["samples"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0
