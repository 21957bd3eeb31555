"""Rollout scheduler: prompts -> teacher -> recording -> reconstruction -> shards.

    run_rollouts(cfg, run_dir, reconstructor)   (async)   /   rollout(...)   (sync)

run_dir/recording.jsonl              every teacher choice, fsynced before it is used
run_dir/samples/shard-*.jsonl        published samples (contract.ShardWriter), DONE at the end
run_dir/rejects.jsonl                what produced no sample, and why
run_dir/orchestrator_metrics.jsonl   periodic counters, and the final summary

Resume: a rerun reads the recording and the published shards; recorded
(prompt, sample_index) pairs are never requested again, recorded but
unpublished ones are rebuilt from the recording, published ones are skipped.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

from distill.core.config import RunConfig, api_key
from distill.core.verbosity import bar_position, close_bar
from orchestrator.client import (NonRetryableError, RetryPolicy, StopRequested, TeacherClient, TeacherError,
                                 TeacherResponse)
from orchestrator.failures import FailureTally, nothing_published
from orchestrator.preflight import PreflightError, preflight, shown_url, v1_hint
from orchestrator.prompts import count_prompts, load_prompts
from orchestrator.recording import RecordingWriter, load_recording, make_record, mark_superseded
from orchestrator.request_hash import PromptChangedError, base_sampling, request_hash, stale_keys
from orchestrator.request_hash import check as check_prompts
from orchestrator.rewards import load_reward_fn
from orchestrator.sink import REJECTS, SAMPLES, Backpressure, Publisher, build_batch, make_reconstruct_pool  # noqa: F401

RECORDING = "recording.jsonl"
METRICS = "orchestrator_metrics.jsonl"

#: Non-retryable statuses that mean the whole run is misconfigured (key, permissions, model name).
#: 402: payment required (out of credit). A 429 with code "insufficient_quota" is fatal too (client.py).
FATAL_STATUS = {401, 402, 403, 404}


class RolloutError(RuntimeError):
    """The run stopped on an error it cannot work around (bad key, unknown model, ...)."""


# ---------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------


class BudgetGate:
    """Counts spend and refuses requests past a budget (or after a stop).

    Every HTTP attempt reserves its estimated tokens; a request is refused only
    when the estimate would not fit even after all in-flight requests have
    settled, so with `max_tokens` set the completion-token and cost budgets are
    never exceeded, and max_requests is exact.
    """

    def __init__(self, budget, prior_requests: int = 0, prior_prompt: float = 0.0, prior_completion: float = 0.0,
                 stop_event: asyncio.Event | None = None):
        self.b = budget
        self.requests = prior_requests
        self.prompt_tokens = prior_prompt
        self.completion_tokens = prior_completion
        self.res_prompt = 0.0
        self.res_completion = 0.0
        self.in_flight = 0
        self.stop_reason: str | None = None
        self.stop_event = stop_event
        self._settled = asyncio.Condition()

    def cost(self, prompt: float | None = None, completion: float | None = None) -> float:
        p = self.prompt_tokens if prompt is None else prompt
        c = self.completion_tokens if completion is None else completion
        return (p * self.b.cost_per_1k_prompt + c * self.b.cost_per_1k_completion) / 1000.0

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def stopped(self) -> bool:
        """A stop reason is set or the stop event fired (the client ends retry waits early on it)."""
        return self.stop_reason is not None or (self.stop_event is not None and self.stop_event.is_set())

    def _over(self, est_p: float, est_c: float) -> str | None:
        b = self.b
        if b.max_requests is not None and self.requests >= b.max_requests:
            return "budget:max_requests"
        c = self.completion_tokens + self.res_completion
        if b.max_completion_tokens is not None and (c >= b.max_completion_tokens
                                                    or c + est_c > b.max_completion_tokens):
            return "budget:max_completion_tokens"
        if b.max_cost is not None:
            cost = self.cost(self.prompt_tokens + self.res_prompt + est_p, c + est_c)
            if cost > b.max_cost or self.cost(self.prompt_tokens + self.res_prompt, c) >= b.max_cost:
                return "budget:max_cost"
        return None

    async def reserve(self, est_p: float, est_c: float) -> None:
        async with self._settled:
            while True:
                if self.stop_event is not None and self.stop_event.is_set():
                    self.stop("stopped")
                if self.stop_reason:
                    raise StopRequested(self.stop_reason)
                over = self._over(est_p, est_c)
                if over is None:
                    break
                if self.in_flight == 0:
                    self.stop(over)
                    raise StopRequested(over)
                await self._settled.wait()  # in-flight estimates may free room
            self.requests += 1
            self.in_flight += 1
            self.res_prompt += est_p
            self.res_completion += est_c

    def settle(self, est_p: float, est_c: float, usage: dict[str, int] | None) -> None:
        self.in_flight -= 1
        self.res_prompt -= est_p
        self.res_completion -= est_c
        if usage:
            self.prompt_tokens += usage.get("prompt_tokens", 0)
            self.completion_tokens += usage.get("completion_tokens", 0)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._settled:
            self._settled.notify_all()


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _estimate_prompt_tokens(messages: list[dict]) -> float:
    return len(json.dumps(messages, ensure_ascii=False)) / 4.0


class _Rollout:
    """One run_rollouts call: its parts, its counters, and the steps of the run as methods."""

    def __init__(self, cfg: RunConfig, run_dir: Path, reconstructor, progress: bool,
                 stop_event: asyncio.Event | None, backpressure: bool):
        self.oc = oc = cfg.orchestrator
        self.t_begin = time.time()
        # Everything that can fail on a bad config or prompt file comes before the run directory is touched
        # (ShardWriter removes DONE, the recording's torn tail is cut, files are opened).
        reward_fn = load_reward_fn(oc.reward_fn) if oc.reward_fn else None
        total_prompts = count_prompts(oc.source)  # a JSONL file is validated here, every line
        self.prompts = load_prompts(oc.source)
        self.n = oc.sampling.n or 1
        key = api_key(cfg)
        rm = oc.rollout_model
        try:  # reachable, key accepted, model served: before any paid request (and before the run dir is touched)
            preflight(rm, key)
        except PreflightError as e:
            raise RolloutError(str(e)) from None
        # failed (prompt, sample) pairs: when they fail the run (orchestrator/failures.py)
        self.tally = FailureTally(oc.max_failed_fraction, total_prompts * self.n if total_prompts else None,
                                  max(10, 2 * oc.concurrency), shown_url(rm.base_url))
        self.unusable: Counter = Counter()  # choices asked again, by reason (empty_content, missing_choice, ...)
        self.client = TeacherClient(
            [rm.base_url, *rm.extra_base_urls], rm.model, key, headers=rm.headers, timeout=rm.timeout,
            concurrency=oc.concurrency,
            retry=RetryPolicy(oc.retry.max_attempts, oc.retry.initial_backoff, oc.retry.max_backoff),
            requests_per_minute=oc.requests_per_minute, tokens_per_minute=oc.tokens_per_minute)
        self.pool = self.pub = self.recw = self.metrics_f = self.bar = None
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.loaded = load_recording(run_dir / RECORDING)
            self.stale = self._check_prompts(run_dir / RECORDING)
            self.pool = make_reconstruct_pool(reconstructor, oc.reconstruct_workers)
            self.pub = Publisher(run_dir, reconstructor, oc.samples_per_shard, reward_fn, oc.min_reward,
                                 self.pool)
            self.gate = BudgetGate(oc.budget, round(self.loaded.requests), self.loaded.prompt_tokens,
                                   self.loaded.completion_tokens, stop_event)
            self.bp = Backpressure(run_dir / SAMPLES, oc.max_ahead, backpressure)
            self.recw = RecordingWriter(run_dir / RECORDING)
            # n_honoured: no server answered fewer choices than n. first_success: a request has succeeded
            # (in this run, or in the run the recording comes from) -- until then a 4xx stops the run.
            self.n_honoured, self.first_success = True, bool(self.loaded.records)
            self.n_ignored_responses = self.in_flight_samples = self.requests_ok = self.recorded_this_run = 0
            self.rebuilt, self.completion_mean, self.fatal = 0, 0.0, None  # fatal: the RolloutError to raise
            self.job_error: BaseException | None = None  # the first exception a job raised (a bug, a full disk)
            self.failed = False  # the run ended on an exception: shards get no DONE
            self.seen_prompts, self.tasks = set(), set()  # prompt ids reached; running jobs (asyncio tasks)
            self.extra = {"resumed_records": len(self.loaded.records), "torn_tail_bytes": len(self.loaded.torn_tail),
                          "duplicate_records": self.loaded.duplicates, "superseded_records": self.loaded.superseded,
                          "stale_rerequested": self.stale}
            self.metrics_f = open(run_dir / METRICS, "a", encoding="utf-8")
            if progress:
                from tqdm import tqdm
                self.bar = tqdm(total=(total_prompts * self.n) if total_prompts else None,
                                initial=len(self.loaded.records), unit="sample", desc="teacher", file=sys.stderr,
                                **bar_position("teacher", backpressure))  # backpressure: a trainer runs too
        except BaseException:
            self._close_opened()
            raise
        self.base_args = {k: v for k, v in oc.sampling.request_args().items() if k != "n"}
        self.extra_body = dict(oc.sampling.extra_body)

    def request_hash(self, prompt: dict) -> str:
        """The hash recorded with each answer to `prompt` (orchestrator/request_hash.py)."""
        oc = self.oc
        return request_hash(oc.rollout_model.model, prompt["messages"], prompt.get("tools"),
                            base_sampling(oc.sampling.request_args(), dict(oc.sampling.extra_body)))

    def _check_prompts(self, path: Path) -> int:
        """Recorded answers to a request that has changed since: an error, or (on_prompt_change =
        "rerequest") dropped from the answers in use so they are requested again. Returns how many."""
        if not self.loaded.records:
            return 0
        stale, unhashed = stale_keys(self.loaded.records, load_prompts(self.oc.source), self.request_hash)
        try:
            check_prompts(stale, unhashed, self.oc.on_prompt_change, path)
        except PromptChangedError as e:
            raise RolloutError(str(e)) from None
        if stale:
            mark_superseded(path, sorted((self.loaded.lines[k], self.loaded.records[k]) for k in stale))
        for k in stale:
            del self.loaded.records[k]
        return len(stale)

    def _close_opened(self) -> None:
        """After a failed __init__: closes what it had opened (no DONE; the client holds no connection yet)."""
        if self.bar is not None:
            self.bar.close()
        if self.metrics_f is not None:
            self.metrics_f.close()
        if self.recw is not None:
            self.recw._f.close()
        if self.pub is not None:
            self.pub.close(done=False)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

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
        gate, stop_event = self.gate, self.gate.stop_event
        slots = asyncio.Semaphore(self.oc.concurrency * 2)
        for prompt in self.prompts:
            if stop_event is not None and stop_event.is_set():
                gate.stop("stopped")
            if gate.stop_reason:
                break
            missing = await self._resume(prompt)
            if not missing:
                continue
            await self.bp.wait(len(missing), self.pub, lambda: self.in_flight_samples,
                               lambda: gate.stop_reason is not None or (stop_event is not None and stop_event.is_set()))
            await slots.acquire()
            if gate.stop_reason:
                slots.release()
                break
            self.in_flight_samples += len(missing)
            t = asyncio.get_running_loop().create_task(self.job(prompt, missing))
            self.tasks.add(t)
            t.add_done_callback(lambda t: self._job_done(t, slots))
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)  # errors: seen by _job_done
        if self.job_error is not None:
            e = self.job_error
            raise RolloutError(f"a teacher job failed ({type(e).__name__}: {e}); answers recorded so far are kept, "
                               "rerun the same command to resume") from e
        if gate.stop_reason is None:
            gate.stop("completed")

    async def _resume(self, prompt: dict) -> list[int]:
        """Publishes this prompt's samples recorded before a crash but never published; the indices never recorded."""
        pid = prompt["prompt_id"]
        self.seen_prompts.add(pid)
        missing, rebuild = [], []
        for i in range(self.n):
            rec = self.loaded.records.get((pid, i))
            if rec is None:
                missing.append(i)
            elif not self.pub.is_published(pid, i):
                rebuild.append((prompt, rec))
        if rebuild:
            await self.pub.publish(rebuild)
            self.rebuilt += len(rebuild)
        return missing

    async def job(self, prompt: dict, missing: list[int]) -> None:
        """The missing samples of one prompt."""
        try:
            await self._ask(prompt, list(missing))
        finally:
            self.in_flight_samples -= len(missing)

    async def _ask(self, prompt: dict, pending: list[int]) -> None:
        """One request for all of `pending` (one request each once a server ignored n); the indices a
        partial answer left unusable or missing are asked again, at most retry.max_attempts times."""
        bad_rounds = 0
        while pending and self.gate.stop_reason is None:
            if len(pending) > 1 and not self.n_honoured:
                await asyncio.gather(*(self._ask(prompt, [i]) for i in pending))
                return
            out = await self.request(prompt, pending)
            if out is None:
                return
            pending, unusable = out
            if unusable:
                bad_rounds += 1
                if bad_rounds >= self.oc.retry.max_attempts:
                    reason = Counter(unusable.values()).most_common(1)[0][0]
                    self._failed(prompt, pending, reason, f"the teacher's answer for these samples was unusable "
                                 f"({reason}) {bad_rounds} times", transient=True)
                    return

    async def request(self, prompt: dict, indices: list[int]) -> tuple[list[int], dict[int, str]] | None:
        """One logical request for `indices`: send, record the usable choices durably, publish.
        Returns the indices still missing and {index: reason} of the unusable ones; None if it failed."""
        resp = await self._send(prompt, indices)
        if resp is None:
            return None
        self.first_success = True
        self.requests_ok += 1
        ch = [c for c in resp.choices if c.index < len(indices)]
        bad = {indices[k]: r for k, r in resp.bad.items() if k < len(indices)}
        got = {c.index for c in ch}
        rest = [i for k, i in enumerate(indices) if k not in got]
        if len(rest) > len(bad):  # fewer choices than asked: the server does not honour n
            self.n_honoured = False
            self.n_ignored_responses += 1
            self.unusable["missing_choice"] += len(rest) - len(bad)
        self.unusable.update(bad.values())
        ct = resp.usage.get("completion_tokens", 0)
        self.completion_mean += (ct / max(1, len(ch)) - self.completion_mean) / self.requests_ok
        h = self.request_hash(prompt)
        records = [make_record(
            prompt_id=prompt["prompt_id"], sample_index=indices[c.index], messages=prompt["messages"],
            tools=prompt.get("tools"), response=c.message, finish_reason=c.finish_reason, model=resp.model,
            endpoint=resp.endpoint, sampling=resp.sent, usage=resp.usage, usage_shared_by=len(ch),
            t_start=resp.t_start, t_end=resp.t_end, reward=None, request_id=resp.request_id, request_hash=h) for c in ch]
        for r in records:
            try:
                r["reward"] = self.pub.score(prompt, r["response"])
            except Exception:  # noqa: BLE001 - reported by publish() as reward_error
                r["reward"] = None
        await self.recw.append(records)  # durable before anything is built from it
        self.recorded_this_run += len(records)
        self.tally.succeeded(len(records))
        await self.pub.publish([(prompt, r) for r in records])
        if self.bar is not None:
            self.bar.update(len(records))
        return rest, bad

    def _failed(self, prompt: dict, indices: list[int], reason: str, detail: str, transient: bool) -> None:
        """`indices` of `prompt` failed for good: rejected (not recorded: a rerun asks again) and counted;
        too many failures stop the run (orchestrator/failures.py)."""
        for i in indices:
            self.pub.reject(f"{prompt['prompt_id']}/{i}", reason, detail)
        why = self.tally.fail(reason, len(indices), detail, transient)
        if why is not None and self.fatal is None:
            self.fatal = RolloutError(why)
            self.gate.stop("error:too_many_failures")

    async def _send(self, prompt: dict, indices: list[int]) -> TeacherResponse | None:
        """The teacher's answer, or None: stopped, rejected (written to rejects), or fatal (the run stops)."""
        k = len(indices)
        args = dict(self.base_args)
        if self.oc.sampling.n is not None:
            args["n"] = k
        if "seed" in args and indices[0] > 0:
            args["seed"] = args["seed"] + indices[0]  # distinct samples when n is split over requests
        est_c = k * (self.oc.sampling.max_tokens or self.completion_mean)
        try:
            return await self.client.complete(
                prompt["messages"], prompt.get("tools"), args, self.extra_body, want=k,
                est_prompt=_estimate_prompt_tokens(prompt["messages"]), est_completion=est_c, gate=self.gate)
        except StopRequested:
            return None
        except TeacherError as e:
            non_retryable = isinstance(e, NonRetryableError)
            if non_retryable and (e.status in FATAL_STATUS or e.reason == "insufficient_quota"
                                  or not self.first_success):
                hint = v1_hint(self.oc.rollout_model.base_url) if e.status == 404 else ""
                self.fatal = RolloutError(f"teacher request failed and retrying cannot help: {e.detail}{hint}")
                self.gate.stop(f"error:{e.reason}")
                return None
            self._failed(prompt, indices, "request_rejected" if non_retryable else e.reason, e.detail,
                         transient=not non_retryable)
            return None

    def write_metrics(self, final: bool = False) -> dict:
        gate, pub, stats = self.gate, self.pub, self.client.stats
        elapsed = time.time() - self.t_begin
        d = {
            "time": time.time(), "elapsed_s": round(elapsed, 3),
            "stop_reason": gate.stop_reason if final else None,
            "requests": gate.requests, "requests_ok_this_run": self.requests_ok,
            "attempts_this_run": stats.attempts, "retries": dict(stats.retries),
            "retry_after_waits": stats.retry_after_waits,
            "recorded": len(self.loaded.records) + self.recorded_this_run, "recorded_this_run": self.recorded_this_run,
            "samples": pub.writer.published + pub.buffered, "samples_this_run": pub.samples,
            "rejections": dict(pub.rejections), "failed_pairs": dict(self.tally.by_reason),
            "unusable_choices": dict(self.unusable),
            "prompt_tokens": round(gate.prompt_tokens), "completion_tokens": round(gate.completion_tokens),
            "cost": round(gate.cost(), 6), "n_ignored_responses": self.n_ignored_responses,
            "reward_pass_rate": (pub.passed / pub.scored) if pub.scored else None,
            "samples_per_s": round(pub.samples / elapsed, 2) if elapsed > 0 else None,
            "backpressure_wait_s": round(self.bp.waited_s, 3), "in_flight_requests": gate.in_flight,
            **self.extra,
        }
        if final:
            d["final"] = True
        self.metrics_f.write(json.dumps(d) + "\n")
        self.metrics_f.flush()
        return d

    async def metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            self.write_metrics()

    async def close(self) -> dict:
        """Closes everything (shards get DONE unless the run failed or was interrupted); the final metrics line."""
        self.extra["rebuilt_from_recording"] = self.rebuilt
        self.extra["recorded_not_in_source"] = sum(1 for (p, _) in self.loaded.records if p not in self.seen_prompts) \
            if self.gate.stop_reason == "completed" else None
        await self.recw.aclose()
        await self.client.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.fatal is None and not self.failed and self.gate.stop_reason not in ("interrupted", "stopped"):
            why = self.tally.verdict()
            why_none = None if why else nothing_published(len(self.seen_prompts), self.pub.writer.published
                                                          + self.pub.buffered, self.pub.rejections,
                                                          self.pub.rlog.path, self.gate.stop_reason)
            if why or why_none:
                self.fatal = RolloutError(why or why_none)
                self.gate.stop_reason = "error:too_many_failures" if why else "error:no_samples"
        self.pub.close(done=self.fatal is None and not self.failed and self.gate.stop_reason != "interrupted")
        if self.bar is not None:
            close_bar(self.bar)
        self.extra.update(self.pub.pair_counts)
        summary = self.write_metrics(final=True)
        self.metrics_f.close()
        return summary


async def run_rollouts(cfg: RunConfig, run_dir: Path, reconstructor, *, progress: bool = True,
                       stop_event: asyncio.Event | None = None, backpressure: bool = True) -> dict:
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
        raise
    except BaseException:  # KeyboardInterrupt, cancellation: stop now
        ro.failed = True
        ro.gate.stop("interrupted")
        for t in ro.tasks:
            t.cancel()
        raise
    finally:
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


def format_summary(s: dict) -> str:
    rej = ", ".join(f"{k}={v}" for k, v in sorted(s["rejections"].items())) or "none"
    retries = ", ".join(f"{k}={v}" for k, v in sorted(s.get("retries", {}).items())) or "none"
    if s.get("unusable_choices"):
        rej += "; choices asked again: " + ", ".join(f"{k}={v}" for k, v in sorted(s["unusable_choices"].items()))
    pr = s.get("reward_pass_rate")
    return (f"orchestrator: stop={s['stop_reason']} requests={s['requests']} samples={s['samples']} "
            f"(+{s['samples_this_run']} this run) retries: {retries}; rejections: {rej}; "
            f"tokens prompt={s['prompt_tokens']} "
            f"completion={s['completion_tokens']} cost={s['cost']:.4f}"
            + (f" reward_pass_rate={pr:.2f}" if pr is not None else "")
            + (f"; pairs done={s['pairs_done']} (published {s['pairs_published']}, rejected {s['pairs_rejected']})"
               if "pairs_done" in s else "")
            + f" in {s['elapsed_s']:.1f}s")


def rollout(cfg: RunConfig, run_dir: Path, reconstructor, **kw) -> dict:
    """Synchronous wrapper around run_rollouts."""
    return asyncio.run(run_rollouts(cfg, Path(run_dir), reconstructor, **kw))
