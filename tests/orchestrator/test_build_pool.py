"""orchestrator/build_pool.py: one batch split across worker processes gives what one process gives.

Real tokenizers and templates (SmolLM2's; Llama 3.1's and Qwen3's, which are not append-only,
with their real tokenizers from tests/support/tokenizer_builds.py); real spawned processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.reconstruct_helpers import recon

from distill.core.config import Reconstruction, load_config
from distill.core.conversation import Conversation
from orchestrator import build_pool
from orchestrator.build_pool import ParallelBuilder, ReconstructWorkerDied, slices
from orchestrator.reconstruct import Reconstructor, tokenize_file
from orchestrator.replay import replay
from orchestrator.sink import build_isolated

WORDS = "the of and to in is that 42 3.14 café naïve 東京 ü → ✓ 😀 (see) [note] {key}".split()


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def messages(rng: random.Random, system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for _ in range(rng.randint(1, 4)):
        msgs += [{"role": "user", "content": words(rng, 2, 12)}, {"role": "assistant", "content": words(rng, 3, 30)}]
    return msgs


TWO_CALLS = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "X"}'}}
            for i in range(2)
        ],
    },
]


def corpus(n: int = 60, seed: int = 0) -> list[Conversation]:
    """Conversations with shared prompts (4 samples per prompt, as sampling.n gives), a few
    rejections (empty answer, cut answer, a tool-call turn some templates refuse) and one
    conversation whose build raises (meta that reconstruction cannot copy)."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    while len(out) < n:
        base = messages(rng, words(rng, 2, 6) if rng.random() < 0.5 else None)[:-1]
        for k in range(4):
            out.append(
                Conversation(base + [{"role": "assistant", "content": words(rng, 3, 30)}], prompt_id=f"p{len(out)}")
            )
    out[5] = Conversation([{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}], prompt_id="empty")
    out[17] = Conversation(out[17].messages, prompt_id="cut", finish_reason="length")
    out[30] = Conversation(TWO_CALLS, prompt_id="calls")
    out[41] = Conversation(out[41].messages, prompt_id="raises", meta=["not a dict"])
    return out


def comparable(results: list) -> list:
    """Results with exceptions as (type name, message): exceptions do not compare equal."""
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in results]


def counts(stats) -> dict:
    return {k: v for k, v in stats.items() if k == "samples" or k.startswith("rejected:")}


def family_tokenizer(name: str):
    from support import tokenizer_builds

    build, template = {"llama3_1": ("llama3", "llama3_1"), "qwen3": ("qwen", "qwen3")}[name]
    return tokenizer_builds.load_or_skip(build, template)


def test_slices_cover_the_batch_in_order():
    assert slices(10, [1, 1, 1]) == [(0, 3), (3, 7), (7, 10)]
    assert slices(2, [1, 1, 1]) == [(0, 1), (1, 1), (1, 2)]
    assert slices(100, [0.9, 1]) == [(0, 47), (47, 100)]
    assert slices(8, [0.0, 1, 1]) == [(0, 0), (0, 4), (4, 8)]  # many workers: this process only gathers


def test_small_batches_and_zero_workers_stay_in_this_process():
    r = recon()
    b = ParallelBuilder(r, 2, min_batch=64, start_after=0)
    assert len(b.build(corpus(60)[:20])) == 20 and b.pool is None  # below min_batch
    b = ParallelBuilder(r, 2, min_batch=2, start_after=100)
    assert len(b.build(corpus(60))) == 60 and b.pool is None  # fewer built than start_after so far
    assert ParallelBuilder(r, 0, min_batch=1, start_after=0).build(corpus()[:8]) and b.pool is None


@pytest.mark.slow  # spawns worker processes that import transformers
@pytest.mark.parametrize("name", ["smollm2", "llama3_1", "qwen3"])
def test_parallel_build_equals_one_process(name):
    tok = None if name == "smollm2" else family_tokenizer(name)
    convs = corpus()
    one = recon(tok=tok)
    expected = build_isolated(one, convs)
    r = recon(tok=tok)
    with ParallelBuilder(r, 2, min_batch=2, start_after=0) as b:
        got = b.build(convs)
        pids = b.worker_pids()
        assert len(pids) == 2
        again = b.build(convs[::-1])  # another split of the same conversations, same pool
        assert b.worker_pids() == pids
    assert comparable(got) == comparable(expected)
    assert comparable(again) == comparable(expected[::-1])
    assert isinstance(got[41], TypeError) and not got[5][0] and not got[17][0]
    assert {x.reason for x in got[5][1] + got[17][1]} == {"empty_assistant_turn", "truncated"}
    if name == "llama3_1":  # its template raises on two tool calls in one turn
        assert got[30][1][0].reason == "template_error" and "single tool-calls" in got[30][1][0].detail
    once = counts(one.stats)
    assert counts(r.stats) == {k: 2 * v for k, v in once.items()} and once["samples"] > 50


@pytest.mark.slow
def test_a_dead_worker_is_a_clear_error_not_a_hang():
    with ParallelBuilder(recon(), 1, min_batch=2, start_after=0) as b:
        b.start()
        os.kill(b.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(ReconstructWorkerDied, match="reconstruct_workers = 0"):
            b.build(corpus())
        assert b.pool is None


@pytest.mark.slow
def test_tokenize_file_with_workers_writes_the_same_bytes(tmp_path, smol_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(build_pool, "START_AFTER", 0)
    monkeypatch.setattr(build_pool, "MIN_PARALLEL", 8)
    lines = [json.dumps({"messages": c.messages, "finish_reason": c.finish_reason}) for c in corpus(300)]
    lines[7] = "{not json"
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = {}
    for w in (0, 2):
        summary = tokenize_file(
            str(smol_tokenizer_dir), str(tmp_path / "in.jsonl"), str(tmp_path / f"{w}.jsonl"), workers=w
        )
        out[w] = (
            (tmp_path / f"{w}.jsonl").read_bytes(),
            {k: summary[k] for k in ("lines", "samples", "rejected", "by_reason")},
        )
    assert out[0] == out[2] and out[0][1]["samples"] > 250 and out[0][1]["by_reason"]["invalid_json"] == 1


@pytest.mark.slow
def test_replay_with_workers_writes_the_same_files(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.setattr(build_pool, "START_AFTER", 0)
    rows = [
        {"messages": c.messages, "finish_reason": c.finish_reason, "id": f"c{i}"} for i, c in enumerate(corpus(300))
    ]
    src = tmp_path / "rec.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    files = {}
    for w in (0, 2):
        cfg = load_config(
            None,
            {
                "output_dir": str(tmp_path),
                "orchestrator": {"source": {"type": "replay", "path": str(src)}, "reconstruct_workers": w},
            },
        )
        r = Reconstructor(smol_tokenizer, Reconstruction())
        summary = replay(cfg, tmp_path / f"run{w}", r, progress=False)
        run = tmp_path / f"run{w}"
        shards = sorted(p for p in (run / "samples").iterdir() if p.is_file())
        files[w] = (
            [(p.name, p.read_bytes()) for p in shards],
            (run / "rejects.jsonl").read_bytes(),
            (run / "replay_rejects.jsonl").read_bytes(),
            {k: summary[k] for k in ("outcomes", "rejected", "samples", "bad_records")},
            counts(r.stats),
        )
    assert files[0] == files[2] and files[0][3]["samples"] > 250 and files[0][3]["bad_records"] == 0


@pytest.mark.slow
def test_workers_end_when_their_parent_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from support.reconstruct_helpers import recon\n"
        "from orchestrator.build_pool import ParallelBuilder\n"
        "if __name__ == '__main__':\n"
        "    b = ParallelBuilder(recon(), 1, 1, 0)\n"
        "    b.start()\n"
        "    print(b.worker_pids()[0], flush=True)\n"
        "    time.sleep(60)\n"
    )
    (tmp_path / "parent.py").write_text(script)
    tests_dir = str(Path(__file__).resolve().parents[1])
    p = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), tests_dir], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(p.stdout.readline())
    finally:
        p.kill()  # no cleanup in the parent: the worker must notice on its own
        p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists()
