"""Rollout scheduler: prompts -> teacher -> recording -> reconstruction -> shards.

    run_rollouts(cfg, run_dir, reconstructor)   (async)   /   rollout(...)   (sync)

run_dir/recording.jsonl              every teacher choice, fsynced before it is used
run_dir/samples/shard-*.jsonl        published samples (contract.ShardWriter), DONE at the end
run_dir/rejects.jsonl                what produced no sample, and why
run_dir/orchestrator_metrics.jsonl   periodic counters, and the final summary

Resume: a rerun reads the recording and the published shards; recorded
(prompt, sample_index) pairs are never requested again, recorded but
unpublished ones are rebuilt from the recording, published ones are skipped
(orchestrator/resume.py); when nothing is left to ask, the teacher is not needed.

The parts: budget.py (BudgetGate), transport.py + kinds/chat.py (the teacher requests),
ask.py (the request/answer loop of one prompt), endpoint_check.py (the teacher is usable,
before the first paid request), rollout_metrics.py (counters, metrics lines, summary).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from distill.core.config import Orchestrator, RunConfig, api_key
from distill.core.redact import redact_url
from distill.core.verbosity import bar_position, close_bar
from orchestrator.ask import Asker
from orchestrator.budget import BudgetGate
from orchestrator.cache import open_cache
from orchestrator.endpoint_check import EndpointCheckError, check_endpoints
from orchestrator.failures import FailureTally, RolloutError, nothing_published
from orchestrator.limits import RetryPolicy
from orchestrator.prompts import count_prompts, load_prompts
from orchestrator.recording import RecordingWriter
from orchestrator.resume import load_resume, prompt_hasher, split_prompt
from orchestrator.rewards import load_reward_fn
from orchestrator.rollout_metrics import MetricsFile, RunCounters, format_summary, metrics_line
from orchestrator.sink import REJECTS, SAMPLES, Backpressure, Publisher, build_batch, make_reconstruct_pool  # noqa: F401
from orchestrator.transport import Transport

RECORDING = "recording.jsonl"
METRICS = "orchestrator_metrics.jsonl"


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _transport(oc: Orchestrator, key: str) -> Transport:
    """The teacher transport: the rollout model's endpoint(s), with the run's concurrency, retries and rate limits."""
    rm = oc.rollout_model
    return Transport(
        [rm.base_url, *rm.extra_base_urls],
        rm.model,
        key,
        headers=rm.headers,
        timeout=rm.timeout,
        concurrency=oc.concurrency,
        retry=RetryPolicy(oc.retry.max_attempts, oc.retry.initial_backoff, oc.retry.max_backoff),
        requests_per_minute=oc.requests_per_minute,
        tokens_per_minute=oc.tokens_per_minute,
    )


class _Rollout:
    """One run_rollouts call: its parts and the steps of the run (schedule, close). The parts: the budget gate
    (budget.py), the transport (transport.py), the request/answer loop (ask.py), the recording, the publisher;
    what a rerun reuses (resume.py); counters and metrics lines (rollout_metrics.py)."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        reconstructor,
        progress: bool,
        stop_event: asyncio.Event | None,
        backpressure: bool,
    ):
        self.oc = oc = cfg.orchestrator
        self.c = RunCounters()
        # Everything that can fail on a bad config or prompt file comes before the run directory is touched
        # (ShardWriter removes DONE, files are opened; only a torn last line of the recording is cut before).
        reward_fn = load_reward_fn(oc.reward_fn) if oc.reward_fn else None
        total_prompts = count_prompts(oc.source)  # a JSONL file is validated here, every line
        self.prompts = load_prompts(oc.source)
        self.n = oc.sampling.n or 1
        key = api_key(cfg)
        rm = oc.rollout_model
        self.resume = load_resume(run_dir / RECORDING, oc)  # an error if recorded prompts changed (policy "error")
        self.cache = open_cache(oc)  # orchestrator.cache_dir: answers shared between runs (None: off)
        if not self._nothing_to_send():  # a finished (or fully cached) run reruns without its teacher
            try:  # reachable, key accepted, model served: before any paid request (and before the run dir is touched)
                check_endpoints(rm, key)
            except EndpointCheckError as e:
                raise RolloutError(str(e)) from None
        # failed (prompt, sample) pairs: when they fail the run (orchestrator/failures.py)
        self.tally = FailureTally(
            oc.max_failed_fraction,
            total_prompts * self.n if total_prompts else None,
            max(10, 2 * oc.concurrency),
            redact_url(rm.base_url),
        )
        self.transport = _transport(oc, key)
        self.pool = self.pub = self.recw = self.metrics_f = self.bar = None
        try:
            self._open(run_dir, reconstructor, reward_fn, stop_event)
            if progress:
                from tqdm import tqdm

                self.bar = self.asker.bar = tqdm(
                    total=(total_prompts * self.n) if total_prompts else None,
                    initial=len(self.resume.loaded.records),
                    unit="sample",
                    desc="teacher",
                    file=sys.stderr,
                    **bar_position("teacher", backpressure),
                )  # backpressure: a trainer runs too
        except BaseException:
            self._close_opened()
            raise
        self.bp = Backpressure(run_dir / SAMPLES, oc.max_ahead, backpressure)

    def _nothing_to_send(self) -> bool:
        """Every pair of the source has a recorded answer in use, or a cached one: no request will be sent."""
        res = self.resume
        if res.nothing_to_ask:
            return True
        if self.cache is None:
            return False
        return self.cache.covers(
            load_prompts(self.oc.source), self.n, res.loaded.records, res.stale, prompt_hasher(self.oc)
        )

    def _open(self, run_dir: Path, reconstructor, reward_fn, stop_event: asyncio.Event | None) -> None:
        """Creates the run directory and opens the run's files and parts."""
        oc, loaded = self.oc, self.resume.loaded
        run_dir.mkdir(parents=True, exist_ok=True)
        stale = self.resume.drop_stale(run_dir / RECORDING)
        self.pool = make_reconstruct_pool(reconstructor, oc.reconstruct_workers)
        self.pub = Publisher(run_dir, reconstructor, oc.samples_per_shard, reward_fn, oc.min_reward, self.pool)
        self.gate = BudgetGate(
            oc.budget, round(loaded.requests), loaded.prompt_tokens, loaded.completion_tokens, stop_event
        )
        self.recw = RecordingWriter(run_dir / RECORDING)
        self.asker = Asker(
            oc,
            self.transport,
            self.gate,
            self.pub,
            self.recw,
            self.tally,
            self.c,
            prompt_hasher(oc),
            first_success=bool(loaded.records),
            cache=self.cache,
        )
        self.job_error: BaseException | None = None  # the first exception a job raised (a bug, a full disk)
        self.failed = False  # the run ended on an exception: shards get no DONE
        self.seen_prompts, self.tasks = set(), set()  # prompt ids reached; running jobs (asyncio tasks)
        self.c.extra = {
            "resumed_records": len(loaded.records),
            "torn_tail_bytes": len(loaded.torn_tail),
            "duplicate_records": loaded.duplicates,
            "superseded_records": loaded.superseded,
            "stale_rerequested": stale,
        }
        self.metrics_f = MetricsFile(run_dir / METRICS)

    def _close_opened(self) -> None:
        """After a failed __init__: closes what it had opened (no DONE; the transport holds no connection yet)."""
        if self.bar is not None:
            self.bar.close()
        if self.metrics_f is not None:
            self.metrics_f.close()
        if self.recw is not None:
            self.recw.close_file()
        if self.pub is not None:
            self.pub.close(done=False)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def fatal(self) -> RolloutError | None:
        """The error the run stops on (a fatal teacher answer, too many failures, no sample)."""
        return self.asker.fatal

    def _job_done(self, t: asyncio.Task, slots: asyncio.Semaphore) -> None:
        self.tasks.discard(t)
        slots.release()
        if t.cancelled():
            return
        e = t.exception()
        if e is not None and self.job_error is None:
            self.job_error = e  # raised by schedule() once the other jobs have finished
            self.gate.stop("error:internal")

    async def schedule(self) -> None:
        """Every prompt in order: rebuild its recorded-but-unpublished samples, then a job for the missing ones."""
        gate, stop_event, asker = self.gate, self.gate.stop_event, self.asker
        slots = asyncio.Semaphore(self.oc.concurrency * 2)
        for prompt in self.prompts:
            if stop_event is not None and stop_event.is_set():
                gate.stop("stopped")
            if gate.stop_reason:
                break
            missing = await self._resume(prompt)
            if not missing:
                continue
            await self.bp.wait(
                len(missing),
                self.pub,
                lambda: asker.in_flight_samples,
                lambda: gate.stop_reason is not None or (stop_event is not None and stop_event.is_set()),
            )
            await slots.acquire()
            if gate.stop_reason:
                slots.release()
                break
            asker.in_flight_samples += len(missing)
            t = asyncio.get_running_loop().create_task(asker.job(prompt, missing))
            self.tasks.add(t)
            t.add_done_callback(lambda t: self._job_done(t, slots))
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)  # errors: seen by _job_done
        if self.job_error is not None:
            e = self.job_error
            if isinstance(e, OSError) and e.filename:  # the run dir (a full or read-only disk): not the teacher
                raise RolloutError(
                    f"cannot write {e.filename}: {e.strerror}. The answers recorded before are kept. Fix: free "
                    "space on that disk (or make it writable), then rerun the same command to resume"
                ) from None
            raise RolloutError(
                f"a teacher job failed ({type(e).__name__}: {e}); answers recorded so far are kept, "
                "rerun the same command to resume"
            ) from e
        if gate.stop_reason is None:
            gate.stop("completed")

    async def _resume(self, prompt: dict) -> list[int]:
        """Publishes this prompt's samples recorded before a crash but never published; the indices never recorded."""
        self.seen_prompts.add(prompt["prompt_id"])
        missing, rebuild = split_prompt(
            prompt, self.n, self.resume.loaded.records, self.pub.is_published, self.resume.stale
        )
        if rebuild:
            await self.pub.publish(rebuild)
            self.c.rebuilt += len(rebuild)
        return missing

    def write_metrics(self, final: bool = False) -> dict:
        recorded = len(self.resume.loaded.records) + self.c.recorded_this_run
        if self.cache is not None:
            self.c.extra.update(self.cache.counts())
        return self.metrics_f.write(
            metrics_line(
                self.c, self.gate, self.pub, self.transport.stats, self.tally, recorded, self.bp.waited_s, final
            )
        )

    async def metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            self.write_metrics()

    async def close(self) -> dict:
        """Closes everything (shards get DONE unless the run failed or was interrupted); the final metrics line."""
        gate, pub = self.gate, self.pub
        self.c.extra["rebuilt_from_recording"] = self.c.rebuilt
        self.c.extra["recorded_not_in_source"] = (
            sum(1 for (p, _) in self.resume.loaded.records if p not in self.seen_prompts)
            if gate.stop_reason == "completed"
            else None
        )
        await self.recw.aclose()
        await self.transport.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.fatal is not None and self.fatal is self.asker.fatal_from_tally:
            self.asker.fatal = RolloutError(self.tally.early_message())  # with the final counts
        if self.fatal is None and not self.failed and gate.stop_reason not in ("interrupted", "stopped"):
            why = self.tally.verdict()
            why_none = (
                None
                if why
                else nothing_published(
                    len(self.seen_prompts),
                    pub.writer.published + pub.buffered,
                    pub.rejections,
                    pub.rlog.path,
                    gate.stop_reason,
                )
            )
            if why or why_none:
                self.asker.fatal = RolloutError(why or why_none)
                gate.stop_reason = "error:too_many_failures" if why else "error:no_samples"
        pub.close(done=self.fatal is None and not self.failed and gate.stop_reason != "interrupted")
        if self.bar is not None:
            close_bar(self.bar)
        self.c.extra.update(pub.pair_counts)
        summary = self.write_metrics(final=True)
        self.metrics_f.close()
        return summary


async def _close_after_failure(ro: _Rollout, metrics_task: asyncio.Task) -> None:
    """Close after the run failed: an OS error while closing (the same full or read-only disk, most
    likely) must not replace the error that says what went wrong."""
    metrics_task.cancel()
    try:
        await ro.close()
    except OSError as e:
        print(f"distill: while closing after the error below: {e}", file=sys.stderr)


async def run_rollouts(
    cfg: RunConfig,
    run_dir: Path,
    reconstructor,
    *,
    progress: bool = True,
    stop_event: asyncio.Event | None = None,
    backpressure: bool = True,
) -> dict:
    """Prompts -> teacher -> recording -> reconstruction -> shards. Resumable; returns a summary dict.

    `backpressure=False` for a rollout-only run with no trainer reading the shards
    (otherwise it waits for CONSUMED after max_ahead samples). `stop_event` may be an
    asyncio.Event or a threading.Event (it is polled with is_set(), so another thread
    can set it): no new request is sent, those in flight finish, shards close with DONE.
    """
    ro = _Rollout(cfg, Path(run_dir), reconstructor, progress, stop_event, backpressure)
    metrics_task = asyncio.get_running_loop().create_task(ro.metrics_loop())
    try:
        await ro.schedule()
    except Exception:
        # an error (a bad prompt line, a failed job, a bug): answers already paid for are still recorded
        ro.failed = True
        ro.gate.stop("error:internal")
        if ro.tasks:
            await asyncio.gather(*ro.tasks, return_exceptions=True)
        await _close_after_failure(ro, metrics_task)
        raise
    except BaseException:  # KeyboardInterrupt, cancellation: stop now
        ro.failed = True
        ro.gate.stop("interrupted")
        for t in ro.tasks:
            t.cancel()
        await _close_after_failure(ro, metrics_task)
        raise
    metrics_task.cancel()
    summary = await ro.close()
    if ro.bar is not None:  # above the trainer's bar, if one is running (distill run)
        from tqdm import tqdm

        tqdm.write(format_summary(summary), file=sys.stderr)
    else:
        print(format_summary(summary), file=sys.stderr)
    if ro.fatal is not None:
        raise ro.fatal
    return summary


def rollout(cfg: RunConfig, run_dir: Path, reconstructor, **kw) -> dict:
    """Synchronous wrapper around run_rollouts."""
    return asyncio.run(run_rollouts(cfg, Path(run_dir), reconstructor, **kw))
