"""What a recorded answer was an answer to: a content hash of the request, checked on resume.

A record's `request_hash` is the SHA-256 of the canonical JSON (sorted keys, no spaces) of

    {"model": <orchestrator.rollout_model.model>, "messages": [...], "tools": [...] | null,
     "sampling": <sampling args sent, extra_body nested, secret-looking keys redacted>}

`sampling` is the request's arguments minus what follows from the sample index (`n`, and the
per-index offset added to `seed`): the index is already part of the record's key. The API
key and headers are never part of it (a new key is not a new prompt).

On resume every recorded (prompt id, index) whose prompt is still in the source is checked
against the hash of the request it would be sent as now. `orchestrator.on_prompt_change`:
"error" (default) stops before any request with a message naming the changed prompt ids;
"rerequest" asks for those pairs again (the stale records stay in the recording, paid for,
but are not used: a later record for the same key with a different hash supersedes it, and
their line numbers are listed in `<recording>.superseded` for `distill replay`).
Records without a hash (recordings of earlier versions) are trusted, with one warning.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Iterable

from distill.core.redact import redact

#: how many changed prompt ids the error message lists
SHOWN_IDS = 5


class PromptChangedError(ValueError):
    """Recorded answers were given to a different request than the prompt source now makes."""


def request_hash(model: str | None, messages: list[dict], tools: list[dict] | None, sampling: dict[str, Any]) -> str:
    """The hex SHA-256 of the request's canonical JSON (see the module doc)."""
    blob = json.dumps(
        {"model": model, "messages": messages, "tools": tools or None, "sampling": redact(sampling)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8", "backslashreplace")).hexdigest()


def base_sampling(request_args: dict[str, Any], extra_body: dict[str, Any]) -> dict[str, Any]:
    """The sampling part of the hash: the configured args without `n` (the seed as configured), plus extra_body."""
    s = {k: v for k, v in request_args.items() if k != "n"}
    if extra_body:
        s["extra_body"] = extra_body
    return s


def stale_keys(
    records: dict[tuple[str, int], dict], prompts: Iterable[dict], hash_of
) -> tuple[set, int, tuple[dict, dict] | None]:
    """(keys of records whose prompt's request changed, records with no hash, the first such (prompt,
    record) to explain the change with). `hash_of(prompt)` -> str."""
    by_prompt: dict[str, list[tuple[int, dict]]] = {}
    for (pid, i), rec in records.items():
        by_prompt.setdefault(pid, []).append((i, rec))
    stale: set[tuple[str, int]] = set()
    unhashed = 0
    example = None
    for prompt in prompts:
        recorded = by_prompt.pop(prompt["prompt_id"], None)
        if not recorded:
            continue
        now = hash_of(prompt)
        for i, rec in recorded:
            h = rec.get("request_hash")
            if h is None:
                unhashed += 1
            elif h != now:
                stale.add((prompt["prompt_id"], i))
                example = example or (prompt, rec)
    return stale, unhashed, example


def what_changed(prompt: dict, rec: dict, model: str | None, sampling: dict[str, Any]) -> str:
    """What differs between a recorded request and the one `prompt` makes now (`model`, `sampling`:
    base_sampling's), as far as the record tells: its messages and tools exactly; the model when the
    recorded hash is the one of the model the server named; sampling keys by what was sent (the seed
    moves with the sample index and is not compared)."""
    pid = prompt["prompt_id"]
    was = rec.get("model")
    if was != model and request_hash(was, prompt["messages"], prompt.get("tools"), sampling) == rec.get("request_hash"):
        return f"the model changed (recorded {was!r}, now {model!r})"
    if rec.get("messages") != prompt["messages"]:
        return f"{pid}'s messages differ from the recorded ones"
    if (rec.get("tools") or None) != (prompt.get("tools") or None):
        return f"{pid}'s tools differ from the recorded ones"
    sent, now = _compared(rec.get("sampling") or {}), _compared(redact(sampling))
    keys = sorted(k for k in set(sent) | set(now) if sent.get(k) != now.get(k))
    if keys:
        shown = ", ".join(f"{k} (recorded {_shown(sent, k)}, now {_shown(now, k)})" for k in keys[:4])
        return f"sampling changed: {shown}"
    if was and was != model:  # e.g. an alias: gpt-4o asked for, gpt-4o-2024-08-06 answering
        return f"the model or the sampling settings changed (the recorded answers came from {was!r}; now {model!r})"
    return "the model or the sampling settings changed"


def _compared(sampling: dict[str, Any]) -> dict[str, Any]:
    """Sampling args as what_changed compares them: no n or seed, extra_body's keys among the others."""
    flat = {k: v for k, v in sampling.items() if k not in ("n", "seed")}
    if isinstance(flat.get("extra_body"), dict):
        flat.update(flat.pop("extra_body"))
    return flat


def _shown(d: dict, k: str) -> str:
    return repr(d[k]) if k in d else "unset"


def check(stale: set[tuple[str, int]], unhashed: int, policy: str, path, why: str = "") -> None:
    """Raises PromptChangedError under policy "error"; warns about unhashed records and re-requests."""
    if unhashed:
        print(
            f"warning: {path}: {unhashed} recorded answer(s) have no request_hash (recorded by an earlier "
            "distill); they are reused without checking that their prompt is unchanged",
            file=sys.stderr,
        )
    if not stale:
        return
    pids = sorted({p for p, _ in stale})
    shown = ", ".join(pids[:SHOWN_IDS]) + (f", ... ({len(pids) - SHOWN_IDS} more)" if len(pids) > SHOWN_IDS else "")
    if policy == "error":
        raise PromptChangedError(
            f"{path}: {len(stale)} recorded answer(s) of {len(pids)} prompt(s) were given to a different request "
            f"than the prompt source now makes (prompt text, tools, model or sampling changed"
            + (f"; here {why}" if why else "")
            + f"): {shown}. Nothing "
            "was requested. Fix: restore the prompts / settings, or set orchestrator.on_prompt_change = "
            '"rerequest" to ask for those answers again (the old ones stay in the recording, unused), or use a '
            "new output_dir"
        )
    print(
        f"orchestrator: {len(stale)} recorded answer(s) of {len(pids)} changed prompt(s) are stale and will be "
        f'requested again (orchestrator.on_prompt_change = "rerequest"): {shown}' + (f"; {why}" if why else ""),
        file=sys.stderr,
    )
