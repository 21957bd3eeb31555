"""The replay run: inputs -> filters -> the producer sink (build, rejects, shards, backpressure) -> summary."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.core.config.schema import unknown_columns
from distill.core.conversation import Conversation
from distill.core.contract import ShardWriter, atomic_write_text
from orchestrator.replay.checks import PublishedBefore, nothing_replayed
from orchestrator.replay.filters import make_filter
from orchestrator.replay.formats.openai_batch import BatchInputIndex
from orchestrator.replay.inputs import iter_conversations
from orchestrator.replay.reading import CORRUPT_GZIP, resolve_inputs
from orchestrator.replay.records import BadRecord, ReplayError
from orchestrator.build_pool import ParallelBuilder, offline_workers
from orchestrator.sink import Backpressure, Sink

if TYPE_CHECKING:  # the config module is light, but replay only needs its type
    from distill.core.config import RunConfig

#: Conversations reconstructed per Reconstructor.build_many call, at most; a batch is
#: also cut once this many input bytes were read since the last one (memory stays flat
#: on recordings of very long conversations).
REPLAY_BATCH = 64
REPLAY_BATCH_BYTES = 2 << 20
#: With worker processes (orchestrator.reconstruct_workers), batches of this many conversations
#: (or bytes) are split between the processes (orchestrator/build_pool.py).
PARALLEL_BATCH = 256
PARALLEL_BATCH_BYTES = 8 << 20
ON_ERROR = ("skip", "fail")


class _Outputs:
    """rejects.jsonl (filtered / not reconstructible) and replay_rejects.jsonl (unreadable records).

    Unlike a live run's RejectLog (resumed, kept exact across runs), a replay rereads all its
    inputs each time, so it writes both files afresh (buffered; fsynced at the end)."""

    def __init__(self, run_dir: Path):
        self.rejects_path = run_dir / "rejects.jsonl"
        self.bad_path = run_dir / "replay_rejects.jsonl"
        # JSONL: a lone surrogate in a detail or excerpt is written as its JSON escape (lossless)
        self.rejects = open(self.rejects_path, "w", encoding="utf-8", errors="backslashreplace")
        self.bad = open(self.bad_path, "w", encoding="utf-8", errors="backslashreplace")

    def add(self, item_id: str, reason: str, detail: str) -> None:
        # the bytes of Rejection(item_id, reason, detail).to_json(), without its dataclass round trip
        self.rejects.write(
            json.dumps(
                {"item_id": item_id, "reason": reason, "detail": detail}, separators=(",", ":"), ensure_ascii=False
            )
            + "\n"
        )

    def bad_record(self, b: BadRecord) -> None:
        self.bad.write(b.to_json() + "\n")

    def close(self) -> None:
        for f in (self.rejects, self.bad):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="replay",
        file=sys.stderr,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _input_paths(cfg: RunConfig, inputs: list[str] | None, on_error: str) -> list[str]:
    """The input files (checked options first): `inputs`, else orchestrator.source.path."""
    src, rc = cfg.orchestrator.source, cfg.orchestrator.replay
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    why = unknown_columns(rc.columns)  # the config validator refused these (exit 2); a dict edited in place since
    if why is not None:
        raise ValueError(f"orchestrator.replay.columns: {why}")
    patterns = list(inputs) if inputs else ([src.path] if src.path else [])
    if not patterns:
        raise ReplayError(
            "orchestrator.source.path",
            None,
            None,
            "is not set and no input file was given: replay has nothing to read",
            'set orchestrator.source.path = "FILE.jsonl" (files, '
            "folders or globs), or pass input files: distill replay CONFIG INPUT...",
        )
    return resolve_inputs(patterns)


class _Replay:
    """One replay() call: its sink, its counters, and the steps of the run as methods."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        reconstructor,
        paths: list[str],
        on_error: str,
        progress: bool,
        max_ahead: int | None,
        stop_event,
    ):
        self.t0 = time.perf_counter()
        self.src, self.rc = cfg.orchestrator.source, cfg.orchestrator.replay
        self.paths, self.on_error, self.stop_event = paths, on_error, stop_event
        self.batch = BatchInputIndex([self.rc.batch_input], self.rc.max_line_bytes) if self.rc.batch_input else None
        writer = ShardWriter(run_dir / "samples", samples_per_shard=cfg.orchestrator.samples_per_shard)
        self.published = PublishedBefore(writer)  # a resumed replay: the samples it must build again
        self.keep = make_filter(self.rc)
        self.out = _Outputs(run_dir)
        self.sink = Sink(writer, reconstructor, self.out)
        self.builder = ParallelBuilder(reconstructor, offline_workers(cfg.orchestrator.reconstruct_workers))
        self.max_batch, self.max_bytes = (
            (PARALLEL_BATCH, PARALLEL_BATCH_BYTES) if self.builder.workers else (REPLAY_BATCH, REPLAY_BATCH_BYTES)
        )
        self.bp = Backpressure(writer.dir, max_ahead)
        self.counts: Counter = Counter()
        self.filtered: Counter = Counter()
        self.rejected: Counter = Counter()
        self.formats: Counter = Counter()
        self.reasons: Counter = Counter()  # bad records per reason
        self.outcomes: Counter = Counter()  # what became of each conversation / unreadable record
        self.tokens: Counter = Counter()
        self.bad_examples: list[str] = []
        self.first_problem = ""  # the first filtered, rejected or unreadable record: reason and detail
        self.hints: list[str] = []  # BadRecord.hint of inputs that are not JSON Lines, each once
        self.bar = _progress_bar(sum(os.path.getsize(p) for p in paths), progress)
        self.pending_bytes = 0
        self.todo: list[Conversation] = []  # passed the filters, waiting for one build_many call
        self.todo_from = 0  # counts["bytes"] when todo was last empty

    def on_bytes(self, n: int) -> None:
        self.pending_bytes += n
        self.counts["bytes"] += n
        if self.bar is not None and self.pending_bytes >= (1 << 20):
            self.bar.update(self.pending_bytes)
            self.pending_bytes = 0
            self.bar.set_postfix(samples=self.counts["samples"], refresh=False)

    def stopped(self) -> bool:  # the concurrent trainer has finished: nothing more is wanted
        return self.stop_event is not None and self.stop_event.is_set()

    def bad(self, item: BadRecord) -> None:
        self.counts["bad_records"] += 1
        self.reasons[item.reason] += 1
        self.counts["partial_last_lines" if item.partial else "bad_lines"] += 1
        self.out.bad_record(item)
        if len(self.bad_examples) < 5:
            self.bad_examples.append(str(item.as_error()))
        if not self.first_problem:
            problem, fix = item.problem_and_fix()
            self.first_problem = f"{item.reason}: {problem} ({item.file}:{item.line}" + (
                f"; fix: {fix})" if fix else ")"
            )
        if item.hint and item.hint not in self.hints:
            self.hints.append(item.hint)
        if item.partial or (item.reason == CORRUPT_GZIP and self.on_error == "skip"):  # (fail: the error says it)
            print(f"warning: {item.file}:{item.line}: {item.error}; skipped", file=sys.stderr)

    def flush(self) -> None:
        """Builds the conversations waiting in `todo` and publishes their samples."""
        for c, result in zip(self.todo, self.builder.build(self.todo)):
            if isinstance(result, Exception):
                b = BadRecord(
                    c.file,
                    c.line,
                    "messages",
                    f"reconstruction failed: {type(result).__name__}: {result}",
                    reason="reconstruction_error",
                )
                self.bad(b)
                if self.on_error == "fail":
                    raise b.as_error() from result
                continue
            self._publish(c, *result)
        self.todo.clear()
        self.todo_from = self.counts["bytes"]

    def _publish(self, c: Conversation, samples: list, rejections: list) -> None:
        self.outcomes["trained" if samples else "rejected"] += 1
        for r in rejections:
            self.rejected[r.reason] += 1
            detail = f"{r.detail} ({c.where})".lstrip()
            self.sink.reject(r.item_id, r.reason, detail)
            self.first_problem = self.first_problem or f"{r.reason}: {detail}"
        for s in samples:
            if self.published.built_again(s, c):
                self.counts["already_published"] += 1
                continue
            self.sink.add(s)
            self.counts["samples"] += 1
            self.tokens["prompt"] += len(s.prompt_ids)
            self.tokens["completion"] += len(s.completion_ids)
            self.tokens["trained"] += s.num_trained
            self.bp.wait_sync(self.sink.writer.published, self.stopped)

    def _filter(self, c: Conversation, name: str, detail: str) -> None:
        self.outcomes["filtered"] += 1
        self.filtered[name] += 1
        self.sink.reject(c.sample_id, name, f"replay filter: {detail} ({c.where})")
        self.first_problem = self.first_problem or f"{name}: {detail} ({c.where})"

    def take(self, c: Conversation) -> None:
        """One readable conversation: the filters, the duplicate-id check, then the build queue."""
        self.counts["conversations"] += 1
        self.formats[c.format] += 1
        why = self.keep(c)
        if why is not None:
            self._filter(c, *why)
            return
        # Ids are unique per replay: of the records that pass the filters, the first with
        # an id wins (remembered only for those, so memory grows with samples, not records).
        first = self.sink.duplicate(c)
        if first is not None:
            self._filter(c, "duplicate_id", f"id already used at {first}")
            return
        self.todo.append(c)
        if len(self.todo) >= self.max_batch or self.counts["bytes"] - self.todo_from >= self.max_bytes:
            self.flush()

    def read_all(self) -> None:
        """Every input record, in order, until the end, the record limit or a stop."""
        last_key: tuple[str, int] | None = None
        for item in iter_conversations(
            self.paths, self.src.format, self.rc.columns, self.batch, self.on_bytes, self.rc.max_line_bytes
        ):
            if self.stopped():
                self.counts["stopped_early"] = 1
                break
            key = (item.file, item.line)
            if key != last_key:  # one record may hold several conversations (batch choices)
                if self.rc.limit is not None and self.counts["records"] >= self.rc.limit:
                    self.counts["limited"] = 1
                    break
                self.counts["records"] += 1
                last_key = key
            elif isinstance(item, Conversation):
                self.counts["extra_conversations"] += 1  # a Batch API line with several choices
            if isinstance(item, BadRecord):
                self.bad(item)
                if self.on_error == "fail" and not item.partial:
                    self.flush()  # what came before it is written, as without batching
                    raise item.as_error()
                continue
            self.take(item)
        if not self.stopped():
            self.flush()
            if not self.counts["limited"]:
                self.published.check_all_built()
        self.outcomes["not_reconstructed"] += len(self.todo)  # the trainer finished first (distill run)
        w = self.sink.writer
        w.flush()
        if w.published or self.stopped():
            w.close()
        # else nothing to train on, now or before: not marked done (replay() raises)

    def close(self) -> None:
        self.builder.close()
        self.out.close()
        if self.batch is not None:
            self.batch.close()
        if self.bar is not None:
            self.bar.update(self.pending_bytes)
            self.bar.close()

    def summary(self) -> dict[str, Any]:
        counts, elapsed = self.counts, max(time.perf_counter() - self.t0, 1e-9)
        return {
            "inputs": self.paths,
            "formats": dict(sorted(self.formats.items())),
            "records": counts["records"],
            "conversations": counts["conversations"],
            "filtered": dict(sorted(self.filtered.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "bad_records": counts["bad_records"],
            "bad_lines": counts["bad_lines"],
            "partial_last_lines": counts["partial_last_lines"],
            "bad_record_reasons": dict(sorted(self.reasons.items())),
            "bad_record_examples": self.bad_examples,
            "first_problem": self.first_problem,  # nothing_replayed quotes it
            "not_jsonl": self.hints,  # inputs that look like CSV or pretty-printed JSON, and how to convert them
            # Each record (plus each extra choice of a Batch API line) ends in exactly one outcome:
            # records + extra_conversations == trained + filtered + rejected + bad_records + not_reconstructed.
            "extra_conversations": counts["extra_conversations"],
            "outcomes": {
                "trained": self.outcomes["trained"],
                "filtered": self.outcomes["filtered"],
                "rejected": self.outcomes["rejected"],
                "bad_records": counts["bad_records"],
                "not_reconstructed": self.outcomes["not_reconstructed"],
            },
            "reconstruction_notes": self.sink.notes(),
            "samples": counts["samples"],
            "already_published": counts["already_published"],
            "samples_total": self.sink.writer.published,
            "prompt_tokens": self.tokens["prompt"],
            "completion_tokens": self.tokens["completion"],
            "trained_tokens": self.tokens["trained"],
            "elapsed_s": round(elapsed, 3),
            "records_per_s": round(counts["records"] / elapsed, 1),
            "samples_per_s": round(counts["samples"] / elapsed, 1),
            "mb_per_s": round(counts["bytes"] / elapsed / 1e6, 2),
            "samples_dir": str(self.sink.writer.dir),
            "rejects": str(self.out.rejects_path),
            "replay_rejects": str(self.out.bad_path),
            "on_error": self.on_error,
        }


def replay(
    cfg: RunConfig,
    run_dir: Path,
    reconstructor,
    *,
    inputs: list[str] | None = None,
    on_error: str | None = None,
    progress: bool = True,
    max_ahead: int | None = None,
    stop_event=None,
) -> dict:
    """Read inputs (default cfg.orchestrator.source.path; globs ok) -> filters -> reconstructor.build_many
    (batches of REPLAY_BATCH conversations or REPLAY_BATCH_BYTES) -> ShardWriter(run_dir/'samples') closed
    with DONE; rejects to run_dir/'rejects.jsonl', unreadable records to run_dir/'replay_rejects.jsonl';
    returns a summary dict (also written to run_dir/'replay_summary.json') with counts per filter /
    rejection reason, skipped lines, throughput.

    `inputs` (files, folders or globs) replaces the configured path; `on_error` ("skip" | "fail")
    replaces orchestrator.replay.on_error. `max_ahead`, when given, makes the replay wait while it
    is more than that many samples ahead of the trainer's CONSUMED count (for `distill run`).
    Samples already in run_dir/samples (a resumed replay) are not written again.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    on_error = on_error or cfg.orchestrator.replay.on_error
    paths = _input_paths(cfg, inputs, on_error)
    run = _Replay(cfg, run_dir, reconstructor, paths, on_error, progress, max_ahead, stop_event)
    run.t0 = t0
    try:
        run.read_all()
    finally:
        run.close()
    summary = run.summary()
    atomic_write_text(run_dir / "replay_summary.json", json.dumps(summary, indent=2) + "\n")
    if not summary["samples_total"] and not run.stopped():
        raise nothing_replayed(summary, run_dir)
    return summary
