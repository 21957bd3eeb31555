"""Run wiring: the run directory, the student's reconstructor, and the producer (teacher rollouts
or replay) that fills OUTPUT_DIR/samples; used by the `distill` commands (cli.py). This is the top
layer: it may import orchestrator and trainer."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from distill.core.config import RunConfig, redacted_dict, to_toml
from distill.core.redact import redact_url
from distill.core.student import TokenizerError
from distill.built_with import check_built_with
from distill.run_lock import lock_run_dir


def prepare_run_dir(cfg: RunConfig, command: str, roles: tuple[str, ...], recon=None) -> Path:
    """Make output_dir, take its locks for `roles` (distill/run_lock.py: a second process in the same
    role is refused before it writes anything), check that the samples a producer (given its `recon`)
    adds are built like those published before (distill/built_with.py), then save the redacted config.
    `run` and `rollout` first read their prompts (or each replay input's first record): a bad prompt file
    is refused before the run dir is written or a local teacher started, as `run --dry-run` does."""
    if command in ("run", "rollout"):
        from distill.dry_run import check_source  # (dry_run imports this module)

        check_source(cfg)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir, roles, command)
    if recon is not None:
        check_built_with(cfg, run_dir, recon)
    from distill.core.contract import atomic_write_text

    atomic_write_text(run_dir / "config.toml", to_toml(redacted_dict(cfg)))
    return run_dir


def make_reconstructor(cfg: RunConfig, tok: Any = None, prompts_only: bool = False):
    """The student's Reconstructor (its tokenizer: `tok`, else student_tokenizer's); a config error, one
    line naming the fix, where the student's files or the reconstruction settings cannot be used.
    `prompts_only`: for prompts alone (on-policy mode), where the note on the cost of turns does not apply."""
    from orchestrator.thinking_syntax import ThinkingSyntaxError
    from orchestrator.reconstruct import Reconstructor
    from orchestrator.reconstruction.next_role import stop_warning
    from orchestrator.template_kwargs import check_template_kwargs
    from distill.core.student import student_tokenizer

    tok = tok if tok is not None else student_tokenizer(cfg.student)  # with student.chat_template when set
    check_template_kwargs(tok, cfg.orchestrator.reconstruction.chat_template_kwargs)  # a ConfigError
    try:
        recon = Reconstructor(tok, cfg.orchestrator.reconstruction, cfg.orchestrator.reconstruction.max_seq_len)
    except ThinkingSyntaxError as e:  # think_tags' <think> tags for a student that writes another syntax
        raise e.config_error() from None
    except ValueError as e:  # no template, no fast tokenizer, no end-of-turn token: the student's files
        where = (
            f"student.chat_template = {cfg.student.chat_template!r}"
            if cfg.student.chat_template
            else f"the student's tokenizer ({cfg.student.tokenizer or cfg.student.path})"
        )
        raise TokenizerError(f"{where} cannot be used to build samples: {e}") from None
    if warning := stop_warning(tok, recon.next_role, _model_dir(cfg.student.path)):
        print(warning, file=sys.stderr)  # GLM-4: each turn is trained through the next message's role token
    t = recon.chat_template
    # docs/reconstruction.md, "Prefix renders", "Watched renders"
    if not t.append_only and t.tracked is None and not prompts_only:
        print(
            f"note: the student's chat template is not append-only ({t.why_not_append_only}) and its renders "
            f"cannot be watched ({t.why_not_tracked}); reconstruction renders every turn's history, so its cost "
            "grows with the square of the turns",
            file=sys.stderr,
        )
    return recon


def _model_dir(path: str) -> Path | None:
    """The student's model folder as given (a folder, or a cached hub id's snapshot), without converting
    anything; None for a builtin or GGUF student (their tokenizer folder is the model's)."""
    from distill.core.student import hub_snapshot

    folder = Path(path).expanduser()
    return folder if folder.is_dir() else hub_snapshot(path)


def produce(
    cfg: RunConfig,
    run_dir: Path,
    progress: bool = True,
    on_error: str | None = None,
    inputs: list[str] | None = None,
    with_trainer: bool = False,
    stop_event: threading.Event | None = None,
    recon=None,
) -> dict:
    """Fill run_dir/samples from the configured source (teacher or replay).

    with_trainer: a trainer consumes concurrently, so replay too waits for it
    (backpressure, orchestrator.max_ahead); the teacher scheduler always does.
    """
    recon = recon or make_reconstructor(cfg)
    if cfg.orchestrator.source.type == "replay":
        from orchestrator.replay import replay

        return replay(
            cfg,
            run_dir,
            recon,
            inputs=inputs or None,
            on_error=on_error,
            progress=progress,
            max_ahead=cfg.orchestrator.max_ahead if with_trainer else None,
            stop_event=stop_event,
        )
    if cfg.orchestrator.batch.enabled:  # the teacher's answers through its Batch API (orchestrator/batch.py)
        from orchestrator.batch import batch_rollout

        return batch_rollout(cfg, run_dir, recon, progress=progress, stop_event=stop_event)
    from orchestrator.batch import check_no_open_batch
    from orchestrator.scheduler import rollout

    check_no_open_batch(run_dir)  # a batch still open would answer (and be paid for) the same pairs

    # Without a concurrent trainer nothing consumes samples: no backpressure then.
    kw = dict(progress=progress, backpressure=with_trainer, stop_event=stop_event)
    if cfg.orchestrator.local_teacher.enabled:
        from orchestrator.local_teacher import local_teacher

        print(
            f"starting the local teacher (llama.cpp) on {redact_url(cfg.orchestrator.rollout_model.base_url)} ...",
            flush=True,
        )
        with local_teacher(cfg, run_dir / "logs"):
            return rollout(cfg, run_dir, recon, **kw)
    return rollout(cfg, run_dir, recon, **kw)


def print_locations(run_dir: Path, summary: dict | None, samples: Path | None = None) -> None:
    """Where the run's outputs are (`samples`: the folder trained on, when not run_dir/samples)."""
    samples = samples or run_dir / "samples"
    print("\ndistill: done.")
    print(f"  samples:     {samples}")
    if (run_dir / "recording.jsonl").exists():
        print(f"  recording:   {run_dir / 'recording.jsonl'}")
    if (run_dir / "rejects.jsonl").exists():
        print(f"  rejects:     {run_dir / 'rejects.jsonl'}")
    if (run_dir / "metrics.jsonl").exists():
        print(f"  metrics:     {run_dir / 'metrics.jsonl'}")
        print(f"  report:      distill report {run_dir}")
    if summary and summary.get("checkpoint"):
        print(f"  checkpoint:  {summary['checkpoint']}  (AutoModelForCausalLM.from_pretrained(...) loads it)")
    print(f"  inspect:     distill inspect {run_dir if samples == run_dir / 'samples' else samples}")
