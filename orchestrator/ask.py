"""The request/answer loop of a rollout: the missing samples of one prompt -> teacher -> recording -> publisher.

    asker = Asker(oc, transport, gate, pub, recw, tally, counters, hash_of, first_success, cache=None)
    await asker.job(prompt, missing_indices)

One chat request asks for all missing samples of a prompt (n = how many; one request each once a server
ignored n). Usable choices are recorded durably, then published; the slots a partial answer left
unusable or missing are asked again (at most retry.max_attempts rounds). A request that failed for good
rejects its pairs (not recorded: a rerun asks again); a 401/402/403/404, insufficient_quota, or any 4xx
before the first success stops the run (`asker.fatal`). With a request cache (orchestrator/cache.py) the
cached samples are recorded and published first and only the others are asked for; fresh answers are
written to the cache once recorded.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from orchestrator.endpoint_check import refusal_fix
from orchestrator.failures import RolloutError
from orchestrator.kinds.chat import ChatKind, ChatRequest, TeacherResponse, to_response
from orchestrator.recording import make_record
from orchestrator.transport import NonRetryableError, StopRequested, TeacherError

#: Non-retryable statuses that mean the whole run is misconfigured (key, permissions, model name).
#: 402: payment required (out of credit). A 429 with code "insufficient_quota" is fatal too (transport.py).
FATAL_STATUS = {401, 402, 403, 404}


class Asker:
    def __init__(self, oc, transport, gate, pub, recw, tally, counters, hash_of, first_success: bool, cache=None):
        self.oc, self.transport, self.gate, self.pub, self.recw = oc, transport, gate, pub, recw
        self.cache = cache  # orchestrator.cache.AnswerCache, or None
        self.tally, self.c, self.hash_of = tally, counters, hash_of
        self.kind = ChatKind()
        self.base_args = {k: v for k, v in oc.sampling.request_args().items() if k != "n"}
        self.extra_body = dict(oc.sampling.extra_body)
        # n_honoured: no server answered fewer choices than n. first_success: a request has succeeded
        # (in this run, or in the run the recording comes from) -- until then a 4xx stops the run.
        self.n_honoured, self.first_success = True, first_success
        self.in_flight_samples = 0  # samples asked for and not answered yet (backpressure counts them)
        self.fatal: RolloutError | None = None  # the error the run stops on
        self.fatal_from_tally: RolloutError | None = None  # the fatal, when too many failures stopped the run
        self.bar = None  # a tqdm bar advanced by each recorded answer

    async def job(self, prompt: dict, missing: list[int]) -> None:
        """The missing samples of one prompt."""
        try:
            pending = list(missing)
            if self.cache is not None:
                hits, pending = self.cache.lookup(prompt, self.hash_of(prompt), pending)
                if hits:
                    await self._commit(prompt, hits)
            await self._ask(prompt, pending)
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
                    self.failed(
                        prompt,
                        pending,
                        reason,
                        f"the teacher's answer for these samples was unusable ({reason}) {bad_rounds} times",
                        transient=True,
                    )
                    return

    async def request(self, prompt: dict, indices: list[int]) -> tuple[list[int], dict[int, str]] | None:
        """One logical request for `indices`: send, record the usable choices durably, publish.
        Returns the indices still missing and {index: reason} of the unusable ones; None if it failed."""
        resp = await self._send(prompt, indices)
        if resp is None:
            return None
        self.first_success = True
        ch = [c for c in resp.choices if c.index < len(indices)]
        bad = {indices[k]: r for k, r in resp.bad.items() if k < len(indices)}
        got = {c.index for c in ch}
        rest = [i for k, i in enumerate(indices) if k not in got]
        if len(rest) > len(bad):  # fewer choices than asked: the server does not honour n
            self.n_honoured = False
            self.c.n_ignored_responses += 1
            self.c.unusable["missing_choice"] += len(rest) - len(bad)
        self.c.unusable.update(bad.values())
        self.c.answered(resp.usage.get("completion_tokens", 0), len(ch))
        h = self.hash_of(prompt)
        records = [
            make_record(
                prompt_id=prompt["prompt_id"],
                sample_index=indices[c.index],
                messages=prompt["messages"],
                tools=prompt.get("tools"),
                response=c.message,
                finish_reason=c.finish_reason,
                model=resp.model,
                endpoint=resp.endpoint,
                sampling=resp.sent,
                usage=resp.usage,
                usage_shared_by=len(ch),
                t_start=resp.t_start,
                t_end=resp.t_end,
                reward=None,
                request_id=resp.request_id,
                request_hash=h,
                usage_estimated=resp.usage_estimated,
            )
            for c in ch
        ]
        await self._commit(prompt, records)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.store, records)
        return rest, bad

    async def _commit(self, prompt: dict, records: list[dict]) -> None:
        """Scores `records` (answers to `prompt`), appends them durably to the recording, then publishes them."""
        for r in records:
            try:
                r["reward"] = self.pub.score(prompt, r["response"])
            except Exception:  # noqa: BLE001 - reported by publish() as reward_error
                r["reward"] = None
        await self.recw.append(records)  # durable before anything is built from it
        self.c.recorded_this_run += len(records)
        self.tally.succeeded(len(records))
        await self.pub.publish([(prompt, r) for r in records])
        if self.bar is not None:
            self.bar.update(len(records))

    def failed(self, prompt: dict, indices: list[int], reason: str, detail: str, transient: bool) -> None:
        """`indices` of `prompt` failed for good: rejected (not recorded: a rerun asks again) and counted;
        too many failures stop the run (orchestrator/failures.py)."""
        for i in indices:
            self.pub.reject(f"{prompt['prompt_id']}/{i}", reason, detail)
        why = self.tally.fail(reason, len(indices), detail, transient)
        if why is not None and self.fatal is None:
            self.fatal = self.fatal_from_tally = RolloutError(why)  # its counts are redone at the end (close)
            self.gate.stop("error:too_many_failures")

    def chat_request(self, prompt: dict, indices: list[int]) -> ChatRequest:
        """The chat request for `indices` of `prompt` (n = how many; the seed offset by the first index)."""
        k = len(indices)
        args = dict(self.base_args)
        if self.oc.sampling.n is not None:
            args["n"] = k
        if "seed" in args and indices[0] > 0:
            args["seed"] = args["seed"] + indices[0]  # distinct samples when n is split over requests
        return ChatRequest(
            prompt["messages"],
            prompt.get("tools"),
            args,
            self.extra_body,
            want=k,
            est_completion=k * (self.oc.sampling.max_tokens or self.c.completion_mean),
        )

    async def _send(self, prompt: dict, indices: list[int]) -> TeacherResponse | None:
        """The teacher's answer, or None: stopped, rejected (written to rejects), or fatal (the run stops)."""
        req = self.chat_request(prompt, indices)
        try:
            return to_response(await self.transport.request(self.kind, req, gate=self.gate), req)
        except StopRequested:
            return None
        except TeacherError as e:
            non_retryable = isinstance(e, NonRetryableError)
            if non_retryable and (
                e.status in FATAL_STATUS or e.reason == "insufficient_quota" or not self.first_success
            ):
                fix = refusal_fix(402 if e.reason == "insufficient_quota" else e.status, self.oc.rollout_model)
                self.fatal = RolloutError(f"teacher request failed and retrying cannot help: {e.detail}{fix}")
                self.gate.stop(f"error:{e.reason}")
                return None
            self.failed(
                prompt,
                indices,
                "request_rejected" if non_retryable else e.reason,
                e.detail,
                transient=not non_retryable,
            )
            return None
