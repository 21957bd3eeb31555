"""What a rerun reuses from its run directory: the recorded answers still valid for the prompt source.

    res = load_resume(run_dir / "recording.jsonl", oc)   # reads the recording (a torn last line is cut off)
    res.nothing_to_ask        # every (prompt, sample) pair of the source has a recorded answer in use:
                              # the run sends nothing, so the endpoint check is skipped (no teacher needed)
    res.drop_stale(path)      # on_prompt_change = "rerequest": stale answers out of use, listed as superseded

A recorded answer is in use when its request hash still matches the request its prompt would be sent
as now (orchestrator/request_hash.py); a changed one is an error (on_prompt_change = "error", before any
request) or is asked again ("rerequest"). Pairs recorded but not published are rebuilt from the recording
(`split_prompt`), published ones are skipped, the others are asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.failures import RolloutError
from orchestrator.prompts import load_prompts
from orchestrator.recording import LoadedRecording, load_recording, mark_superseded
from orchestrator.request_hash import (
    PromptChangedError,
    base_sampling,
    request_hash,
    stale_keys,
    what_changed,
)
from orchestrator.request_hash import check as check_prompts


def _request_base(oc) -> tuple[str | None, dict]:
    """The model and sampling part every request's hash covers (`oc`: the orchestrator config)."""
    return oc.rollout_model.model, base_sampling(oc.sampling.request_args(), dict(oc.sampling.extra_body))


def prompt_hasher(oc):
    """prompt -> the hash recorded with each answer to it (`oc`: the orchestrator config)."""
    model, sampling = _request_base(oc)
    return lambda prompt: request_hash(model, prompt["messages"], prompt.get("tools"), sampling)


@dataclass
class Resume:
    loaded: LoadedRecording  # the answers in use once drop_stale() ran
    stale: set[tuple[str, int]]  # recorded answers to a request that has changed since ("rerequest")
    unrecorded: int  # pairs of the source with no recorded answer at all

    @property
    def nothing_to_ask(self) -> bool:
        return bool(self.loaded.records) and not self.stale and self.unrecorded == 0

    def drop_stale(self, path: Path) -> int:
        """Lists the stale answers in `<recording>.superseded` and drops them from those in use; how many."""
        if self.stale:
            mark_superseded(path, sorted((self.loaded.lines[k], self.loaded.records[k]) for k in self.stale))
        for k in self.stale:
            del self.loaded.records[k]
        return len(self.stale)


def load_resume(path: Path, oc) -> Resume:
    """The recording at `path` checked against the prompt source (RolloutError under on_prompt_change =
    "error" when a recorded request has changed). Touches the run directory only to cut a torn last line."""
    loaded = load_recording(path)
    res = Resume(loaded, set(), 0)
    if not loaded.records:
        return res
    n = oc.sampling.n or 1

    def counted(prompts: Iterable[dict]) -> Iterator[dict]:
        for p in prompts:
            res.unrecorded += sum((p["prompt_id"], i) not in loaded.records for i in range(n))
            yield p

    stale, unhashed, example = stale_keys(loaded.records, counted(load_prompts(oc.source)), prompt_hasher(oc))
    why = what_changed(*example, *_request_base(oc)) if example else ""
    try:
        check_prompts(stale, unhashed, oc.on_prompt_change, path, why)
    except PromptChangedError as e:
        raise RolloutError(str(e)) from None
    res.stale = stale
    return res


def split_prompt(
    prompt: dict, n: int, records: dict, is_published, stale: set | frozenset = frozenset()
) -> tuple[list[int], list[tuple[dict, dict]]]:
    """(sample indices of `prompt` to ask for, [(prompt, record)] recorded but not published).

    A sample published without a record in this run dir's recording (a replay of a copied recording wrote it,
    or the recording was removed) is kept as it is: asking for it again would pay twice and publish its id twice.
    A `stale` pair (its record dropped as its prompt changed, on_prompt_change = "rerequest") is asked for."""
    pid = prompt["prompt_id"]
    missing, rebuild = [], []
    for i in range(n):
        rec = records.get((pid, i))
        if rec is None:
            if (pid, i) in stale or not is_published(pid, i):
                missing.append(i)
        elif not is_published(pid, i):
            rebuild.append((prompt, rec))
    return missing, rebuild
