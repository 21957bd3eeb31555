"""Replay streams: memory stays flat on a 200k-conversation recording, with a progress bar."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from distill.core.config import load_config
from distill.core.contract import iter_samples
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import replay

N = 200_000
KEEP_EVERY = 1000  # one conversation in 1000 is complete; the rest were cut off (filtered as truncated)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples this process's resident memory every 10 ms in a thread; `.growth` is peak - start."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.start


def write_recording(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "v": 1,
                        "prompt_id": f"p{i}",
                        "sample_index": 0,
                        "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
                        "response": {"role": "assistant", "content": f"{i} + 1 = {i + 1}"},
                        "finish_reason": "stop" if i % KEEP_EVERY == 0 else "length",
                        "model": "m",
                        "reward": None,
                    }
                )
                + "\n"
            )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_memory_stays_flat_on_a_large_recording(tmp_path, smol_tokenizer, capsys):
    big = tmp_path / "big.jsonl"
    write_recording(big, N)
    size = big.stat().st_size
    assert size > 30e6
    cfg = load_config(None, {"orchestrator": {"source": {"type": "replay", "path": str(big)}}})
    recon = Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction, 1024)
    # warm up (first-use allocations of the tokenizer, json, tqdm) on a small file
    small = tmp_path / "small.jsonl"
    write_recording(small, 2 * KEEP_EVERY)
    replay(cfg, tmp_path / "warm", recon, inputs=[str(small)], progress=True)

    with PeakRSS() as mem:
        summary = replay(cfg, tmp_path / "run", recon, progress=True)

    assert summary["records"] == N and summary["filtered"] == {"truncated": N - N // KEEP_EVERY}
    assert summary["samples"] == N // KEEP_EVERY == len(list(iter_samples(tmp_path / "run" / "samples")))
    assert summary["records_per_s"] > 0 and summary["mb_per_s"] > 0
    # Holding the parsed records would take several times the file size (36 MB); streaming
    # keeps the growth to allocator noise.
    assert mem.growth < 16e6, f"resident memory grew by {mem.growth / 1e6:.1f} MB on a {size / 1e6:.0f} MB file"
    err = capsys.readouterr().err
    assert "replay:" in err and "100%" in err and "B/s" in err  # the progress bar, with throughput
