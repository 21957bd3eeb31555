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
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

from distill.core.contract import Sample

T = TypeVar("T")


def broadcast(obj: T, ctx: Any) -> T:
    """Rank 0's `obj` on every rank (pickled; a collective)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sample_shared(sampler: Any, prompts: Sequence[tuple[str, list[int]]], step: int, ctx: Any, in_process: bool):
    """The samples of `prompts` (prompt order, then k) on rank 0, None on the others; a collective under
    torchrun: every rank must call it. In-process, rank r samples prompts r, r+N, ...; with the server sampler
    (no collective in sampling) rank 0 samples them all."""
    if not ctx.distributed:
        return sampler.sample(prompts, policy_step=step)
    import torch.distributed as dist

    if in_process:
        mine = list(prompts[ctx.rank :: ctx.world])
        got = sampler.sample(mine, policy_step=step)  # called even with no prompts: it keeps FSDP in step
    else:
        got = sampler.sample(list(prompts), policy_step=step) if ctx.is_main else []
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
