"""`distill score`, `distill probe URL --scorer TYPE`, and the scoring stage `distill run` starts with a `[scorer]`."""

from __future__ import annotations

import asyncio
import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from .config import RunConfig, load_config
from .core.redact import redact_url
from .preflight import preflight
from .run import prepare_run_dir
from .run_lock import lock_run_dir
from .score import SCORED, check_scorer, format_score_summary, score_dir, student_tokenizer


def _report_self_tests(rows: list) -> None:
    for name, result, detail in rows:
        print(f"scorer self-test {name}: {result} ({detail})", file=sys.stderr)


def cmd_score(argv: list[str]) -> int:
    from .cli import _busy_first, _split_known

    if not argv or argv[0].startswith("-"):
        raise SystemExit("distill score: expected a TOML config path first; see distill score --help")
    found, rest = _split_known(argv[1:], {"--samples": True, "--out": True, "--no-follow": False})
    cfg = load_config(argv[0], rest)
    roles = _busy_first(cfg, "score")
    preflight(cfg, "score", samples=found.get("--samples"))
    run_dir = prepare_run_dir(cfg, "score", roles)
    in_dir = Path(found["--samples"]) if found.get("--samples") else run_dir / "samples"
    out_dir = Path(found["--out"]) if found.get("--out") else run_dir / SCORED
    if out_dir.resolve() != (run_dir / SCORED).resolve():  # another run dir's scorer may write there too
        out_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(out_dir, ("score",), "score", label="out")
    tok = student_tokenizer(cfg)
    _report_self_tests(check_scorer(cfg, tok))
    summary = score_dir(cfg, run_dir, in_dir, out_dir, tok=tok, follow=not found.get("--no-follow"))
    print(format_score_summary(summary, out_dir))
    print(f"  scored:      {out_dir}\n  scores:      {run_dir / 'scores.jsonl'}")
    return 0


def start_scoring_stage(
    cfg: RunConfig, run_dir: Path, producer: threading.Thread, stop: threading.Event, errors: list, tok: Any
) -> threading.Thread:
    """`distill run` with a `[scorer]`: a thread scoring OUTPUT_DIR/samples into OUTPUT_DIR/scored as they appear
    (the trainer reads the scored folder). Its failure lands in `errors`; a budget stop ends the sampling too."""

    def stage() -> None:
        try:
            s = score_dir(
                cfg,
                run_dir,
                run_dir / "samples",
                run_dir / SCORED,
                tok=tok,
                producer_alive=lambda: producer.is_alive(),
                stop_event=stop,
                together=True,
            )
            print(format_score_summary(s, run_dir / SCORED), flush=True)
            if s["stop_reason"] and s["stop_reason"] != "stopped":
                stop.set()  # no more sampling: nothing would score it
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    t = threading.Thread(target=stage, name="scorer", daemon=True)
    t.start()
    return t


def prepare_scoring_run(cfg: RunConfig, run_dir: Path) -> Any:
    """Before `distill run` starts its threads: the self-tests (refusing the run) and no stale DONE in scored/."""
    (run_dir / SCORED / "DONE").unlink(missing_ok=True)
    tok = student_tokenizer(cfg)
    _report_self_tests(check_scorer(cfg, tok))
    return tok


def probe_key(url: str, api_key_var: str | None) -> str | None:
    """`distill probe URL [--api-key-var NAME]`: the API key (None without --api-key-var), after the same
    checks as a config's base_url and api_key_var (ConfigError, exit 2: a bad URL, a key pasted as the
    variable name; neither echoes a credential)."""
    from .config import ConfigError
    from .core.config.checks import Problem
    from .core.config.url_checks import check_api_key_var, check_http_url

    problems = []
    try:
        check_http_url(url)
    except ValueError as e:
        problems.append(Problem("URL", str(e)))
    try:
        check_api_key_var(api_key_var, "MY_TEACHER_KEY", setting="pass --api-key-var ")
    except ValueError as e:
        problems.append(Problem("--api-key-var", str(e)))
    if problems:
        raise ConfigError("command line", problems)
    if not api_key_var:
        return None
    from distill.core.config import key_from_env

    return key_from_env(api_key_var, lambda fix: SystemExit(f"distill probe: --api-key-var {fix}"))


def probe_scorer(url: str, model: str | None, scorer_type: str, api_key_var: str | None, tokenizer: str | None) -> int:
    """`distill probe URL --scorer TYPE`: what scoring the endpoint supports and the three self-tests."""
    from distill.core.config.schema import Retry
    from distill.core.config.schema_score import SCORER_CONFIGS
    from distill.core.student import load_tokenizer, resolve_student
    from orchestrator.probe import format_probe
    from orchestrator.score_probe import probe_scoring

    sc = SCORER_CONFIGS[scorer_type](
        base_url=url, model=model or "teacher", api_key_var=api_key_var, retry=Retry(max_attempts=1), top_k=0
    )
    tok = load_tokenizer(tokenizer or resolve_student("builtin:smollm2-135m-instruct", with_model=False))
    rows = asyncio.run(probe_scoring(sc, tok))
    print(format_probe(rows))
    bad = [r for r in rows if r[1] in ("FAIL", "no", "error") and r[0] != "/tokenize"]
    if bad:
        print(
            f"distill: the endpoint {redact_url(url)} cannot be used as a {scorer_type} scorer: {bad[0][0]}: {bad[0][2]}",
            file=sys.stderr,
        )
        return 1
    return 0


def add_probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scorer", choices=["vllm", "sglang", "echo"], help="probe scoring support of this kind instead")
    p.add_argument("--tokenizer", help="student tokenizer folder for the scorer self-tests (default: the builtin one)")
