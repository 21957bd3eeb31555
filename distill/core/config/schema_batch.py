"""Run configuration schema, part 5: `[orchestrator.batch]`, the teacher's answers through an OpenAI-style
Batch API (files + batches endpoints) instead of one online request per prompt (docs/orchestrator.md,
"Batch API")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .strict import Strict


class Batch(Strict):
    """Batch API submission: one input file of every missing (prompt, sample) pair, uploaded and run as
    a batch, polled until it ends, its answers recorded like online ones. Resumes after any crash."""

    # Send the rollout as Batch API jobs (`distill rollout` / `distill run`); off: online requests.
    # `--orchestrator.batch.enabled true` turns it on for one command.
    enabled: bool = False
    # The batch's completion window, sent as is ("24h" on OpenAI).
    completion_window: str = "24h"
    # The request URL of each input line (the Batch API's `endpoint`).
    endpoint: Literal["/v1/chat/completions"] = "/v1/chat/completions"
    # Seconds before the first status poll of a batch.
    poll_interval: float = Field(10.0, gt=0)
    # Each later poll waits this many times longer than the one before (at most max_poll_interval).
    poll_backoff: float = Field(1.5, ge=1)
    # Longest wait between two status polls, in seconds.
    max_poll_interval: float = Field(300.0, gt=0)
    # Pairs a batch ended without an answer for (expired, per-line 5xx/429, an unusable answer):
    # true submits them again in a new batch; false leaves them, listed in rejects.jsonl by reason.
    # Pairs refused with another 4xx, and those of a batch someone cancelled, are not resubmitted.
    # Either way a rerun of the command asks for every pair still missing.
    resubmit_missing: bool = True
    # Most batches one pair is sent in by one run, the first included.
    max_submissions: int = Field(3, ge=1)
    # Most input lines in one batch (OpenAI: 50000); the other pairs go in the next batch.
    max_requests_per_batch: int = Field(50000, ge=1)
    # Batch price per 1k prompt tokens, for orchestrator.budget (unset: the online price times price_factor).
    cost_per_1k_prompt: float | None = Field(None, ge=0)
    # Batch price per 1k completion tokens (unset: the online price times price_factor).
    cost_per_1k_completion: float | None = Field(None, ge=0)
    # Batch price / online price when the batch prices are unset (OpenAI's Batch API: half).
    price_factor: float = Field(0.5, gt=0, le=1)
