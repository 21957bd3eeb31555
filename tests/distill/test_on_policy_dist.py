"""distill/on_policy_dist.py's rank-0 helpers with 2 real gloo processes (no model): rank 0's value reaches
rank 1; rank 0's failure is raised on both ranks (its own error on rank 0, RankZeroStopped on rank 1); a
future slower than POLL_S is waited for across several polls. In one process they are the identity."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from distill import on_policy_dist as opd
from distill.on_policy_parts import OnPolicyError
from trainer.dist import DistContext


def _worker(rank: int, port: int, out) -> None:
    import torch

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world=2, local_rank=rank, device=torch.device("cpu"))
    got: dict = {"value": opd.from_rank0(ctx, lambda: {"rank": rank, "ids": [1, 2]})}

    def fail():
        raise OnPolicyError("scoring stopped at budget:max_requests")

    try:
        opd.from_rank0(ctx, fail)
    except BaseException as e:
        got["error"] = (type(e).__name__, str(e))
    opd.POLL_S = 0.05  # a future that takes about 6 polls
    future = ThreadPoolExecutor(1).submit(lambda: (time.sleep(0.3), "scored")[1]) if rank == 0 else None
    got["slow"] = opd.result_from_rank0(ctx, future)
    dist.destroy_process_group()
    out.put((rank, got))


def test_rank_0_values_and_failures_reach_every_rank():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(port, q), nprocs=2, start_method="spawn", join=True)
    res = dict(q.get() for _ in range(2))
    for rank in (0, 1):
        assert res[rank]["value"] == {"rank": 0, "ids": [1, 2]} and res[rank]["slow"] == "scored"
    assert res[0]["error"] == ("OnPolicyError", "scoring stopped at budget:max_requests")
    assert (
        res[1]["error"][0] == "RankZeroStopped" and "rank 1 stopped with rank 0 (OnPolicyError)" in res[1]["error"][1]
    )


def test_one_process_is_the_identity():
    ctx = DistContext(rank=0, world=1, local_rank=0, device=None)  # type: ignore[arg-type]
    assert opd.broadcast([3], ctx) == [3] and opd.from_rank0(ctx, lambda: 5) == 5
    f: Future = Future()
    f.set_result(("s", 1.0))
    assert opd.result_from_rank0(ctx, f) == ("s", 1.0)
    with pytest.raises(OnPolicyError):
        opd.from_rank0(ctx, lambda: (_ for _ in ()).throw(OnPolicyError("x")))
