"""The Batch API calls of one round, each journaled (batch_store.py) so that a crash anywhere resumes:

    api = BatchAPI(client, state, oc, run_dir / "batch")
    await api.upload(rd)        files.create(purpose="batch")        at most one file per round
    await api.create(rd)        batches.create                        at most one batch per round
    await api.poll(rd, ...)     batches.retrieve with backoff, a progress bar; journals "ended"
    await api.download(rd)      files.content of the output and error files, saved atomically

Exactly once: "uploading"/"creating" are journaled before the call and its id right after it. When a
run finds one without the other (it was killed inside the call, or the call failed with a connection
error or a 5xx after the server may have acted), it looks before calling again: the file by its upload
name (unique to the run directory and round: `distill-<token>-round-<r>.jsonl`, same size) in
files.list(purpose="batch"), the batch by its input file id in batches.list (newest first, back to an
hour before the first attempt). Found, it is adopted; only when none exists is the call made again.
The SDK's own retries are off for these two calls (a retried POST could make a second batch).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import openai

from distill.core.redact import mask_known, mask_known_bytes
from orchestrator.batch_store import TERMINAL, BatchState, Round, write_atomic
from orchestrator.failures import RolloutError

#: errors of a files/batches call after which it is tried again (after looking for what it made)
TRANSIENT = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)


class BatchAPI:
    def __init__(self, client, state: BatchState, oc, batch_dir: Path):
        self.client, self.state, self.retry, self.bc, self.dir = client, state, oc.retry, oc.batch, batch_dir

    async def upload(self, rd: Round) -> None:
        data = (self.dir / rd.input).read_bytes()
        for attempt in range(self.retry.max_attempts):
            if rd.upload_started is not None:  # a call may have reached the server before a crash / an error
                found, fid = await self._lookup(
                    attempt, self._find_file(rd, len(data)), 'files.list(purpose="batch")', "the input file", rd
                )
                if not found:
                    continue
                if fid is not None:
                    self.state.append({"event": "uploaded", "round": rd.round, "input_file_id": fid})
                    return
            else:
                self.state.append({"event": "uploading", "round": rd.round, "t": time.time()})
            try:
                f = await self.client.files.create(file=(rd.filename, data, "application/jsonl"), purpose="batch")
            except TRANSIENT as e:
                await self._backoff(attempt, f"uploading {rd.input}", e)
                continue
            except openai.APIStatusError as e:
                raise RolloutError(
                    f"uploading the batch input file {self.dir / rd.input} failed: {api_error(e)}"
                ) from None
            self.state.append({"event": "uploaded", "round": rd.round, "input_file_id": f.id})
            return
        raise RolloutError(
            f"uploading {self.dir / rd.input} failed {self.retry.max_attempts} times; rerun to try again"
        )

    async def create(self, rd: Round) -> None:
        for attempt in range(self.retry.max_attempts):
            if rd.create_started is not None:  # a crash or error inside batches.create: did it make one?
                adopted = await self._adopt_once(attempt, rd)
                if adopted is None:
                    continue
                if adopted:
                    return
            t = time.time()
            self.state.append({"event": "creating", "round": rd.round, "input_file_id": rd.input_file_id, "t": t})
            try:
                b = await self.client.batches.create(
                    input_file_id=rd.input_file_id,
                    endpoint=self.bc.endpoint,
                    completion_window=self.bc.completion_window,
                    metadata={"distill_run": self.state.token, "distill_round": str(rd.round)},
                )
            except TRANSIENT as e:
                await self._backoff(attempt, "creating the batch", e)
                continue
            except openai.APIStatusError as e:
                raise RolloutError(f"creating the batch of {self.dir / rd.input} failed: {api_error(e)}") from None
            self.state.append({"event": "created", "round": rd.round, "batch_id": b.id})
            print(f"orchestrator: batch {b.id} created ({len(rd.pairs)} requests)", file=sys.stderr)
            return
        raise RolloutError(f"creating the batch of {self.dir / rd.input} failed {self.retry.max_attempts} times; rerun")

    async def adopt(self, rd: Round) -> None:
        """For a round whose batches.create may have run (a crash or error inside it): journals the batch it
        made, if any (with backoff on transient errors, as the calls)."""
        for attempt in range(self.retry.max_attempts):
            if await self._adopt_once(attempt, rd) is not None:
                return
        raise RolloutError(f"listing the batches failed {self.retry.max_attempts} times; rerun to try again")

    async def _adopt_once(self, attempt: int, rd: Round) -> bool | None:
        """One look for the batch that an interrupted batches.create of `rd` made: True when found (then
        journaled as created), False when there is none, None after a transient error (backed off)."""
        found, bid = await self._lookup(attempt, self._find_batch(rd), "batches.list", "the batch", rd)
        if not found:
            return None
        if bid is not None:
            self.state.append({"event": "created", "round": rd.round, "batch_id": bid})
        return bid is not None

    async def _lookup(self, attempt: int, find, call: str, thing: str, rd: Round) -> tuple[bool, str | None]:
        """Awaits `find` (a files.list / batches.list lookup) with the calls' error handling: (True, its id
        or None) when the listing answered; (False, None) after a transient error, backed off (try again);
        a refusal is a RolloutError (the provider cannot tell whether a half-made call went through)."""
        listing = "the batch files (files.list)" if call.startswith("files") else "the batches (batches.list)"
        try:
            return True, await find
        except TRANSIENT as e:
            await self._backoff(attempt, f"listing {listing}", e)
            return False, None
        except openai.APIStatusError as e:
            raise RolloutError(lookup_refused(call, thing, rd, e)) from None

    async def _find_file(self, rd: Round, size: int) -> str | None:
        """The id of the batch file uploaded under this round's name (unique to the run and round), if any."""
        async for f in self.client.files.list(purpose="batch", order="desc"):
            if f.filename == rd.filename and f.bytes == size:
                return f.id
            if f.created_at < (rd.upload_started or 0) - 3600:  # older than our first attempt: not ours
                break
        return None

    async def _find_batch(self, rd: Round) -> str | None:
        """The id of a batch made from this round's input file (listed newest first), if any."""
        async for b in self.client.batches.list(limit=100):
            if b.input_file_id == rd.input_file_id:
                return b.id
            if b.created_at < (rd.create_started or 0) - 3600:  # older than our first attempt: not ours
                break
        return None

    async def _backoff(self, attempt: int, what: str, e: Exception) -> None:
        print(f"orchestrator: {what}: {api_error(e)}; trying again", file=sys.stderr)
        await asyncio.sleep(min(self.retry.max_backoff, self.retry.initial_backoff * 2**attempt))

    async def poll(self, rd: Round, progress: bool, stopped) -> bool:
        """Polls the batch until it ends (journals "ended"; True) or `stopped()` (False)."""
        wait, errors, bar = self.bc.poll_interval, 0, _bar(len(rd.pairs), rd, progress)
        try:
            while not stopped():
                try:
                    b = await self.client.batches.retrieve(rd.batch_id)
                    errors = 0
                except (*TRANSIENT, openai.APIStatusError) as e:
                    errors += 1
                    if errors >= self.retry.max_attempts:
                        raise RolloutError(
                            f"polling batch {rd.batch_id} failed {errors} times ({api_error(e)}); it is recorded in "
                            f"{self.dir / 'state.jsonl'}: rerun the same command to go on polling it"
                        ) from None
                    b = None
                if b is not None:
                    if bar is not None and b.request_counts is not None:
                        bar.set_postfix_str(b.status)
                        bar.update(b.request_counts.completed + b.request_counts.failed - bar.n)
                    if b.status in TERMINAL:
                        self.state.append(ended_line(rd, b))
                        return True
                await asyncio.sleep(wait)
                wait = min(self.bc.max_poll_interval, wait * self.bc.poll_backoff)
            return False
        finally:
            if bar is not None:
                bar.close()

    async def download(self, rd: Round) -> None:
        """The output and error files of an ended batch, saved whole beside the input file."""
        client = self.client.with_options(max_retries=self.retry.max_attempts)  # GETs: safe to retry
        for key, suffix in (("output_file_id", "output"), ("error_file_id", "errors")):
            fid = rd.end.get(key)
            if fid:
                try:
                    resp = await client.files.content(fid)
                except openai.APIError as e:
                    raise RolloutError(
                        f"downloading {key} {fid} of batch {rd.batch_id} failed ({api_error(e)}); rerun the same "
                        "command to try again (the batch and its files stay on the server)"
                    ) from None
                # an echoed key is masked before the file is kept (distill.core.redact.mask_known)
                write_atomic(self.dir / f"round-{rd.round}.{suffix}.jsonl", mask_known_bytes(resp.content))
        self.state.append({"event": "downloaded", "round": rd.round})


def ended_line(rd: Round, b) -> dict:
    """The journal line of a batch that ended: its status, file ids, counts and validation errors."""
    errs = [{"code": e.code, "message": e.message, "line": e.line} for e in (b.errors.data or [])] if b.errors else []
    rc = b.request_counts
    return {
        "event": "ended",
        "round": rd.round,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "counts": {"total": rc.total, "completed": rc.completed, "failed": rc.failed} if rc else None,
        "errors": errs,
        "created_at": b.created_at,
        "ended_at": b.completed_at or b.failed_at or b.expired_at or b.cancelled_at or time.time(),
    }


def _bar(total: int, rd: Round, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="request", desc=f"batch {rd.round}", file=sys.stderr)


def lookup_refused(call: str, what: str, rd: Round, e: Exception) -> str:
    """The message of a provider that refuses the lookup which keeps a resumed round from paying twice."""
    return (
        f"the provider refused {call} ({api_error(e)}), which a resumed batch round needs to find {what} an "
        f"interrupted call may have made (round {rd.round}, upload name {rd.filename}); without it {what} could "
        "be made and paid for twice. Fix: use a provider whose Batch API supports listing files and batches, or "
        "check its dashboard and delete the run directory's batch/state.jsonl to give the round up"
    )


def api_error(e: Exception) -> str:
    if isinstance(e, openai.APIStatusError):
        return mask_known(f"HTTP {e.status_code}: {e.message}")
    return mask_known(f"{type(e).__name__}: {e}")
