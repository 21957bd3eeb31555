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
import multiprocessing
import pickle
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import RunConfig, api_key
from orchestrator.client import (NonRetryableError, RetryPolicy, StopRequested, TeacherClient, TeacherError,
                                 TeacherResponse)
from orchestrator.contract import Rejection, ShardWriter, read_consumed
from orchestrator.prompts import count_prompts, load_prompts
from orchestrator.recording import RecordingWriter, load_recording, make_record
from orchestrator.rewards import load_reward_fn

RECORDING = "recording.jsonl"
SAMPLES = "samples"
REJECTS = "rejects.jsonl"
METRICS = "orchestrator_metrics.jsonl"

#: Non-retryable statuses that mean the whole run is misconfigured (key, permissions, model name).
FATAL_STATUS = {401, 403, 404}


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
# Publishing: reward filter -> reconstruction -> shards / rejects
# ---------------------------------------------------------------------------


_WORKER_RECON = None


def _init_worker(blob: bytes) -> None:
    global _WORKER_RECON
    cls, tokenizer, cfg, max_seq_len = pickle.loads(blob)
    _WORKER_RECON = cls(tokenizer, cfg, max_seq_len)


def _worker_build(convs: list[dict]):
    return build_batch(_WORKER_RECON, convs)


def build_batch(reconstructor, convs: list[dict]) -> list:
    """Reconstructor.build over several conversations (one tokenizer batch when build_many exists)."""
    many = getattr(reconstructor, "build_many", None)
    if many is not None:
        return many(convs)
    return [reconstructor.build(c["messages"], c["tools"], **{k: v for k, v in c.items()
                                                            if k not in ("messages", "tools")}) for c in convs]


def make_reconstruct_pool(reconstructor, workers: int) -> ProcessPoolExecutor | None:
    """Worker processes holding a copy of the reconstructor (spawned: safe beside threads)."""
    if workers <= 0:
        return None
    ctx = multiprocessing.get_context("spawn")
    # the worker builds its own Reconstructor(tokenizer, cfg, max_seq_len) (compiled templates don't pickle)
    blob = pickle.dumps((type(reconstructor), reconstructor.tokenizer, reconstructor.cfg,
                         reconstructor.max_seq_len))
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(blob,))


def sample_base(sample_id: str) -> str:
    """"<prompt_id>/<sample_index>" of a sample id (drops a "/turn<k>" suffix)."""
    return "/".join(sample_id.split("/")[:2])


class Publisher:
    def __init__(self, run_dir: Path, reconstructor, samples_per_shard: int, reward_fn, min_reward: float,
                 pool: ProcessPoolExecutor | None = None):
        self.pool = pool
        self.writer = ShardWriter(run_dir / SAMPLES, samples_per_shard)
        self.published_bases = {sample_base(i) for i in self.writer.existing_ids()}
        self.published_at_start = self.writer.published
        self.buffered = 0
        self.reconstructor = reconstructor
        self.reward_fn = reward_fn
        self.min_reward = min_reward
        self.rejects_path = run_dir / REJECTS
        self.seen_rejects = _read_rejects(self.rejects_path)
        self._rejects = open(self.rejects_path, "a", encoding="utf-8")
        self.rejections: Counter = Counter()
        self.samples = 0
        self.scored = 0
        self.passed = 0

    def is_published(self, prompt_id: str, index: int) -> bool:
        return f"{prompt_id}/{index}" in self.published_bases

    def score(self, prompt: dict, response: dict) -> float | None:
        if self.reward_fn is None:
            return None
        return float(self.reward_fn(prompt, response.get("content") or ""))

    def reject(self, item_id: str, reason: str, detail: str = "") -> None:
        self.rejections[reason] += 1
        if (item_id, reason) in self.seen_rejects:
            return
        self.seen_rejects.add((item_id, reason))
        self._rejects.write(Rejection(item_id, reason, detail).to_json() + "\n")
        self._rejects.flush()

    def _admit(self, prompt: dict | None, rec: dict) -> dict | None:
        """Reward filter for one recorded choice; the build arguments if it passes."""
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
        return dict(messages=list(rec["messages"]) + [rec["response"]], tools=rec.get("tools"), sample_id=sid,
                    prompt_id=rec["prompt_id"], sample_index=rec["sample_index"],
                    finish_reason=rec.get("finish_reason"), reward=reward, teacher_model=rec.get("model"),
                    meta=meta)

    async def publish(self, items: list[tuple[dict | None, dict]]) -> int:
        """Filter and reconstruct recorded choices (one batch); returns how many samples were added."""
        convs = [c for c in (self._admit(p, r) for p, r in items) if c is not None]
        if not convs:
            return 0
        try:
            if self.pool is not None:
                results = await asyncio.get_running_loop().run_in_executor(self.pool, _worker_build, convs)
            else:
                results = build_batch(self.reconstructor, convs)
        except Exception:  # noqa: BLE001 - find the conversation that broke the batch, keep the others
            results = [self._build_one(c) for c in convs]
        added = 0
        for conv, res in zip(convs, results):
            if isinstance(res, Exception):
                self.reject(conv["sample_id"], "reconstruction_error", f"{type(res).__name__}: {res}")
                continue
            samples, rejections = res
            for r in rejections:
                self.reject(r.item_id, r.reason, r.detail)
            for smp in samples:
                self.writer.add(smp)
                self.buffered += 1
                if self.buffered >= self.writer.samples_per_shard:
                    self.buffered = 0
            if samples:
                self.published_bases.add(conv["sample_id"])
            added += len(samples)
        self.samples += added
        return added

    def _build_one(self, conv: dict):
        try:
            return build_batch(self.reconstructor, [conv])[0]
        except Exception as e:  # noqa: BLE001 - reported as a rejection
            return e

    def flush(self) -> None:
        self.writer.flush()
        self.buffered = 0

    def close(self, done: bool) -> None:
        if done:
            self.writer.close()
        else:
            self.writer.flush()
        self.buffered = 0
        self._rejects.close()


def _read_rejects(path: Path) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    if not path.exists():
        return seen
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                d = json.loads(line)
                seen.add((d["item_id"], d["reason"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from a crash; the rejection is written again if it recurs
    return seen


# ---------------------------------------------------------------------------
# Backpressure
# ---------------------------------------------------------------------------


class Backpressure:
    """Hold requests while published + pending samples run more than max_ahead past CONSUMED."""

    def __init__(self, samples_dir: Path, max_ahead: int, enabled: bool, poll_s: float = 0.2):
        self.dir = samples_dir
        self.max_ahead = max_ahead
        self.enabled = enabled
        self.poll_s = poll_s
        self.waited_s = 0.0

    async def wait(self, k: int, pub: Publisher, in_flight_samples: int, stopped) -> None:
        if not self.enabled:
            return
        t0 = time.monotonic()
        warned = False
        while not stopped():
            consumed = read_consumed(self.dir)
            ahead = pub.writer.published + pub.buffered + in_flight_samples() + k - consumed
            if ahead <= self.max_ahead or (in_flight_samples() == 0 and pub.buffered == 0
                                           and pub.writer.published <= consumed):
                break
            if pub.buffered:
                pub.flush()  # never hold back samples the trainer could be taking
            if not warned and time.monotonic() - t0 > 30:
                warned = True
                print(f"orchestrator: waiting for the trainer (published {pub.writer.published}, consumed "
                      f"{consumed}, max_ahead {self.max_ahead})", file=sys.stderr)
            await asyncio.sleep(self.poll_s)
        self.waited_s += time.monotonic() - t0


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class _State:
    n_honoured: bool = True
    n_ignored_responses: int = 0
    in_flight_samples: int = 0
    requests_ok: int = 0
    completion_mean: float = 0.0
    fatal: BaseException | None = None
    bar: Any = None
    recorded_this_run: int = 0
    first_success: bool = False
    extra: dict = field(default_factory=dict)


def _estimate_prompt_tokens(messages: list[dict]) -> float:
    return len(json.dumps(messages, ensure_ascii=False)) / 4.0


async def run_rollouts(cfg: RunConfig, run_dir: Path, reconstructor, *, progress: bool = True,
                       stop_event: asyncio.Event | None = None, backpressure: bool = True) -> dict:
    """Prompts -> teacher -> recording -> reconstruction -> shards. Resumable; returns a summary dict.

    `backpressure=False` for a rollout-only run with no trainer reading the shards
    (otherwise it waits for CONSUMED after max_ahead samples). `stop_event` may be an
    asyncio.Event or a threading.Event (it is polled with is_set(), so another thread
    can set it): no new request is sent, those in flight finish, shards close with DONE.
    """
    oc = cfg.orchestrator
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_begin = time.time()
    reward_fn = load_reward_fn(oc.reward_fn) if oc.reward_fn else None
    prompts = load_prompts(oc.source)
    total_prompts = count_prompts(oc.source)
    n = oc.sampling.n or 1

    loaded = load_recording(run_dir / RECORDING)
    pool = make_reconstruct_pool(reconstructor, oc.reconstruct_workers)
    pub = Publisher(run_dir, reconstructor, oc.samples_per_shard, reward_fn, oc.min_reward, pool)
    gate = BudgetGate(oc.budget, round(loaded.requests), loaded.prompt_tokens, loaded.completion_tokens,
                      stop_event)
    bp = Backpressure(run_dir / SAMPLES, oc.max_ahead, backpressure)
    rm = oc.rollout_model
    client = TeacherClient(
        [rm.base_url, *rm.extra_base_urls], rm.model, api_key(cfg), headers=rm.headers, timeout=rm.timeout,
        concurrency=oc.concurrency,
        retry=RetryPolicy(oc.retry.max_attempts, oc.retry.initial_backoff, oc.retry.max_backoff),
        requests_per_minute=oc.requests_per_minute, tokens_per_minute=oc.tokens_per_minute)
    recw = RecordingWriter(run_dir / RECORDING)
    st = _State()
    st.extra["resumed_records"] = len(loaded.records)
    st.extra["torn_tail_bytes"] = len(loaded.torn_tail)
    metrics_f = open(run_dir / METRICS, "a", encoding="utf-8")
    if progress:
        from tqdm import tqdm

        st.bar = tqdm(total=(total_prompts * n) if total_prompts else None, initial=len(loaded.records),
                      unit="sample", desc="teacher", dynamic_ncols=True, file=sys.stderr)

    base_args = oc.sampling.request_args()
    base_args.pop("n", None)
    extra_body = dict(oc.sampling.extra_body)

    def snapshot(final: bool = False) -> dict:
        elapsed = time.time() - t_begin
        d = {
            "time": time.time(), "elapsed_s": round(elapsed, 3),
            "stop_reason": gate.stop_reason if final else None,
            "requests": gate.requests, "requests_ok_this_run": st.requests_ok,
            "attempts_this_run": client.stats.attempts, "retries": dict(client.stats.retries),
            "retry_after_waits": client.stats.retry_after_waits,
            "recorded": len(loaded.records) + st.recorded_this_run, "recorded_this_run": st.recorded_this_run,
            "samples": pub.writer.published + pub.buffered, "samples_this_run": pub.samples,
            "rejections": dict(pub.rejections),
            "prompt_tokens": round(gate.prompt_tokens), "completion_tokens": round(gate.completion_tokens),
            "cost": round(gate.cost(), 6), "n_ignored_responses": st.n_ignored_responses,
            "reward_pass_rate": (pub.passed / pub.scored) if pub.scored else None,
            "samples_per_s": round(pub.samples / elapsed, 2) if elapsed > 0 else None,
            "backpressure_wait_s": round(bp.waited_s, 3), "in_flight_requests": gate.in_flight,
            **st.extra,
        }
        if final:
            d["final"] = True
        return d

    def write_metrics(final: bool = False) -> dict:
        d = snapshot(final)
        metrics_f.write(json.dumps(d) + "\n")
        metrics_f.flush()
        return d

    async def metrics_loop() -> None:
        while True:
            await asyncio.sleep(5.0)
            write_metrics()

    async def request(prompt: dict, indices: list[int]) -> int:
        """One logical request for `indices`; records and publishes what comes back. Returns choices used."""
        k = len(indices)
        args = dict(base_args)
        if oc.sampling.n is not None:
            args["n"] = k
        if "seed" in args and indices[0] > 0:
            args["seed"] = args["seed"] + indices[0]  # distinct samples when n is split over requests
        est_c = k * (oc.sampling.max_tokens or st.completion_mean)
        try:
            resp: TeacherResponse = await client.complete(
                prompt["messages"], prompt.get("tools"), args, extra_body, want=k,
                est_prompt=_estimate_prompt_tokens(prompt["messages"]), est_completion=est_c, gate=gate)
        except StopRequested:
            return 0
        except NonRetryableError as e:
            if e.status in FATAL_STATUS or not st.first_success:
                st.fatal = RolloutError(f"teacher request failed and retrying cannot help: {e.detail}")
                gate.stop(f"error:{e.reason}")
            else:
                for i in indices:
                    pub.reject(f"{prompt['prompt_id']}/{i}", "request_rejected", e.detail)
            return 0
        except TeacherError as e:
            for i in indices:
                pub.reject(f"{prompt['prompt_id']}/{i}", e.reason, e.detail)
            return 0
        st.first_success = True
        st.requests_ok += 1
        ch = resp.choices[:k]
        if len(ch) < k:
            st.n_honoured = False
            st.n_ignored_responses += 1
        ct = resp.usage.get("completion_tokens", 0)
        st.completion_mean += (ct / max(1, len(ch)) - st.completion_mean) / st.requests_ok
        records = []
        for i, c in zip(indices, ch):
            records.append(make_record(
                prompt_id=prompt["prompt_id"], sample_index=i, messages=prompt["messages"],
                tools=prompt.get("tools"), response=c.message, finish_reason=c.finish_reason, model=resp.model,
                endpoint=resp.endpoint, sampling=resp.sent, usage=resp.usage, usage_shared_by=len(ch),
                t_start=resp.t_start, t_end=resp.t_end, reward=None, request_id=resp.request_id))
        for r in records:
            try:
                r["reward"] = pub.score(prompt, r["response"])
            except Exception:  # noqa: BLE001 - reported by publish() as reward_error
                r["reward"] = None
        await recw.append(records)  # durable before anything is built from it
        st.recorded_this_run += len(records)
        await pub.publish([(prompt, r) for r in records])
        if st.bar is not None:
            st.bar.update(len(records))
        return len(ch)

    async def job(prompt: dict, missing: list[int]) -> None:
        pending = list(missing)
        try:
            while pending and gate.stop_reason is None:
                if len(pending) > 1 and not st.n_honoured:
                    await asyncio.gather(*(request(prompt, [i]) for i in pending))
                    return
                got = await request(prompt, pending)
                if got == 0:
                    return
                pending = pending[got:]
        finally:
            st.in_flight_samples -= len(missing)

    metrics_task = asyncio.get_running_loop().create_task(metrics_loop())
    tasks: set[asyncio.Task] = set()
    slots = asyncio.Semaphore(oc.concurrency * 2)
    seen_prompts: set[str] = set()
    rebuilt = 0
    try:
        for prompt in prompts:
            if gate.stop_event is not None and gate.stop_event.is_set():
                gate.stop("stopped")
            if gate.stop_reason:
                break
            pid = prompt["prompt_id"]
            seen_prompts.add(pid)
            missing, rebuild = [], []
            for i in range(n):
                rec = loaded.records.get((pid, i))
                if rec is None:
                    missing.append(i)
                elif not pub.is_published(pid, i):
                    rebuild.append((prompt, rec))  # recorded before a crash, never published
            if rebuild:
                await pub.publish(rebuild)
                rebuilt += len(rebuild)
            if not missing:
                continue
            await bp.wait(len(missing), pub, lambda: st.in_flight_samples,
                          lambda: gate.stop_reason is not None or (stop_event is not None and stop_event.is_set()))
            await slots.acquire()
            if gate.stop_reason:
                slots.release()
                break
            st.in_flight_samples += len(missing)
            t = asyncio.get_running_loop().create_task(job(prompt, missing))
            tasks.add(t)
            t.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
        if tasks:
            await asyncio.gather(*tasks)
        if gate.stop_reason is None:
            gate.stop("completed")
    except BaseException:
        gate.stop("interrupted")
        for t in tasks:
            t.cancel()
        raise
    finally:
        metrics_task.cancel()
        st.extra["rebuilt_from_recording"] = rebuilt
        st.extra["recorded_not_in_source"] = sum(1 for (p, _) in loaded.records if p not in seen_prompts) \
            if gate.stop_reason == "completed" else None
        await recw.aclose()
        await client.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        ok = st.fatal is None and gate.stop_reason != "interrupted"
        pub.close(done=ok)
        if st.bar is not None:
            st.bar.close()
        summary = write_metrics(final=True)
        metrics_f.close()
    print(format_summary(summary), file=sys.stderr)
    if st.fatal is not None:
        raise st.fatal
    return summary


def format_summary(s: dict) -> str:
    rej = ", ".join(f"{k}={v}" for k, v in sorted(s["rejections"].items())) or "none"
    pr = s.get("reward_pass_rate")
    return (f"orchestrator: stop={s['stop_reason']} requests={s['requests']} samples={s['samples']} "
            f"(+{s['samples_this_run']} this run) rejections: {rej}; tokens prompt={s['prompt_tokens']} "
            f"completion={s['completion_tokens']} cost={s['cost']:.4f}"
            + (f" reward_pass_rate={pr:.2f}" if pr is not None else "")
            + f" in {s['elapsed_s']:.1f}s")


def rollout(cfg: RunConfig, run_dir: Path, reconstructor, **kw) -> dict:
    """Synchronous wrapper around run_rollouts."""
    return asyncio.run(run_rollouts(cfg, Path(run_dir), reconstructor, **kw))
