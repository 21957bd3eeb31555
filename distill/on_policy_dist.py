"""The on-policy loop under torchrun (several processes, FSDP2; docs/on_policy.md, "Several processes").

Who does what, per step:

    every rank   samples a disjoint share of the step's prompts (in-process sampler: prompts r, r+N, ...;
                 every generation forward is an FSDP collective, so trainer/sampler.py runs as many batches
                 and decoding steps on every rank); with the server sampler rank 0 asks the server for all
    rank 0       gathers the samples in the one-process order (prompt order, then k), writes the step files,
                 scores them (the only rank with a scorer: each sample is scored once, by one process),
                 broadcasts the scored samples; reads back what is written on a resume and tells the others
    every rank   trains on the step's samples; trainer/step.py takes rank r's rows (r, r+N, ...) as in SFT

So the ranks train on exactly the samples one process would, and the weights agree with a one-process run up
to the float noise of sharded reductions. In one process every helper here is the identity.

Failures stay symmetric: what only rank 0 does (scoring, the student server, the step files) runs through
`from_rank0`, so an error there (a [scorer.budget] stop, say) is raised on every rank at the same point, and
every rank takes the same way out (the collective checkpoint of the steps trained) instead of one rank
waiting forever in a collective the other left. Rank 0 waits for a scoring future in slices of POLL_S
seconds, each followed by a broadcast, so a long scoring never runs into the process group's timeout.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable, Sequence, TypeVar

from distill.core.contract import Sample

T = TypeVar("T")


class RankZeroStopped(Exception):
    """Raised on the other ranks when what rank 0 alone does failed there. `distill run` then ends these ranks
    quietly (exit 0, one line): torchrun, seeing a rank fail, would kill rank 0 before it has printed its
    message and exited with its code, which is what the run ends with."""


#: Seconds rank 0 waits for a future before telling the other ranks it is still waiting.
POLL_S = 60.0


def broadcast(obj: T, ctx: Any) -> T:
    """Rank 0's `obj` on every rank (pickled; a collective)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_rank0(ctx: Any, fn: Callable[[], T]) -> T:
    """fn() run on rank 0, its value on every rank (a collective). When fn raises, rank 0 raises it and the
    other ranks raise RankZeroStopped naming its type, at the same point."""
    if not ctx.distributed:
        return fn()
    err: BaseException | None = None
    value: Any = None
    if ctx.is_main:
        try:
            value = fn()
        except BaseException as e:  # every rank must learn of it (module docstring)
            err = e
    ok, value, why = broadcast((err is None, value, f"{type(err).__name__}: {err}" if err else ""), ctx)
    if err is not None:
        raise err
    if not ok:
        raise RankZeroStopped(f"rank {ctx.rank} stopped with rank 0 ({why.split(':')[0]}); rank 0's message says why")
    return value


def result_from_rank0(ctx: Any, future: Future | None) -> Any:
    """The result of rank 0's `future` on every rank (from_rank0), waited for in POLL_S slices."""
    while True:
        done, value = from_rank0(ctx, lambda: _poll(future))  # (False, None): still waiting, on every rank
        if done:
            return value


def _poll(future: Future | None) -> tuple[bool, Any]:
    from concurrent.futures import TimeoutError as FutureTimeout

    assert future is not None  # rank 0 holds the future
    try:
        return True, future.result(timeout=POLL_S)
    except FutureTimeout:
        if future.done():  # the future's own result is a timeout, not the wait
            raise
        return False, None


def sample_shared(sampler: Any, prompts: Sequence[tuple[str, list[int]]], step: int, ctx: Any, in_process: bool):
    """The samples of `prompts` (prompt order, then k) on rank 0, None on the others; a collective under
    torchrun: every rank must call it. In-process, rank r samples prompts r, r+N, ...; with the server sampler
    (no collective in sampling) rank 0 samples them all."""
    if not ctx.distributed:
        return sampler.sample(prompts, policy_step=step)
    import torch.distributed as dist

    if not in_process:
        got = from_rank0(ctx, lambda: sampler.sample(list(prompts), policy_step=step))
        return got if ctx.is_main else None
    # what sample() refuses, refused on every rank before any forward (one rank alone would leave the others
    # waiting in a collective)
    if len({pid for pid, _ in prompts}) != len(prompts) or not all(ids for _, ids in prompts):
        raise ValueError("the step's prompts must have unique prompt ids and tokens")
    mine = list(prompts[ctx.rank :: ctx.world])
    got = sampler.sample(mine, policy_step=step)  # called even with no prompts: it keeps FSDP in step
    parts: list[list[Sample] | None] = [None] * ctx.world
    dist.all_gather_object(parts, got)
    if not ctx.is_main:
        return None
    pos = {pid: j for j, (pid, _) in enumerate(prompts)}
    merged = sorted((s for part in parts for s in part or []), key=lambda s: (pos[s.prompt_id], s.sample_index))
    n = len(prompts) * sampler.cfg.samples_per_prompt
    if len(merged) != n:  # an invariant: every (prompt, k) sampled once, by one rank
        raise RuntimeError(f"step {step}: the ranks sampled {len(merged)} samples, expected {n}")
    return merged
