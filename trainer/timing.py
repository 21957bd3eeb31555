"""Where a step's time goes: wall-clock sections summed over a step (metrics.jsonl's `time_*_s`).

    times = StepTimes(device)
    with times.section("forward"):
        ...
    times.metrics()   # {"time_wait_s": ..., "time_data_s": ..., ...}

On CPU a section is two `perf_counter` calls (no cost worth measuring). On CUDA the kernels run
asynchronously, so each section synchronises the device at its start and end: the figures are
then the device's time, at the price of a few host-device syncs per micro-batch.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

# wait: for the step's samples (trainer.train); data: packing, collation, the ranks' all-reduce of
# the token counts, the host->device copy; forward: the decoder to its last hidden states; loss: the
# loss head (sft's chunked NLL computes its gradients chunk by chunk in its forward, so they count
# here; a loss whose gradients come in its backward counts them under backward); backward: the
# backward pass; optimizer: gradient clipping, AdamW, lr schedule, zeroing the gradients.
SECTIONS = ("wait", "data", "forward", "loss", "backward", "optimizer")


class StepTimes:
    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.seconds = dict.fromkeys(SECTIONS, 0.0)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time_{k}_s": v for k, v in self.seconds.items()}


@contextlib.contextmanager
def maybe_section(times: StepTimes | None, name: str) -> Iterator[None]:
    """`times.section(name)`, or nothing when no one is timing (eval, tests calling the model directly)."""
    if times is None:
        yield
    else:
        with times.section(name):
            yield
