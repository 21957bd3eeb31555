"""The producer sink: filter -> build -> rejects -> shards, with backpressure.

Live rollouts (orchestrator/scheduler.py) and replay (orchestrator/replay/) hand their
conversations (distill.core.conversation.Conversation) to the same code here:

- `Sink` builds conversations with the Reconstructor (in batches, optionally in a process
  pool), isolates the one conversation that made a batch raise (it gets its exception, the
  others their results), drops duplicate ids, writes rejections to the run's reject log and
  samples to the ShardWriter.
- `Publisher` is the live rollout's sink: the reward filter (`reward_fn` / `min_reward`),
  resume by published (prompt, sample) pairs, and rejects.jsonl kept exact across resumes
  (orchestrator/rejects.py).
- `Backpressure` holds the producer while it runs more than `max_ahead` samples past the
  trainer's CONSUMED marker: `wait` (async, live rollouts) and `wait_sync` (replay).
"""

from __future__ import annotations

import math
import asyncio
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from distill.core.conversation import Conversation
from distill.core.contract import ShardWriter, read_consumed
from orchestrator.rejects import RejectLog

SAMPLES = "samples"
REJECTS = "rejects.jsonl"

_WORKER_RECON = None

#: The reconstructor's counts (its `stats`) that a run's summary names, and how: turns kept in the samples but
#: not trained as the data gave them, so that nothing the user meant to train is left out unsaid.
NOTED = {
    "opening_turns_as_context": (
        "conversations whose opening assistant message was kept as untrained context (the student's template "
        "gives no prompt before a first message; docs/reconstruction.md, Rejection reasons, template_error)"
    ),
}


def format_notes(notes: dict[str, int]) -> str:
    """`Sink.notes()` for a summary line: "; <what>: <count>" per count, "" for none."""
    return "".join(f"; {NOTED[k]}: {v}" for k, v in notes.items() if k in NOTED)


def exit_with_parent() -> None:
    """In a pool worker: end when the process that started it is gone (killed without its
    cleanup): the pool's queues stay open in the other workers, so it would wait forever."""

    def watch(parent: int) -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, args=(os.getppid(),), daemon=True).start()


def _init_worker(blob: bytes) -> None:
    global _WORKER_RECON
    exit_with_parent()
    cls, tokenizer, cfg, max_seq_len = pickle.loads(blob)
    _WORKER_RECON = cls(tokenizer, cfg, max_seq_len)


def _worker_build(convs: list[Conversation]) -> tuple[list, dict]:
    """build_batch in a worker, and what it added to the worker's `stats` (the parent adds it to its own)."""
    return build_counted(_WORKER_RECON, convs)


def build_counted(reconstructor, convs: list[Conversation], build: Callable | None = None) -> tuple[list, dict]:
    """`build(reconstructor, convs)`'s results (default build_batch) and what it added to the reconstructor's
    `stats` counters ({} if it has none). Nothing is returned when the build raises, so a failed batch's
    partial counts never travel to the parent process."""
    stats = getattr(reconstructor, "stats", None)
    before = Counter(stats) if stats is not None else Counter()
    results = (build or build_batch)(reconstructor, convs)
    delta = Counter(stats) if stats is not None else Counter()
    delta.subtract(before)
    return results, {k: v for k, v in delta.items() if v}


def build_batch(reconstructor, convs: list[Conversation]) -> list:
    """Reconstructor.build over several conversations (one tokenizer batch when build_many exists)."""
    many = getattr(reconstructor, "build_many", None)
    if many is not None:
        return many(convs)
    return [reconstructor.build(**c.build_args()) for c in convs]


def build_isolated(reconstructor, convs: list[Conversation]) -> list:
    """build_batch's results; where the template or tokenizer raised, the conversations are
    redone one by one and the one that raised gets its exception (the others their results).
    The reconstructor's `stats` count each conversation once: what the failed batch counted is undone."""
    stats = getattr(reconstructor, "stats", None)
    before = Counter(stats) if stats is not None else None
    try:
        return build_batch(reconstructor, convs)
    except Exception:  # noqa: BLE001 - find which conversation it was
        if stats is not None:
            stats.clear()
            stats.update(before)
        return [_build_one(reconstructor, c) for c in convs]


def _build_one(reconstructor, conv: Conversation):
    try:
        return build_batch(reconstructor, [conv])[0]
    except Exception as e:  # noqa: BLE001 - reported as a rejection
        return e


def make_reconstruct_pool(reconstructor, workers: int | str) -> ProcessPoolExecutor | None:
    """Worker processes holding a copy of the reconstructor (spawned: safe beside threads);
    None for 0 or "auto" (live rollouts build in their own process unless told otherwise)."""
    if not isinstance(workers, int) or workers <= 0:
        return None
    ctx = multiprocessing.get_context("spawn")
    # the worker builds its own Reconstructor(tokenizer, cfg, max_seq_len) (compiled templates don't pickle)
    blob = pickle.dumps((type(reconstructor), reconstructor.tokenizer, reconstructor.cfg, reconstructor.max_seq_len))
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(blob,))


def sample_base(sample_id: str) -> str:
    """ "<prompt_id>/<sample_index>" of a sample id (drops a "/turn<k>" suffix)."""
    return "/".join(sample_id.split("/")[:2])


class Sink:
    """Builds conversations and publishes their samples; writes what produced none to `rejects`
    (anything with `add(item_id, reason, detail)`, e.g. a RejectLog) and counts it by reason."""

    def __init__(self, writer: ShardWriter, reconstructor, rejects, pool: ProcessPoolExecutor | None = None):
        self.writer = writer
        self.reconstructor = reconstructor
        self.rlog = rejects
        self.pool = pool
        self.rejections: Counter = Counter()
        self.buffered = 0  # samples added since the writer last wrote a shard
        self._seen: dict[str, str] = {}  # sample id -> where it was first read (see duplicate())

    def reject(self, item_id: str, reason: str, detail: str = "") -> None:
        self.rejections[reason] += 1
        self.rlog.add(item_id, reason, detail)

    def notes(self) -> dict[str, int]:
        """The reconstructor's NOTED counts so far (those above 0; builds in worker processes included)."""
        stats = getattr(self.reconstructor, "stats", None)
        return {k: stats[k] for k in NOTED if stats.get(k)} if isinstance(stats, dict) else {}

    def duplicate(self, conv: Conversation) -> str | None:
        """Where an earlier conversation with the same sample id was read, or None (then this
        one is remembered: memory grows with the conversations kept, not with those read)."""
        first = self._seen.get(conv.sample_id)
        if first is None:
            self._seen[conv.sample_id] = conv.where
        return first

    def build(self, convs: list[Conversation]) -> list:
        """(samples, rejections) or the exception it raised, per conversation (in this process)."""
        return build_isolated(self.reconstructor, convs) if convs else []

    async def abuild(self, convs: list[Conversation]) -> list:
        """`build`, in the process pool when there is one: the worker's `stats` counts are added to the
        reconstructor's, so its counts (samples, rejections by reason) are those of a build in this process."""
        if self.pool is None or not convs:
            return self.build(convs)
        try:
            results, counted = await asyncio.get_running_loop().run_in_executor(self.pool, _worker_build, convs)
        except Exception:  # noqa: BLE001 - find the conversation that broke the batch, keep the others
            return [_build_one(self.reconstructor, c) for c in convs]
        stats = getattr(self.reconstructor, "stats", None)
        if stats is not None:
            stats.update(counted)
        return results

    def add(self, sample: Any) -> None:
        self.writer.add(sample)
        self.buffered += 1
        if self.buffered >= self.writer.samples_per_shard:
            self.buffered = 0

    def flush(self) -> None:
        self.writer.flush()
        self.buffered = 0


class Publisher(Sink):
    """The live rollout's sink: reward filter, resume by published pairs, rejects.jsonl (RejectLog)."""

    def __init__(
        self,
        run_dir: Path,
        reconstructor,
        samples_per_shard: int,
        reward_fn,
        min_reward: float,
        pool: ProcessPoolExecutor | None = None,
    ):
        writer = ShardWriter(run_dir / SAMPLES, samples_per_shard)
        self.published_bases = {sample_base(i) for i in writer.existing_ids()}
        # stale lines dropped: orchestrator/rejects.py
        super().__init__(writer, reconstructor, RejectLog(run_dir / REJECTS, self.published_bases), pool)
        self.reward_fn = reward_fn
        self.min_reward = min_reward
        self.published_now: set[str] = set()  # pairs this run published a sample of
        self.pair_counts: dict[str, int] = {}
        self.samples = 0
        self.scored = 0
        self.passed = 0

    def is_published(self, prompt_id: str, index: int) -> bool:
        return f"{prompt_id}/{index}" in self.published_bases

    def score(self, prompt: dict, response: dict) -> float | None:
        if self.reward_fn is None:
            return None
        reward = float(self.reward_fn(prompt, response.get("content") or ""))
        if not math.isfinite(reward):  # NaN would pass min_reward (every comparison is false)
            raise ValueError(f"the reward function returned {reward}; a reward must be a finite number")
        return reward

    def _admit(self, prompt: dict | None, rec: dict) -> Conversation | None:
        """Reward filter for one recorded choice; its conversation if it passes."""
        sid = f"{rec['prompt_id']}/{rec['sample_index']}"
        reward = rec.get("reward")
        if self.reward_fn is not None:
            if reward is None and prompt is not None:
                try:
                    reward = self.score(prompt, rec["response"])
                except Exception as e:  # noqa: BLE001 - user code
                    self.reject(sid, "reward_error", f"{type(e).__name__}: {e}")
                    return None
            self.scored += 1
            if reward is None or reward < self.min_reward:
                self.reject(sid, "low_reward", f"reward {reward} < min_reward {self.min_reward}")
                return None
            self.passed += 1
        meta = {"endpoint": rec.get("endpoint"), "request_id": rec.get("request_id")}
        if prompt is not None and prompt.get("metadata", {}).get("dataset"):
            meta["dataset"] = prompt["metadata"]["dataset"]
        return Conversation(
            list(rec["messages"]) + [rec["response"]],
            rec.get("tools"),
            rec["prompt_id"],
            rec["sample_index"],
            rec.get("finish_reason"),
            reward,
            rec.get("model"),
            meta,
            sample_id=sid,
        )

    async def publish(self, items: list[tuple[dict | None, dict]]) -> int:
        """Filter and reconstruct recorded choices (one batch); returns how many samples were added."""
        convs = [c for c in (self._admit(p, r) for p, r in items) if c is not None]
        if not convs:
            return 0
        added = 0
        for conv, res in zip(convs, await self.abuild(convs)):
            if isinstance(res, Exception):
                self.reject(conv.sample_id, "reconstruction_error", f"{type(res).__name__}: {res}")
                continue
            samples, rejections = res
            for r in rejections:
                self.reject(r.item_id, r.reason, r.detail)
            for smp in samples:
                self.add(smp)
            if samples:
                self.published_bases.add(conv.sample_id)
                self.published_now.add(conv.sample_id)
            added += len(samples)
        self.samples += added
        return added

    def close(self, done: bool) -> None:
        if done:
            self.writer.close()
        else:
            self.writer.flush()
        self.buffered = 0
        self.pair_counts = self.rlog.close(self.published_bases, self.published_now)


class Backpressure:
    """Hold the producer while published + pending samples run more than max_ahead past CONSUMED."""

    def __init__(self, samples_dir: Path, max_ahead: int | None, enabled: bool = True, poll_s: float = 0.2):
        self.dir = samples_dir
        self.max_ahead = max_ahead if max_ahead is not None else 0
        self.enabled = enabled and max_ahead is not None  # None: no trainer to wait for
        self.poll_s = poll_s
        self.waited_s = 0.0

    async def wait(self, k: int, pub: Sink, in_flight_samples: Callable[[], int], stopped: Callable[[], bool]) -> None:
        """Before asking for k more samples (live rollouts): flushes buffered samples while it waits."""
        if not self.enabled:
            return
        t0 = time.monotonic()
        warned = False
        while not stopped():
            consumed = read_consumed(self.dir)
            ahead = pub.writer.published + pub.buffered + in_flight_samples() + k - consumed
            if ahead <= self.max_ahead or (
                in_flight_samples() == 0 and pub.buffered == 0 and pub.writer.published <= consumed
            ):
                break
            if pub.buffered:
                pub.flush()  # never hold back samples the trainer could be taking
            if not warned and time.monotonic() - t0 > 30:
                warned = True
                from tqdm import (
                    tqdm,  # tqdm.write: above the progress bars, which are redrawn below it
                )

                tqdm.write(
                    f"orchestrator: waiting for the trainer (published {pub.writer.published}, consumed "
                    f"{consumed}, max_ahead {self.max_ahead})",
                    file=sys.stderr,
                )
            await asyncio.sleep(self.poll_s)
        self.waited_s += time.monotonic() - t0

    def wait_sync(self, published: int, stopped: Callable[[], bool]) -> None:
        """While `published` (samples in written shards) runs more than max_ahead past CONSUMED (replay)."""
        if not self.enabled:
            return
        t0 = time.monotonic()
        while not stopped() and published - read_consumed(self.dir) > self.max_ahead:
            time.sleep(self.poll_s)
        self.waited_s += time.monotonic() - t0
