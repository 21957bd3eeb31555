"""Rollout through a Batch API (`[orchestrator.batch] enabled = true`): the teacher's answers at batch prices.

    batch_rollout(cfg, run_dir, reconstructor)   (sync; what `distill rollout` / `distill run` call)

Every (prompt, sample) pair the recording lacks becomes one line of a batch input file, the body
exactly what an online request for that one sample sends (kinds/chat.py request_body). A round:
write the input file -> files.create(purpose="batch") -> batches.create -> poll (backoff, progress
bar) until completed / failed / expired / cancelled -> download the output and error files ->
record every answer durably in recording.jsonl (the same records as online answers, plus
`batch_id` and `custom_id`) -> publish. Pairs left without an answer are counted by reason and
resubmitted in a new round (`resubmit_missing`, at most `max_submissions` batches per pair), or
rejected; the journal (batch_store.py) makes every step resumable after kill -9: a rerun continues
the open round (polling, downloading, recording) and never creates a second batch for its pairs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

from openai import AsyncOpenAI

from distill.core.config import RunConfig, api_key
from orchestrator.ask import Asker
from orchestrator.batch_api import BatchAPI
from orchestrator.batch_store import BatchState, Round, Spend, batch_prices, fit_budget, input_line, read_results
from orchestrator.cache import open_cache
from orchestrator.endpoint_check import EndpointCheckError, check_endpoints
from orchestrator.failures import RolloutError
from orchestrator.kinds.chat import ChatKind, estimate_prompt_tokens, request_body
from orchestrator.prompts import load_prompts
from orchestrator.recording import RecordingWriter, make_record
from orchestrator.resume import load_resume, prompt_hasher, split_prompt
from orchestrator.rewards import load_reward_fn
from orchestrator.rollout_metrics import MetricsFile, RunCounters
from orchestrator.sink import Publisher, format_notes
from orchestrator.transport import ResponseError

RECORDING = "recording.jsonl"
METRICS = "orchestrator_metrics.jsonl"
BATCH_DIR = "batch"


class BatchRollout:
    """One batch_rollout call: its parts (state journal, recording, publisher, budget) and its steps."""

    def __init__(self, cfg: RunConfig, run_dir: Path, reconstructor, progress: bool, stop_event):
        self.oc = oc = cfg.orchestrator
        self.bc, self.run_dir, self.progress, self.stop_event = oc.batch, run_dir, progress, stop_event
        if oc.local_teacher.enabled or oc.source.type == "replay":
            key = "local_teacher.enabled" if oc.local_teacher.enabled else "source.type"
            raise RolloutError(
                f"orchestrator.batch.enabled = true does not go with orchestrator.{key} (a Batch API needs a "
                "hosted teacher and prompts). Fix: set orchestrator.batch.enabled = false, or use a prompt "
                "source and a hosted rollout_model"
            )
        reward_fn = load_reward_fn(oc.reward_fn) if oc.reward_fn else None  # the online filter, as online
        self.prompts = {p["prompt_id"]: p for p in load_prompts(oc.source)}
        self.n = oc.sampling.n or 1
        self.resume = load_resume(run_dir / RECORDING, oc)
        key = api_key(cfg)
        self.cache = open_cache(oc)  # orchestrator.cache_dir: answers shared with other runs, online or batch
        covered = self.cache is not None and self.cache.covers(
            self.prompts.values(), self.n, self.resume.loaded.records, self.resume.stale, prompt_hasher(oc)
        )
        if not self.resume.nothing_to_ask and not covered:
            try:  # reachable, key accepted (GET /models; free): before anything is uploaded
                check_endpoints(oc.rollout_model, key)
            except EndpointCheckError as e:
                raise RolloutError(str(e)) from None
        rm = oc.rollout_model
        self.client = AsyncOpenAI(
            base_url=rm.base_url, api_key=key, default_headers=rm.headers or None, timeout=rm.timeout, max_retries=0
        )
        # only its chat_request is used: the online path's request for one sample (n, seed offset, extra_body)
        self.asker = Asker(oc, None, None, None, None, None, RunCounters(), None, True)
        self.hash_of = prompt_hasher(oc)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.resume.drop_stale(run_dir / RECORDING)
        self.recorded: set[tuple[str, int]] = set(self.resume.loaded.records)
        self.state = BatchState.load(run_dir / BATCH_DIR)
        self.api = BatchAPI(self.client, self.state, oc, run_dir / BATCH_DIR)
        self.prices = batch_prices(oc)
        self.spend = Spend.of(self.resume.loaded.records.values(), oc.budget, self.prices)
        self.pub = Publisher(run_dir, reconstructor, oc.samples_per_shard, reward_fn, oc.min_reward)
        self.recw = RecordingWriter(run_dir / RECORDING)
        self.failed: dict[tuple[str, int], tuple[str, str, bool]] = {}  # pair -> (reason, detail, resubmit?)
        self.attempts: Counter = Counter()  # batches each pair was in, this run
        self.errors: Counter = Counter()  # per-line errors and unusable answers, by reason, this run
        self.batch_ids: list[str] = []
        self.stop_reason: str | None = None
        self.recorded_now = self.rebuilt = self.cached = 0
        self.t0 = time.time()

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._rebuild()
        if self.cache is not None:
            await self._from_cache()
        rd = self.state.open_round()
        if rd is not None:
            rd = await self._still_wanted(rd)
        if rd is not None:
            print(
                f"orchestrator: resuming batch round {rd.round} ({rd.batch_id or 'not created yet'})", file=sys.stderr
            )
        while self.stop_reason is None:
            rd = rd or self._plan_round()
            if rd is None:
                break
            await self._do_round(rd)
            rd = None
        self.stop_reason = self.stop_reason or "completed"

    async def _still_wanted(self, rd: Round) -> Round | None:
        """The open round, or None when it was never created and some of its pairs have been recorded since
        (an online run, the request cache): then it is journaled abandoned and a new round asks for the rest,
        so no recorded pair is paid for again."""
        if rd.batch_id is None and rd.create_started is not None:
            await self.api.adopt(rd)  # batches.create may have made it before a crash: then it is collected
        done = [p for p in rd.pairs if p in self.recorded]
        if rd.batch_id is not None or not done:
            return rd
        self.state.append({"event": "abandoned", "round": rd.round, "recorded": [list(p) for p in done]})
        print(
            f"orchestrator: batch round {rd.round} was never created and {len(done)} of its {len(rd.pairs)} pairs "
            "have been recorded since: a new round asks for the rest",
            file=sys.stderr,
        )
        return None

    async def _rebuild(self) -> None:
        """Publishes the recorded answers a previous run did not publish."""
        recs = self.resume.loaded.records
        for prompt in self.prompts.values():
            _, rebuild = split_prompt(prompt, self.n, recs, self.pub.is_published)
            if rebuild:
                await self.pub.publish(rebuild)
                self.rebuilt += len(rebuild)

    async def _from_cache(self) -> None:
        """Records and publishes the missing pairs the request cache holds (orchestrator/cache.py): not sent."""
        for prompt in self.prompts.values():
            missing = [i for i in range(self.n) if (prompt["prompt_id"], i) not in self.recorded]
            hits, _ = self.cache.lookup(prompt, self.hash_of(prompt), missing) if missing else ([], [])
            if hits:
                await self._commit(hits)
                self.cached += len(hits)

    async def _commit(self, records: list[dict]) -> None:
        """Appends `records` durably to the recording, then publishes them."""
        for k in range(0, len(records), 256):
            chunk = records[k : k + 256]
            for r in chunk:
                if r.get("reward") is None:
                    try:
                        r["reward"] = self.pub.score(self.prompts[r["prompt_id"]], r["response"])
                    except Exception:  # noqa: BLE001 - reported by publish() as reward_error
                        r["reward"] = None
            await self.recw.append(chunk)  # durable before anything is built from it
            self.recorded.update((r["prompt_id"], r["sample_index"]) for r in chunk)
            await self.pub.publish([(self.prompts[r["prompt_id"]], r) for r in chunk])

    def _stopped(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def _eligible(self, pair: tuple[str, int]) -> bool:
        if pair in self.recorded:
            return False
        why = self.failed.get(pair)
        return why is None or (why[2] and self.bc.resubmit_missing and self.attempts[pair] < self.bc.max_submissions)

    def _plan_round(self) -> Round | None:
        """The next round: the pairs still to ask (as many as one batch and the budget allow); None: done."""
        if self._stopped():
            self.stop_reason = "stopped"
            return None
        todo = [(pid, i) for pid in self.prompts for i in range(self.n) if self._eligible((pid, i))]
        todo = todo[: self.bc.max_requests_per_batch]
        if not todo:
            return None
        reqs = [self.asker.chat_request(self.prompts[pid], [i]) for pid, i in todo]
        est_c = self.oc.sampling.max_tokens or self.spend.completion_mean()
        k, over = fit_budget(
            self.oc.budget, self.prices, self.spend, [(estimate_prompt_tokens(r.messages), est_c) for r in reqs]
        )
        if over and k == 0:
            self.stop_reason = over
            return None
        model, url = self.oc.rollout_model.model, self.bc.endpoint
        lines = [input_line(pid, i, url, request_body(model, r)) for (pid, i), r in zip(todo[:k], reqs)]
        return self.state.new_round(todo[:k], lines)

    async def _do_round(self, rd: Round) -> None:
        self.attempts.update(rd.pairs)
        self.spend.requests += sum(p not in self.recorded for p in rd.pairs)  # lines sent (or being sent)
        if rd.input_file_id is None:
            await self.api.upload(rd)
        if rd.batch_id is None:
            await self.api.create(rd)
        self.batch_ids.append(rd.batch_id)
        if rd.end is None and not await self.api.poll(rd, self.progress, self._stopped):
            self.stop_reason = "stopped"
            return  # stopped while the batch runs: a rerun goes on polling it
        if not rd.downloaded:
            await self.api.download(rd)
        await self._record(rd)
        if rd.end["status"] == "failed":
            raise RolloutError(failed_message(rd, self.run_dir / BATCH_DIR))

    # -- record --------------------------------------------------------------------------------

    async def _record(self, rd: Round) -> None:
        """Every answer of the round's files into the recording (those not already there), then published;
        the pairs left without one, by reason."""
        d = self.run_dir / BATCH_DIR
        results = read_results(d / f"round-{rd.round}.output.jsonl") + read_results(
            d / f"round-{rd.round}.errors.jsonl"
        )
        pairs, seen, records, errors = set(rd.pairs), set(), [], Counter()
        status = rd.end["status"]
        again = status != "cancelled"  # someone cancelled the batch: its pairs are not resubmitted by this run
        for lr in results:
            if lr.pair not in pairs or lr.pair in seen:
                errors["unknown_or_repeated_custom_id"] += 1
                continue
            seen.add(lr.pair)
            if lr.pair in self.recorded:
                continue  # recorded before a crash
            if lr.pair[0] not in self.prompts:  # the prompt source changed since the batch was submitted
                errors["prompt_not_in_source"] += 1
                continue
            if lr.body is None:
                self._fail(lr.pair, lr.reason, lr.detail, lr.retryable and again, errors)
                continue
            try:
                records.append(self._make_record(rd, lr))
            except ResponseError as e:
                self._fail(lr.pair, e.reason, e.detail, again, errors)
        for pair in sorted(pairs - seen - self.recorded):
            self._fail(pair, f"batch_{status}" if status != "completed" else "missing_from_output", "", again, errors)
        await self._commit(records)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.store, records)
        self.recorded_now += len(records)
        self.errors.update(errors)
        self.state.append({"event": "recorded", "round": rd.round, "recorded": len(records), "errors": dict(errors)})
        if errors:
            shown = ", ".join(f"{k}={v}" for k, v in errors.most_common())
            print(f"orchestrator: batch {rd.batch_id} ({status}): pairs without an answer: {shown}", file=sys.stderr)

    def _fail(self, pair, reason: str, detail: str, retryable: bool, errors: Counter) -> None:
        errors[reason] += 1
        self.failed[pair] = (reason, detail, retryable)

    def _make_record(self, rd: Round, lr) -> dict:
        prompt = self.prompts[lr.pair[0]]
        req = self.asker.chat_request(prompt, [lr.pair[1]])
        a = ChatKind().parse(json.dumps(lr.body).encode(), req)  # ResponseError: unusable; usage as online
        choices, usage, model, rid = a.choices, a.usage, a.model, a.response_id
        sent = dict(req.args, extra_body=req.extra_body) if req.extra_body else dict(req.args)
        end = rd.end
        r = make_record(
            prompt_id=prompt["prompt_id"],
            sample_index=lr.pair[1],
            messages=prompt["messages"],
            tools=prompt.get("tools"),
            response=choices[0].message,
            finish_reason=choices[0].finish_reason,
            model=model,
            endpoint=self.oc.rollout_model.base_url,
            sampling=sent,
            usage=usage,
            usage_shared_by=1,
            t_start=float(end.get("created_at") or 0),
            t_end=float(end.get("ended_at") or 0),
            reward=None,
            request_id=lr.request_id or rid,
            request_hash=self.hash_of(prompt),
            usage_estimated=a.usage_estimated,
        )
        r["batch_id"], r["custom_id"] = rd.batch_id, f"{lr.pair[0]}#{lr.pair[1]}"
        self.spend.add(r, self.oc.budget, self.prices)
        return r

    # -- the end -------------------------------------------------------------------------------

    async def close(self, ok: bool) -> dict:
        left = Counter()
        if ok and self.stop_reason == "completed":
            for pair, (reason, detail, _) in sorted(self.failed.items()):
                if pair not in self.recorded:
                    left[reason] += 1
                    self.pub.reject(f"{pair[0]}/{pair[1]}", reason, detail)
        await self.recw.aclose()
        await self.client.close()
        decided = self.recorded_now + sum(left.values())
        too_many = decided and sum(left.values()) / decided > self.oc.max_failed_fraction
        # DONE as online: completed, a budget reached, or stopped (a batch still running is picked up by a rerun)
        self.pub.close(done=ok and not too_many)
        s = self._summary(left)
        MetricsFile(self.run_dir / METRICS).write(s)
        print(format_batch_summary(s), file=sys.stderr)
        if ok and too_many:
            raise RolloutError(
                f"{sum(left.values())} of {decided} pairs got no answer from the batch(es) ("
                + ", ".join(f"{k}={v}" for k, v in left.most_common())
                + f"), more than orchestrator.max_failed_fraction = {self.oc.max_failed_fraction}; they are "
                f"listed in {self.run_dir / 'rejects.jsonl'}; rerun the same command to ask for them again"
            )
        return s

    def _summary(self, left: Counter) -> dict:
        sp = self.spend
        return {
            "time": time.time(),
            "final": True,
            "mode": "batch",
            "stop_reason": self.stop_reason,
            "batch_ids": self.batch_ids,
            "requests": round(sp.requests),
            "recorded_this_run": self.recorded_now,
            "rebuilt_from_recording": self.rebuilt,
            "from_cache": self.cached,
            "samples": self.pub.writer.published + self.pub.buffered,
            "samples_this_run": self.pub.samples,
            "line_errors": dict(self.errors),
            "left_unanswered": dict(left),
            "rejections": dict(self.pub.rejections),
            "reconstruction_notes": self.pub.notes(),
            "prompt_tokens": round(sp.prompt_tokens),
            "completion_tokens": round(sp.completion_tokens),
            "cost": round(sp.cost, 6),
            "failed_pairs": dict(left),
            "samples_per_s": round(self.pub.samples / max(1e-9, time.time() - self.t0), 3),
            "elapsed_s": round(time.time() - self.t0, 3),
        }


def format_batch_summary(s: dict) -> str:
    errs = ", ".join(f"{k}={v}" for k, v in sorted(s["line_errors"].items())) or "none"
    left = ", ".join(f"{k}={v}" for k, v in sorted(s["left_unanswered"].items())) or "none"
    return (
        f"orchestrator (batch): stop={s['stop_reason']} batches={len(s['batch_ids'])} requests={s['requests']} "
        f"samples={s['samples']} (+{s['samples_this_run']} this run); line errors: {errs}; left: {left}; "
        f"tokens prompt={s['prompt_tokens']} completion={s['completion_tokens']} cost={s['cost']:.4f}"
        + format_notes(s.get("reconstruction_notes") or {})
        + f" in {s['elapsed_s']:.1f}s"
    )


def failed_message(rd: Round, batch_dir: Path) -> str:
    errs = rd.end.get("errors") or []
    by_code = Counter(e.get("code") or "error" for e in errs)
    shown = "; ".join(f"line {e.get('line')}: {e.get('message')}" for e in errs[:5])
    return (
        f"batch {rd.batch_id} failed validation ({', '.join(f'{k}={v}' for k, v in by_code.most_common()) or 'no reason given'})"
        f"{': ' + shown if shown else ''}. Its input file is {batch_dir / rd.input}; nothing in it was paid for. "
        "Fix the request (model, sampling, prompts) and rerun: a new batch is submitted"
    )


def check_no_open_batch(run_dir: Path) -> None:
    """An online rollout of a run directory whose batch is still open would ask (and pay) again for the pairs
    that batch will answer: a RolloutError saying how to collect it instead."""
    rd = BatchState.load(Path(run_dir) / BATCH_DIR, create=False).open_round()
    if rd is not None and (rd.upload_started is not None or rd.input_file_id is not None):
        raise RolloutError(
            f"{run_dir} has an unfinished Batch API round ({rd.batch_id or 'being created'}, {len(rd.pairs)} "
            "requests) and orchestrator.batch.enabled is false: an online run would pay for those answers again. "
            "Fix: rerun with orchestrator.batch.enabled = true (distill rollout --batch) to collect it, or delete "
            f"{Path(run_dir) / BATCH_DIR / 'state.jsonl'} to give it up"
        )


def batch_rollout(cfg: RunConfig, run_dir: Path, reconstructor, *, progress: bool = True, stop_event=None, **_) -> dict:
    """Prompts -> Batch API -> recording -> reconstruction -> shards. Resumable; returns the summary dict."""

    async def go() -> dict:
        br = BatchRollout(cfg, Path(run_dir), reconstructor, progress, stop_event)
        try:
            await br.run()
        except BaseException:
            await br.close(ok=False)
            raise
        return await br.close(ok=True)

    return asyncio.run(go())
