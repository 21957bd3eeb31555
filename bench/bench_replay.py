"""Replay throughput against its peers, measured in the same run.

    python bench/bench_replay.py [--n 50000] [--kept 2000]

Two ratios (lower is better, 1.0 = no overhead over the peer):
  reader   replay of N recording lines that the filters drop (truncated) vs the floor:
           `json.loads` of every line of the same file. Shows the cost of format
           detection, validation, filters and rejects.jsonl.
  build    replay of K complete conversations vs calling Reconstructor.build on the
           same conversations (already in memory) and writing them with ShardWriter.
           Shows what replay adds around reconstruction.
Prints records/s for each. Uses the real SmolLM2 tokenizer; no network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.core.config import load_config  # noqa: E402
from distill.core.contract import ShardWriter  # noqa: E402
from orchestrator.reconstruct import Reconstructor  # noqa: E402
from orchestrator.replay import replay  # noqa: E402
from distill.core.student import load_tokenizer, tokenizer_only_dir  # noqa: E402


def write_recording(path: Path, n: int, finish: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "v": 1,
                        "prompt_id": f"p{i}",
                        "sample_index": 0,
                        "messages": [
                            {
                                "role": "user",
                                "content": f"A shop sells {i} apples and {i + 3} pears. How many fruits does it sell?",
                            }
                        ],
                        "response": {"role": "assistant", "content": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"},
                        "finish_reason": finish,
                        "model": "m",
                        "reward": None,
                    }
                )
                + "\n"
            )


def best_of(k: int, fn) -> float:
    times = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--kept", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = load_tokenizer(tokenizer_only_dir())
    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        cfg = load_config(None, {"orchestrator": {"source": {"type": "replay", "path": str(tmp / "x")}}})
        recon = Reconstructor(tok, cfg.orchestrator.reconstruction, 1024)

        dropped = tmp / "dropped.jsonl"
        write_recording(dropped, args.n, "length")

        def json_floor():
            with open(dropped, "rb") as f:
                for line in f:
                    json.loads(line)

        def replay_dropped():
            shutil.rmtree(tmp / "run-a", ignore_errors=True)
            replay(cfg, tmp / "run-a", recon, inputs=[str(dropped)], progress=False)

        t_floor, t_read = best_of(args.repeat, json_floor), best_of(args.repeat, replay_dropped)
        print(
            f"reader: replay {args.n / t_read:,.0f} records/s, json.loads {args.n / t_floor:,.0f} lines/s, "
            f"ratio {t_read / t_floor:.2f}x"
        )

        kept = tmp / "kept.jsonl"
        write_recording(kept, args.kept, "stop")
        convs = []
        with open(kept, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                convs.append((r["messages"] + [r["response"]], f"{r['prompt_id']}/0", r["prompt_id"]))

        def build_direct():
            shutil.rmtree(tmp / "run-b", ignore_errors=True)
            w = ShardWriter(tmp / "run-b", samples_per_shard=cfg.orchestrator.samples_per_shard)
            for msgs, sid, pid in convs:
                samples, _ = recon.build(msgs, None, sample_id=sid, prompt_id=pid, finish_reason="stop")
                for s in samples:
                    w.add(s)
            w.close()

        def replay_kept():
            shutil.rmtree(tmp / "run-c", ignore_errors=True)
            replay(cfg, tmp / "run-c", recon, inputs=[str(kept)], progress=False)

        t_direct, t_replay = best_of(args.repeat, build_direct), best_of(args.repeat, replay_kept)
        print(
            f"build:  replay {args.kept / t_replay:,.0f} conversations/s, direct build+write "
            f"{args.kept / t_direct:,.0f}/s, ratio {t_replay / t_direct:.2f}x"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
