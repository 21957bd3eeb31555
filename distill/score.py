"""`distill score` and the scoring stage of `distill run`: a samples directory -> a scored one.

    check_scorer(cfg, tok)                                  # the three self-tests; ScoreCheckError refuses
    summary = score_dir(cfg, run_dir, in_dir, out_dir)      # OUTPUT_DIR/samples -> OUTPUT_DIR/scored

Input shards are read in order as they appear (followed until the input's DONE); every sample not yet
in the output is scored (orchestrator/scoring.py, answers recorded in OUTPUT_DIR/scores.jsonl) and
written with the contract's ShardWriter; DONE is written once the input is DONE and every sample of it
is scored. A rerun skips the samples already in the output and never re-sends a recorded answer. With a
concurrent trainer (`distill run`), the trainer's CONSUMED count in the output is mirrored into the
input folder, so the producer's backpressure (orchestrator.max_ahead) follows the trainer.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.core.config import RunConfig
from distill.core.contract import ShardWriter, is_done, list_shards, read_consumed, read_shard, write_consumed

SCORED = "scored"
CHUNK = 256  # samples handed to the scorer at once (its requests run concurrently)


def student_tokenizer(cfg: RunConfig) -> Any:
    from distill.core.student import load_tokenizer, resolve_student

    return load_tokenizer(cfg.student.tokenizer or resolve_student(cfg.student.path, with_model=False))


def check_scorer(cfg: RunConfig, tok: Any, stop_at_failure: bool = True) -> list:
    """The scorer's self-tests (orchestrator/score_check.py): rows, or ScoreCheckError on the first failure."""
    from orchestrator.score_check import run_self_tests
    from orchestrator.scoring import make_transport, scorer_api_key

    sc = cfg.scorer
    assert sc is not None

    async def go() -> list:
        t = make_transport(sc, scorer_api_key(sc))
        try:
            return await run_self_tests(sc, t, tok, stop_at_failure)
        finally:
            await t.close()

    return asyncio.run(go())


class _Progress:
    def __init__(self, enabled: bool, initial: int, together: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            from distill.core.verbosity import bar_position

            self.bar = tqdm(
                initial=initial, unit="sample", desc="scorer", file=sys.stderr, **bar_position("teacher", together)
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            from distill.core.verbosity import close_bar

            close_bar(self.bar)


async def _score_dir(  # size: one loop over the followed input (read, score, write, mirror, wait)
    cfg: RunConfig,
    run_dir: Path,
    in_dir: Path,
    out_dir: Path,
    tok: Any,
    follow: bool,
    producer_alive: Callable[[], bool] | None,
    stop_event: threading.Event | None,
    progress: bool,
    together: bool,
) -> dict:
    from orchestrator.score_store import SCORES_FILE
    from orchestrator.scoring import Scorer, ScoreError, scorer_api_key

    sc = cfg.scorer
    assert sc is not None
    writer = ShardWriter(out_dir, cfg.orchestrator.samples_per_shard)
    done_ids = writer.existing_ids()
    summary: dict = {"input": 0, "scored": 0, "already_scored": 0, "requests": 0, "reused_answers": 0}
    summary.update(stop_reason=None, done=False)
    scorer = Scorer(sc, scorer_api_key(sc), tok, run_dir / SCORES_FILE, stop_event)
    bar = _Progress(progress, 0, together)
    shard_pos, input_ids = 0, set()
    try:
        while True:
            shards = list_shards(in_dir)
            new = [s for p in shards[shard_pos:] for s in read_shard(p)]
            shard_pos = len(shards)
            todo, seen = [], set()
            for s in new:
                input_ids.add(s.sample_id)
                if s.sample_id in done_ids:
                    summary["already_scored"] += 1
                    bar.update(1)
                elif s.sample_id not in seen:
                    seen.add(s.sample_id)
                    todo.append(s)
            summary["input"] += len(new)
            for i in range(0, len(todo), CHUNK):
                res = await scorer.score(todo[i : i + CHUNK], bar.update)
                summary["requests"] += res.sent
                summary["reused_answers"] += res.reused
                for s in res.scored:
                    writer.add(s)
                    done_ids.add(s.sample_id)
                writer.flush()
                summary["scored"] += len(res.scored)
                if res.stop_reason:
                    summary["stop_reason"] = res.stop_reason
                    if together:  # like a rollout's budget stop: the trainer ends on what is scored
                        writer.close()
                    return summary
                _mirror_consumed(out_dir, in_dir, together)
            if new:
                continue
            if is_done(in_dir) and len(list_shards(in_dir)) == shard_pos:
                if input_ids <= done_ids:
                    writer.close()
                    summary["done"] = True
                return summary
            if not follow or (stop_event is not None and stop_event.is_set()):
                return summary
            if producer_alive is not None and not producer_alive():
                raise ScoreError(
                    f"the sample producer stopped before finishing {in_dir} (no DONE marker); see its error above"
                )
            _mirror_consumed(out_dir, in_dir, together)
            await asyncio.sleep(0.2)
    finally:
        bar.close()
        await scorer.aclose()


def _mirror_consumed(out_dir: Path, in_dir: Path, together: bool) -> None:
    """The trainer's CONSUMED count (in the scored folder) -> the samples folder, for the producer's backpressure."""
    if together:
        n = read_consumed(out_dir)
        if n != read_consumed(in_dir):
            write_consumed(in_dir, n)


def score_dir(
    cfg: RunConfig,
    run_dir: Path,
    in_dir: Path,
    out_dir: Path,
    *,
    tok: Any = None,
    follow: bool = True,
    producer_alive: Callable[[], bool] | None = None,
    stop_event: threading.Event | None = None,
    progress: bool = True,
    together: bool = False,
) -> dict:
    """Score every sample of in_dir into out_dir (module docstring); the summary dict."""
    tok = tok if tok is not None else student_tokenizer(cfg)
    return asyncio.run(
        _score_dir(cfg, run_dir, in_dir, out_dir, tok, follow, producer_alive, stop_event, progress, together)
    )


def format_score_summary(s: dict, out_dir: Path) -> str:
    line = (
        f"scorer: {s['input']} input samples: {s['scored']} scored now + {s['already_scored']} already scored; "
        f"{s['requests']} requests sent, {s['reused_answers']} answers reused from scores.jsonl"
    )
    if s["stop_reason"]:
        line += f"\nscorer: stopped at {s['stop_reason']} ([scorer.budget]); rerun the same command to resume"
    elif not s["done"]:
        line += f"\nscorer: the input has no DONE marker yet; {out_dir} is not marked DONE. Rerun to continue"
    return line
