"""One batch of conversations reconstructed across worker processes (the offline paths:
`distill tokenize` and replay; docs/reconstruction.md, "Performance").

`ParallelBuilder.build(convs)` returns what `sink.build_isolated(reconstructor, convs)`
returns in this process - per conversation, in input order, (samples, rejections) or the
exception it raised - but cuts a big batch into contiguous slices: one per worker process,
and one that this process builds itself while the workers run. The template rendering and
planning are Python, bound to one core by the GIL; processes use every core for them.

Results do not depend on the split: a conversation's samples depend only on it, the
tokenizer and the config. The caches (prompt ids, prompt renders, learnt constant texts)
save work but never change a result (docs/reconstruction.md, "Prefix renders"); each
process keeps its own. The workers' `stats` counters are added to the reconstructor's, so
the counts of samples and rejections by reason are those of a build in one process (work
counters such as `renders` or cache hits may differ, as the caches are per process).

The pool is spawned (safe beside threads) at the first batch that is big enough, after
`start_after` conversations were built in this process (a small file never pays the
startup: each worker imports transformers and builds its Reconstructor), and lives until
close(). A worker that dies (killed, out of memory) raises ReconstructWorkerDied.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from orchestrator.sink import _build_one, build_counted, build_isolated, exit_with_parent

#: Batches smaller than this are built in this process (the pool's cost per call - pickling
#: conversations and samples - is not worth it).
MIN_PARALLEL = 64
#: Conversations built in this process before the pool is started ("auto" workers).
START_AFTER = 1024
#: This process's slice is smaller than a worker's by this fraction per worker: it also sends
#: the conversations and unpickles every worker's samples (measured with bench_reconstruct_cpu.py:
#: 5-10% of the build's CPU), so from 10 workers on it only hands out and gathers.
PARENT_SHARE_COST = 0.1
#: Seconds between checks that the workers are alive while a batch is awaited.
WAIT_STEP_S = 0.5

_RECON = None


class ReconstructWorkerDied(RuntimeError):
    """A reconstruction worker process ended while building (killed, out of memory)."""


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def offline_workers(setting: int | str) -> int:
    """Worker processes for an offline build: "auto" = one per core besides this process's own."""
    if setting == "auto":
        return cores() - 1
    return int(setting)


def _init(blob: bytes, one_thread: bool) -> None:
    global _RECON
    exit_with_parent()
    if one_thread:  # the processes already use every core: no tokenizer threads on top
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ["RAYON_NUM_THREADS"] = "1"
    cls, tokenizer, cfg, max_seq_len = pickle.loads(blob)
    _RECON = cls(tokenizer, cfg, max_seq_len)


def _ready() -> int:
    return os.getpid()


def _picklable(e: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(e))
        return True
    except Exception:  # noqa: BLE001 - any failure: the parent redoes that conversation
        return False


def _finish(convs: list, results: list, post: Callable | None) -> list:
    """`post(conv, result)` for each result that is not an exception (if there is a post)."""
    if post is None:
        return results
    return [r if isinstance(r, Exception) else post(c, r) for c, r in zip(convs, results)]


def _build_slice(convs: list, post: Callable | None = None) -> tuple[list, dict]:
    """build_isolated over a slice, in a worker, then `post`; an exception that does not
    pickle becomes None (the parent builds that conversation again, getting the exception
    itself). Also returns what this slice added to the worker's stats."""
    out, delta = build_counted(_RECON, convs, lambda r, cs: _finish(cs, build_isolated(r, cs), post))
    return [None if isinstance(r, Exception) and not _picklable(r) else r for r in out], delta


def slices(n: int, weights: list[float]) -> list[tuple[int, int]]:
    """Contiguous (start, end) ranges covering range(n), one per weight, sized in proportion."""
    total, out, a, acc = sum(weights), [], 0, 0.0
    for w in weights:
        acc += w
        b = round(n * acc / total)
        out.append((a, b))
        a = b
    return out


class ParallelBuilder:
    """build_isolated over a batch, split across `workers` processes and this one."""

    def __init__(
        self,
        reconstructor,
        workers: int,
        min_batch: int | None = None,
        start_after: int | None = None,
        one_thread: bool = True,
    ):
        self.reconstructor = reconstructor
        self.workers = max(0, workers)
        self.min_batch = min_batch if min_batch is not None else MIN_PARALLEL
        self.start_after = start_after if start_after is not None else START_AFTER
        self.one_thread = one_thread  # workers' tokenizer on one thread (measured: bench_reconstruct.py)
        self.built_here = 0  # conversations built in this process before the pool started
        self.pool: ProcessPoolExecutor | None = None

    def start(self) -> float:
        """Starts the pool now (if not yet) and waits until every worker is ready; seconds it took."""
        t0 = time.perf_counter()
        if self.pool is None and self.workers:
            ctx = multiprocessing.get_context("spawn")
            r = self.reconstructor  # workers build their own (compiled templates don't pickle)
            blob = pickle.dumps((type(r), r.tokenizer, r.cfg, r.max_seq_len))
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_init, initargs=(blob, self.one_thread)
            )
            for f in [self.pool.submit(_ready) for _ in range(self.workers)]:
                self._result(f, 0)
        return time.perf_counter() - t0

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (none before the pool starts)."""
        return list(self.pool._processes) if self.pool is not None else []  # type: ignore[attr-defined]

    def build(self, convs: list, post: Callable | None = None) -> list:
        """(samples, rejections) or the exception raised, per conversation, in input order.

        `post(conv, result)`, a picklable function (module level, or a functools.partial of
        one), turns each result that is not an exception into what the caller keeps, in the
        process that built it: e.g. `distill tokenize`'s output lines, so that the JSON work
        runs on every core too and only strings travel back."""
        if (
            not self.workers
            or len(convs) < self.min_batch
            or (self.pool is None and self.built_here < self.start_after)
        ):
            self.built_here += len(convs)
            return _finish(convs, build_isolated(self.reconstructor, convs), post) if convs else []
        self.start()
        assert self.pool is not None
        parts = slices(len(convs), [max(0.0, 1 - PARENT_SHARE_COST * self.workers)] + [1.0] * self.workers)
        try:  # the pool may already know a worker died: submit raises then, not the result
            futures = [self.pool.submit(_build_slice, convs[a:b], post) for a, b in parts[1:]]
        except BrokenProcessPool as e:
            raise self._died(len(convs), e) from e
        a, b = parts[0]
        mine = build_isolated(self.reconstructor, convs[a:b]) if b > a else []  # this process's slice
        results = _finish(convs[a:b], mine, post)
        for (a, b), f in zip(parts[1:], futures):
            got = self._result(f, len(convs))
            if got is None:  # the slice could not travel (e.g. a value that does not pickle): built here
                results += _finish(convs[a:b], build_isolated(self.reconstructor, convs[a:b]), post)
                continue
            out, stats = got
            self.reconstructor.stats.update(stats)
            for c, r in zip(convs[a:b], out):
                results += [r] if r is not None else _finish([c], [_build_one(self.reconstructor, c)], post)
        return results

    def _result(self, future, n: int):
        """A worker's answer; None when its task raised (not a dead worker: that raises).

        Waited for in steps, checking the workers between them: the executor's own detection of a
        dead worker can miss a task submitted while it is failing the pending ones (Python 3.11:
        such a future never completes; seen as a hung CI run), so a dead worker process is
        checked for here too."""
        try:
            while True:
                try:
                    return future.result(timeout=WAIT_STEP_S)
                except TimeoutError:
                    if self._worker_died():
                        raise BrokenProcessPool("a worker process exited") from None
        except BrokenProcessPool as e:
            raise self._died(n, e) from e
        except Exception:  # noqa: BLE001 - the caller builds that slice in this process
            return None

    def _died(self, n: int, e: BaseException) -> "ReconstructWorkerDied":
        """The pool closed, and the error a dead worker is to the caller."""
        self.close()
        return ReconstructWorkerDied(
            f"a reconstruction worker process died (or failed to start) while building a batch of {n} "
            "conversations (killed, or out of memory?). Fix: rerun, or set "
            "orchestrator.reconstruct_workers = 0 to build in this process"
        )

    def _worker_died(self) -> bool:
        pool = self.pool
        if pool is None:
            return True
        try:
            procs = list(pool._processes.values())  # type: ignore[attr-defined]
        except RuntimeError:  # changed while read (the executor's thread): look again next step
            return False
        return bool(getattr(pool, "_broken", False)) or any(p.exitcode is not None for p in procs)

    def close(self) -> None:
        """Stops the workers (waits for them); a later build starts a new pool."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParallelBuilder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
