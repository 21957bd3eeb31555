"""What the Batch API flow (orchestrator/batch.py) keeps on disk, and the files it reads and writes.

    run_dir/batch/state.jsonl          the journal: one fsynced JSON line per step of each round
    run_dir/batch/round-<r>.input.jsonl    the input file of round r (one line per prompt x sample)
    run_dir/batch/round-<r>.output.jsonl   its output file, as downloaded
    run_dir/batch/round-<r>.errors.jsonl   its error file, as downloaded

A round is one batch. Its journal lines, in order (each written before the step it announces, or
right after the step returned, as marked):

    {"event": "round", "round": r, "pairs": [[prompt_id, i], ...], "input": ..., "filename": ...}
    {"event": "uploading", "round": r, "t": ...}            before files.create
    {"event": "uploaded", "round": r, "input_file_id": ...} after it
    {"event": "creating", "round": r, "input_file_id": ..., "t": ...}   before batches.create
    {"event": "created", "round": r, "batch_id": ...}       after it
    {"event": "ended", "round": r, "status": ..., "output_file_id": ..., "error_file_id": ..., ...}
    {"event": "downloaded", "round": r}                     both files saved (atomically) beside it
    {"event": "recorded", "round": r, "errors": {reason: count}, "left": [[pid, i, reason], ...]}
    {"event": "abandoned", "round": r, "recorded": [[pid, i], ...]}   instead: never created (see batch.py)

So a crash anywhere leaves the round at a known step; the next run continues it from there. A crash
inside files.create or batches.create (the request may have reached the server, the answer did not
come back) is what "uploading"/"creating" without their answer mean: the file is looked up by its
unique upload name, the batch by its input file id (orchestrator/batch.py), before anything is sent
again, so no pair set is ever submitted twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.jsonl import log_values

STATE = "state.jsonl"
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: per-line statuses that are the request's own fault: sending it again cannot help
RETRYABLE_STATUS = {408, 409, 425, 429}


def custom_id(prompt_id: str, index: int) -> str:
    """The input line id of (prompt id, sample index): `<prompt id>#<index>` (split at the last "#")."""
    return f"{prompt_id}#{index}"


def parse_custom_id(cid: Any) -> tuple[str, int] | None:
    """(prompt id, sample index) of a custom_id this module wrote; None for any other."""
    if not isinstance(cid, str):
        return None
    pid, sep, idx = cid.rpartition("#")
    if not sep or not idx.isdigit():
        return None
    return pid, int(idx)


@dataclass
class Round:
    """One batch and how far it got (read back from the journal)."""

    round: int
    pairs: list[tuple[str, int]]
    input: str  # input file, relative to the run directory's batch folder
    filename: str  # the unique name it is uploaded under (found again after a crash in files.create)
    upload_started: float | None = None  # when files.create was first called (unix time)
    input_file_id: str | None = None
    create_started: float | None = None  # when batches.create was first called (unix time)
    batch_id: str | None = None
    end: dict[str, Any] | None = None  # the "ended" line
    downloaded: bool = False
    recorded: dict[str, Any] | None = None  # the "recorded" line


@dataclass
class BatchState:
    """The journal of a run's batches (run_dir/batch/state.jsonl); append() is durable when it returns."""

    dir: Path
    token: str = ""  # random, per run directory: part of every upload name and the batches' metadata
    rounds: dict[int, Round] = field(default_factory=dict)

    @classmethod
    def load(cls, batch_dir: Path, create: bool = True) -> "BatchState":
        """The journal in `batch_dir`; with `create`, a new one (its token) when there is none."""
        st = cls(batch_dir)
        if create:
            _cut_torn_tail(batch_dir / STATE)  # else the next append() would be written onto the fragment
        for d in log_values(batch_dir / STATE):  # a torn last line is skipped: that step is redone
            st._apply(d)
        if create and not st.token:
            st.append({"event": "start", "token": os.urandom(6).hex()})
        return st

    def _apply(self, d: dict[str, Any]) -> None:
        ev, r = d.get("event"), d.get("round")
        if ev == "start":
            self.token = d["token"]
        elif ev == "round":
            self.rounds[r] = Round(r, [(str(p), int(i)) for p, i in d["pairs"]], d["input"], d["filename"])
        elif r in self.rounds:
            rd = self.rounds[r]
            if ev == "uploading":
                rd.upload_started = rd.upload_started or float(d["t"])
            elif ev == "uploaded":
                rd.input_file_id = d["input_file_id"]
            elif ev == "creating":
                rd.create_started = rd.create_started or float(d["t"])
            elif ev == "created":
                rd.batch_id = d["batch_id"]
            elif ev == "ended":
                rd.end = d
            elif ev == "downloaded":
                rd.downloaded = True
            elif ev in ("recorded", "abandoned"):
                rd.recorded = d

    def append(self, d: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / STATE, "a", encoding="utf-8") as f:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(d)

    def open_round(self) -> Round | None:
        """The round a previous run left unfinished (not yet recorded), if any."""
        return next((rd for rd in self.rounds.values() if rd.recorded is None), None)

    def new_round(self, pairs: list[tuple[str, int]], lines: list[dict[str, Any]]) -> Round:
        """Writes the input file of a new round (atomically), then journals the round."""
        r = max(self.rounds, default=0) + 1
        name = f"round-{r}.input.jsonl"
        write_atomic(self.dir / name, b"".join(json_line(x) for x in lines))
        self.append(
            {
                "event": "round",
                "round": r,
                "pairs": [list(p) for p in pairs],
                "input": name,
                "filename": f"distill-{self.token}-round-{r}.jsonl",
            }
        )
        return self.rounds[r]


def _cut_torn_tail(path: Path) -> None:
    """Cuts a half-written last line (a crash inside append()) off the journal, after its last newline."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def json_line(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace")


def write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a temporary file, fsynced, renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_line(prompt_id: str, index: int, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One Batch API input line: {custom_id, method, url, body}."""
    return {"custom_id": custom_id(prompt_id, index), "method": "POST", "url": url, "body": body}


@dataclass
class LineResult:
    """One line of an output or error file: the answer body (status 200) or why there is none."""

    pair: tuple[str, int] | None
    body: dict[str, Any] | None = None
    request_id: str | None = None
    reason: str | None = None  # http_<status>, the error code (batch_expired, ...), or malformed_line
    detail: str = ""
    retryable: bool = True


def read_results(path: Path) -> list[LineResult]:
    """The lines of a downloaded output or error file (a missing file has none)."""
    if not path.exists():
        return []
    out = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if raw.strip():
            out.append(parse_result(raw, n))
    return out


def parse_result(raw: bytes, n: int = 0) -> LineResult:
    """An output/error line {custom_id, response: {status_code, request_id, body}, error}."""
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
    except ValueError as e:
        return LineResult(None, reason="malformed_line", detail=f"line {n}: {e}")
    pair = parse_custom_id(d.get("custom_id"))
    resp, err = d.get("response"), d.get("error")
    resp = resp if isinstance(resp, dict) else {}
    status, body = resp.get("status_code"), resp.get("body")
    if err:
        code = (err.get("code") if isinstance(err, dict) else None) or "line_error"
        msg = err.get("message", "") if isinstance(err, dict) else str(err)
        retry = not isinstance(status, int) or status >= 500 or status in RETRYABLE_STATUS
        return LineResult(pair, reason=str(code), detail=str(msg), retryable=retry)
    if status != 200 or not isinstance(body, dict):
        msg = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
        retry = not isinstance(status, int) or status >= 500 or status in RETRYABLE_STATUS
        return LineResult(pair, reason=f"http_{status}", detail=str(msg), retryable=retry)
    return LineResult(pair, body=body, request_id=resp.get("request_id"))


# ---------------------------------------------------------------------------
# Budget at batch prices
# ---------------------------------------------------------------------------


def batch_prices(oc) -> tuple[float, float]:
    """(prompt, completion) price per 1k tokens of a batch request: [orchestrator.batch]'s, or the online
    price of [orchestrator.budget] times batch.price_factor."""
    b, bc = oc.budget, oc.batch
    p = bc.cost_per_1k_prompt if bc.cost_per_1k_prompt is not None else b.cost_per_1k_prompt * bc.price_factor
    c = (
        bc.cost_per_1k_completion
        if bc.cost_per_1k_completion is not None
        else b.cost_per_1k_completion * bc.price_factor
    )
    return p, c


@dataclass
class Spend:
    """Spend so far: the recorded answers (each priced as it was bought: online, or in a batch when the
    record has a batch_id) and the batch lines sent in this run."""

    requests: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost: float = 0.0
    answers: int = 0

    @classmethod
    def of(cls, records, budget, prices: tuple[float, float]) -> "Spend":
        s = cls()
        for r in records:
            if r.get("provenance") == "cache":  # answered from the request cache: not sent, no usage paid;
                continue  # not an answer of the completion-token mean either (its usage is 0)
            s.requests += 1 / max(1, int(r.get("usage_shared_by") or 1))
            s.add(r, budget, prices)
        return s

    def add(self, r: dict[str, Any], budget, prices: tuple[float, float]) -> None:
        """Counts one recorded answer's share of its request's usage, at the price it was bought at."""
        shared = max(1, int(r.get("usage_shared_by") or 1))
        u = r.get("usage") or {}
        p, c = (u.get("prompt_tokens") or 0) / shared, (u.get("completion_tokens") or 0) / shared
        pp, pc = prices if r.get("batch_id") else (budget.cost_per_1k_prompt, budget.cost_per_1k_completion)
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cost += (p * pp + c * pc) / 1000.0
        self.answers += 1

    def completion_mean(self) -> float:
        """Completion tokens per answer so far: the estimate of a line when sampling.max_tokens is unset."""
        return self.completion_tokens / self.answers if self.answers else 0.0


def fit_budget(
    budget, prices: tuple[float, float], spend: Spend, ests: list[tuple[float, float]]
) -> tuple[int, str | None]:
    """How many of the lines (their estimated (prompt, completion) tokens, in order) fit orchestrator.budget
    after `spend`, and the budget that stops the next one (None: all fit). As online, with
    sampling.max_tokens set the completion-token and cost budgets are never exceeded."""
    req, c, cost = spend.requests, spend.completion_tokens, spend.cost
    for k, (ep, ec) in enumerate(ests):
        add = (ep * prices[0] + ec * prices[1]) / 1000.0
        if budget.max_requests is not None and req + 1 > budget.max_requests:
            return k, "budget:max_requests"
        if budget.max_completion_tokens is not None and c + ec > budget.max_completion_tokens:
            return k, "budget:max_completion_tokens"
        if budget.max_cost is not None and cost + add > budget.max_cost:
            return k, "budget:max_cost"
        req, c, cost = req + 1, c + ec, cost + add
    return len(ests), None
