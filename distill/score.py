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
    from distill.core.student import student_tokenizer as load

    return load(cfg.student)  # with student.chat_template when set


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


class _DirScoring:
    """One pass of `score_dir`: the output writer, the scorer, the followed input, the summary."""

    def __init__(self, cfg: RunConfig, run_dir: Path, in_dir: Path, out_dir: Path, tok: Any, stop_event, together):
        from orchestrator.score_store import SCORES_FILE
        from orchestrator.scoring import Scorer, scorer_api_key

        assert cfg.scorer is not None
        self.in_dir, self.out_dir, self.together = in_dir, out_dir, together
        self.writer = ShardWriter(out_dir, cfg.orchestrator.samples_per_shard)
        self.done_ids = self.writer.existing_ids()
        self.summary: dict = {"input": 0, "scored": 0, "already_scored": 0, "requests": 0, "reused_answers": 0}
        self.summary.update(stop_reason=None, done=False)
        self.scorer = Scorer(cfg.scorer, scorer_api_key(cfg.scorer), tok, run_dir / SCORES_FILE, stop_event)
        self.shard_pos = 0
        self.input_ids: set[str] = set()

    def read_new(self, bar: _Progress) -> tuple[list, list]:
        """The samples of input shards not read yet, and those of them not scored yet (each id once)."""
        shards = list_shards(self.in_dir)
        new = [s for p in shards[self.shard_pos :] for s in read_shard(p)]
        self.shard_pos = len(shards)
        todo, seen = [], set()
        for s in new:
            self.input_ids.add(s.sample_id)
            if s.sample_id in self.done_ids:
                self.summary["already_scored"] += 1
                bar.update(1)
            elif s.sample_id not in seen:
                seen.add(s.sample_id)
                todo.append(s)
        self.summary["input"] += len(new)
        return new, todo

    async def score(self, todo: list, bar: _Progress) -> bool:
        """Scores and writes `todo` in chunks; False once a budget or stop signal ended scoring."""
        for i in range(0, len(todo), CHUNK):
            res = await self.scorer.score(todo[i : i + CHUNK], bar.update)
            self.summary["requests"] += res.sent
            self.summary["reused_answers"] += res.reused
            for s in res.scored:
                self.writer.add(s)
                self.done_ids.add(s.sample_id)
            self.writer.flush()
            self.summary["scored"] += len(res.scored)
            if res.stop_reason:
                self.summary["stop_reason"] = res.stop_reason
                if self.together:  # like a rollout's budget stop: the trainer ends on what is scored
                    self.writer.close()
                return False
            _mirror_consumed(self.out_dir, self.in_dir, self.together)
        return True

    def input_finished(self) -> bool:
        """The input is DONE and read to its end; then the output is marked DONE if all of it is scored."""
        if not (is_done(self.in_dir) and len(list_shards(self.in_dir)) == self.shard_pos):
            return False
        if self.input_ids <= self.done_ids:
            self.writer.close()
            self.summary["done"] = True
        return True


async def _score_dir(
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
    from orchestrator.scoring import ScoreError

    run = _DirScoring(cfg, run_dir, in_dir, out_dir, tok, stop_event, together)
    bar = _Progress(progress, 0, together)
    dead = waiting = False
    try:
        while True:
            new, todo = run.read_new(bar)
            if not await run.score(todo, bar):
                return run.summary
            if new:
                continue
            if run.input_finished() or not follow or (stop_event is not None and stop_event.is_set()):
                return run.summary
            if producer_alive is not None and not producer_alive():
                if not dead:  # one more look: it may have written its last shard and DONE just now
                    dead = True
                    continue
                raise ScoreError(
                    f"the sample producer stopped before finishing {in_dir} (no DONE marker); see its error above"
                )
            if not together and not waiting:
                waiting = True
                print(
                    f"scorer: waiting for more samples in {in_dir} (no DONE marker yet). Ctrl-C stops (a rerun "
                    "resumes); --no-follow scores only what is there",
                    file=sys.stderr,
                )
            _mirror_consumed(out_dir, in_dir, together)
            await asyncio.sleep(0.2)
    finally:
        bar.close()
        await run.scorer.aclose()


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
    if s["stop_reason"] == "stopped":
        line += "\nscorer: stopped with the run (the trainer has what it needs, or the run was interrupted)"
    elif s["stop_reason"]:
        line += f"\nscorer: stopped at {s['stop_reason']} ([scorer.budget]); rerun the same command to resume"
    elif not s["done"]:
        line += f"\nscorer: the input has no DONE marker yet; {out_dir} is not marked DONE. Rerun to continue"
    return line
