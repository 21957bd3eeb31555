"""`distill` command line: run | rollout | train | replay | tokenize | inspect | probe | report.

Config-taking commands accept `--key.path VALUE` overrides after the config path,
e.g. `distill run examples/quickstart.toml --trainer.optim.lr 1e-5`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import threading
from pathlib import Path

from .config import ConfigError, RunConfig, as_replay_source, load_config
from .cli_help import COMMAND_HELP, USAGE, command_help
from .cli_errors import print_error, user_message
from .built_with import check_train_vocab
from .preflight import preflight
from .dry_run import dry_run
from .cli_export import cmd_export
from .cli_inspect import cmd_inspect
from .cli_tokenize import cmd_tokenize
from .cli_score import add_probe_args, cmd_score, prepare_scoring_run, probe_key, probe_scorer, start_scoring_stage
from .run import make_reconstructor, prepare_run_dir, print_locations, produce
from .run_lock import check_free, release_all
from .on_policy import cmd_run_on_policy
from .core.student import resolve_student
from .core.redact import mask_known, redact_url, remember_config
from .epochs import epochs_note, waiting_note
from .score import SCORED


class UsageError(Exception):
    """A command-line mistake (exit 2, as a ConfigError or an argparse usage error)."""


# The overrides stay hand-parsed rather than pydantic-settings' CLI source (cli_parse_args /
# CliSettingsSource): it accepts either kebab or snake flag names, not both (--trainer.max-steps and
# --trainer.max_steps both work here); it reads tables as JSON, not TOML inline tables ({top_k = 5});
# it cannot set one key inside a free-form table (--orchestrator.sampling.extra_body.top_k 5); and its
# argparse would own the command's flags, positional inputs and exit codes (an unknown key would be an
# argparse usage error, not a ConfigError naming the nearest valid key). Env vars still go through
# pydantic-settings (DISTILL_...), with precedence TOML < env < command line.
def _split_known(argv: list[str], flags: dict[str, bool]) -> tuple[dict, list[str]]:
    """Pull our own flags (name -> takes_value) out of argv; the rest are overrides."""
    found: dict[str, object] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name in flags:
            if flags[name]:
                if "=" in a:
                    found[name] = a.split("=", 1)[1]
                    i += 1
                else:
                    if i + 1 >= len(argv):
                        raise UsageError(f"{name} needs a value")
                    found[name] = argv[i + 1]
                    i += 2
            else:
                if "=" in a:  # --dry-run=no would be read as on
                    raise UsageError(f"{name} takes no value (got {a}); leave it out to turn it off")
                found[name] = True
                i += 1
        else:
            if a.startswith("--") and "." not in name and name[2:].replace("-", "_") not in RunConfig.model_fields:
                tops = [f"--{k}" for k in RunConfig.model_fields]  # --seed, --output_dir: overrides too
                near = difflib.get_close_matches(name, list(flags), n=1) or difflib.get_close_matches(
                    "--" + name[2:].replace("-", "_"), tops, n=1
                )
                known = f"did you mean {near[0]}?" if near else "its options: " + (", ".join(flags) or "none")
                raise UsageError(
                    f"unknown option {name} ({known}); config overrides are --section.key VALUE "
                    "(e.g. --trainer.max_steps 10)"
                )
            rest.append(a)
            i += 1
    return found, rest


def _load(argv: list[str], flags: dict[str, bool], command: str = "") -> tuple[RunConfig, dict, list[str]]:
    """The config (path first, then overrides), our flags, and the positional arguments after the
    path: only `replay` takes any (its inputs; `command` names the others, which refuse them)."""
    if not argv or argv[0].startswith("-"):
        raise UsageError(
            "expected a TOML config path first (e.g. examples/quickstart.toml); see distill COMMAND --help"
        )
    path, rest = argv[0], argv[1:]
    found, rest = _split_known(rest, flags)
    positional = []
    while rest and not rest[0].startswith("--"):
        positional.append(rest.pop(0))
    if positional and command:
        raise UsageError(
            f"{command} takes one config path; unexpected argument(s): {' '.join(positional)}. "
            "Fix: input files are replayed by `distill replay CONFIG FILE...` (or set orchestrator.source.path); "
            "config overrides are --section.key VALUE"
        )
    cfg = load_config(path, rest)
    return cfg, found, positional


def _busy_first(cfg, command: str) -> tuple[str, ...]:
    """The run-dir roles `command` takes, once no other process works in the run dir in one of them: a
    command is told that before any other check (distill/run_lock.py); ranks other than 0 take no lock."""
    roles = {"rollout": ("sample",), "replay": ("sample",), "train": ("train",), "score": ("score",)}.get(command)
    if roles is None:  # run: every stage it runs in this process
        roles = ("sample", "score", "train") if cfg.scorer or cfg.on_policy.enabled else ("sample", "train")
    if int(os.environ.get("RANK", "0")) == 0:
        check_free(Path(cfg.output_dir), roles)
    return roles


def cmd_run(argv: list[str]) -> int:
    cfg, flags, _ = _load(argv, {"--dry-run": False, "--no-resume": False}, "run")
    roles = _busy_first(cfg, "run")  # (takes nothing: --dry-run too is told a busy run dir first)
    if flags.get("--dry-run"):
        return dry_run(cfg, bool(flags.get("--no-resume")))
    preflight(cfg, "run", no_resume=bool(flags.get("--no-resume")))
    if cfg.on_policy.enabled:  # the student samples, the [scorer] grades: distill/on_policy.py
        return cmd_run_on_policy(cfg, bool(flags.get("--no-resume")))
    resolve_student(cfg.student.path)  # convert the builtin student once, before threads start
    # transformers' lazy imports are not thread-safe: import them before the producer thread starts
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    recon = make_reconstructor(cfg)  # before the run dir is written: a template it cannot use is one line
    run_dir = prepare_run_dir(cfg, "run", roles, recon)
    tok = prepare_scoring_run(cfg, run_dir) if cfg.scorer else None  # the self-tests refuse a bad scorer
    # A DONE left by an earlier run must not end the trainer's stream before the producer
    # (which may first spend minutes starting a local teacher) has reopened the samples.
    (run_dir / "samples" / "DONE").unlink(missing_ok=True)
    result: dict = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def producer() -> None:
        try:
            result["orchestrator"] = produce(cfg, run_dir, with_trainer=True, stop_event=stop, recon=recon)
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    t = threading.Thread(target=producer, name="orchestrator", daemon=True)
    t.start()
    from trainer.train import train

    stage = start_scoring_stage(cfg, run_dir, t, stop, errors, tok) if cfg.scorer else t
    try:  # with a [scorer] the trainer reads OUTPUT_DIR/scored, which the scoring stage fills
        summary = train(
            cfg,
            run_dir,
            run_dir / SCORED if cfg.scorer else None,
            resume=not flags.get("--no-resume"),
            producer_alive=lambda: stage.is_alive() or not errors,
        )
    except BaseException:
        if errors:
            raise errors[0] from None
        raise
    finally:
        # The trainer has all it wants (or failed): stop sampling; answers already in
        # flight are still recorded, and the local teacher is shut down by the producer.
        stop.set()
        t.join(timeout=cfg.orchestrator.rollout_model.timeout + 60)
        stage.join(timeout=cfg.scorer.timeout + 60 if cfg.scorer else 0)
    if errors:
        raise errors[0]
    if "orchestrator" in result:
        _print_producer_summary(cfg, result["orchestrator"])
    _print_summary("trainer", summary)
    print_locations(run_dir, summary)
    return 0


# The fields of each side's summary dict worth a line on the terminal (all of it is in the run dir).
_SUMMARY_KEYS = {
    "replay": ("records", "conversations", "samples", "filtered", "rejected", "bad_records"),
    "trainer": ("steps", "samples_seen", "final_loss", "eval_loss", "resumed_from"),
}


def _print_summary(name: str, summary: dict) -> None:
    keys = _SUMMARY_KEYS.get(name) or tuple(summary)
    shown = {k: summary[k] for k in keys if summary.get(k) not in (None, {}, [])}
    print(f"{name}: " + "  ".join(f"{k}={json.dumps(v, default=str)}" for k, v in shown.items()))


def _print_producer_summary(cfg: RunConfig, summary: dict) -> None:
    # The teacher scheduler prints its own summary line when it ends; replay does not.
    if cfg.orchestrator.source.type == "replay":
        _print_summary("replay", summary)
        if notes := summary.get("reconstruction_notes"):
            from orchestrator.sink import format_notes

            print("replay: " + format_notes(notes).removeprefix("; "))


def cmd_rollout(argv: list[str]) -> int:
    cfg, flags, _ = _load(argv, {"--batch": False}, "rollout")
    cfg.orchestrator.batch.enabled |= bool(flags.get("--batch"))  # the Batch API (orchestrator/batch.py)
    roles = _busy_first(cfg, "rollout")
    preflight(cfg, "rollout")
    recon = make_reconstructor(cfg)
    run_dir = prepare_run_dir(cfg, "rollout", roles, recon)
    summary = produce(cfg, run_dir, recon=recon)
    _print_producer_summary(cfg, summary)
    print_locations(run_dir, None)
    return 0


def cmd_replay(argv: list[str]) -> int:
    cfg, flags, inputs = _load(argv, {"--on-error": True})
    if cfg.orchestrator.source.type != "replay" and not inputs:
        raise SystemExit(
            'distill replay: the config\'s orchestrator.source.type is not "replay"; '
            "set it, or pass input files after the config path"
        )
    if flags.get("--on-error") not in (None, "skip", "fail"):
        raise UsageError(
            f"replay --on-error must be skip or fail, got {flags['--on-error']!r}. Fix: --on-error skip (list bad "
            "records in replay_rejects.jsonl and go on) or --on-error fail (stop at the first, naming file:line)"
        )
    if cfg.orchestrator.source.type != "replay":
        cfg.orchestrator.source = as_replay_source(cfg.orchestrator.source)
    if not inputs and not cfg.orchestrator.source.path:
        raise SystemExit(
            "distill replay: orchestrator.source.path is not set and no input file was given. "
            'Fix: set orchestrator.source.path = "FILE.jsonl" in the config, or pass input files: '
            "distill replay CONFIG INPUT..."
        )
    roles = _busy_first(cfg, "replay")
    preflight(cfg, "replay", inputs=inputs)
    recon = make_reconstructor(cfg)
    run_dir = prepare_run_dir(cfg, "replay", roles, recon)
    summary = produce(cfg, run_dir, on_error=flags.get("--on-error"), inputs=inputs, recon=recon)
    _print_summary("replay", summary)
    o = summary["outcomes"]  # every record ends in exactly one of these (docs/replay.md, "Counting")
    from orchestrator.sink import format_notes

    extra = (
        f" (+{summary['extra_conversations']} more choice(s) of Batch API lines)"
        if summary["extra_conversations"]
        else ""
    )
    print(
        f"replay: {summary['records']} records{extra} = {o['trained']} trained + {o['filtered']} filtered + "
        f"{o['rejected']} rejected + {o['bad_records']} bad"
        + (f" + {o['not_reconstructed']} not reconstructed" if o["not_reconstructed"] else "")
        + (
            f"; bad records by reason: {json.dumps(summary['bad_record_reasons'])} (listed in "
            f"{summary['replay_rejects']})"
            if o["bad_records"]
            else ""
        )
        + format_notes(summary.get("reconstruction_notes") or {})
    )
    print_locations(run_dir, None)
    return 0


def cmd_train(argv: list[str]) -> int:
    cfg, flags, _ = _load(argv, {"--resume": False, "--samples": True}, "train")
    samples = Path(flags["--samples"]) if flags.get("--samples") else None
    if samples is not None and (samples / "samples").is_dir() and not any(samples.glob("shard-*.jsonl")):
        raise UsageError(  # a run dir given for its samples folder: waiting on it would wait forever
            f"--samples {samples} holds no shard, but {samples / 'samples'} is a samples folder. "
            f"Fix: --samples {samples / 'samples'}"
        )
    rank = int(os.environ.get("RANK", "0"))
    roles = _busy_first(cfg, "train")
    preflight(cfg, "train", resume=bool(flags.get("--resume")), samples=flags.get("--samples"))
    check_train_vocab(cfg, samples or Path(cfg.output_dir) / "samples")  # built for this student's ids
    from trainer.data import check_consumed_writable  # imports torch, as train does
    from trainer.train import train

    check_consumed_writable(samples or Path(cfg.output_dir) / "samples")  # before any note or file
    run_dir = prepare_run_dir(cfg, "train", roles) if rank == 0 else Path(cfg.output_dir)

    note = epochs_note(cfg.trainer, samples or run_dir / "samples") if rank == 0 else None
    if note:
        print(note, file=sys.stderr)
    wait = waiting_note(samples or run_dir / "samples", cfg.trainer.sample_timeout) if rank == 0 else None
    if wait:
        print(wait, file=sys.stderr)
    summary = train(cfg, run_dir, samples, resume=bool(flags.get("--resume")))
    if rank == 0:
        _print_summary("trainer", summary)
        print_locations(run_dir, summary, samples)
    return 0


def cmd_probe(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="distill probe")
    p.add_argument("url", help="base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name (default: the first the endpoint lists)")
    p.add_argument("--api-key-var", help="NAME of the env var holding the API key")
    p.add_argument("--timeout", type=float, default=30)
    add_probe_args(p)
    a = p.parse_args(argv)
    key = probe_key(a.url, a.api_key_var)  # exit 2 on a bad URL or a key pasted as the variable name
    if a.scorer:
        return probe_scorer(a.url, a.model, a.scorer, a.api_key_var, a.tokenizer)
    from orchestrator.probe import format_probe, probe, probe_verdict

    rows = probe(a.url, a.model, api_key=key, timeout=a.timeout)
    print(mask_known(format_probe(rows)))  # the server's words, without an echoed key
    why = probe_verdict(rows, a.url)
    if why is not None:  # a run could not use this endpoint: say why, exit non-zero
        print(f"distill: the endpoint {redact_url(a.url)} cannot be used: {mask_known(why)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="distill report",
        description="Plot a run's training curves (and eval, teacher panels) to RUN_DIR/report.png, write a "
        "self-contained report.html beside it, and print a text summary.",
    )
    p.add_argument("run_dir", help="the run's output_dir (holds metrics.jsonl)")
    a = p.parse_args(argv)
    from trainer.report import write_report

    png, text = write_report(Path(a.run_dir))
    print(text)
    print(f"plot: {png}\npage: {png.with_suffix('.html')}  (self-contained HTML: the plots and summary tables)")
    return 0


COMMANDS = {
    "run": cmd_run,
    "rollout": cmd_rollout,
    "replay": cmd_replay,
    "train": cmd_train,
    "score": cmd_score,
    "tokenize": cmd_tokenize,
    "inspect": cmd_inspect,
    "probe": cmd_probe,
    "report": cmd_report,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        near = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"distill: unknown command {argv[0]!r}{hint}\n\n{USAGE}", file=sys.stderr, end="")
        return 2
    if argv[0] in COMMAND_HELP and ("-h" in argv[1:] or "--help" in argv[1:]):
        print(command_help(argv[0]), end="")
        return 0
    from distill.core.verbosity import quiet_third_party

    quiet_third_party()  # third-party progress bars / logging off unless DISTILL_VERBOSE=1
    remember_config(argv)  # a key pasted into an argument (a path) is masked in every message below
    try:
        return cmd(argv[1:])
    except (ConfigError, UsageError) as e:
        print_error(mask_known(str(e)))  # once per node under torchrun
        return 2
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        print_error(mask_known(message))  # no echoed key (redact.py)
        return 1
    except KeyboardInterrupt:
        print("distill: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        release_all()  # the run dir's locks (distill/run_lock.py), for a later command in this process


if __name__ == "__main__":
    sys.exit(main())
