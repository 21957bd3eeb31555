"""`distill tokenize --tokenizer DIR IN.jsonl -o OUT.jsonl`: every conversation of a JSONL file as token ids.

The command line's own mistakes are refused here, before anything is read: an output that is the input
itself (the same file by another name: a symlink, a relative path, a hard link) would be overwritten
with token ids. The reading (and an input it cannot read: missing, a folder, Parquet) is
orchestrator/reconstruction/tokenize_jsonl.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import load_config
from .core.verbosity import quoted


def _same_file(a: str, b: str) -> bool:
    """Whether paths a and b name one existing file (through links or relative paths)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be looked at): not the same file
        return False


def check_output(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse (exit 2, a usage error) an output path that would destroy the input or cannot be a file."""
    if _same_file(a.input, a.output):
        p.error(
            f"the output {a.output} is the input file {a.input} (the same file): tokenize would overwrite "
            "its input with token ids. Fix: pass another path to -o, e.g. -o tokens.jsonl"
        )
    if os.path.isdir(a.output):
        p.error(f"the output {a.output} is a folder. Fix: pass a file path to -o, e.g. -o {a.output}/tokens.jsonl")
    if a.chat_template and not os.path.isfile(a.chat_template):  # (else named as the config's student.chat_template)
        p.error(f"--chat-template {a.chat_template} is not a file. Fix: pass the path of a Jinja template file")


def cmd_tokenize(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="distill tokenize")
    p.add_argument(
        "--tokenizer",
        required=True,
        help="the student's tokenizer: an HF folder with a chat template, a cached hub id, or a .gguf file",
    )
    p.add_argument(
        "input",
        help="JSONL with a 'messages' list per line (optional 'tools'), or lines of the other record formats "
        "replay reads: distill recordings, ShareGPT, prompt/completion",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="JSONL written: per input line, prompt_ids, completion_ids and completion_mask, or the rejection",
    )
    p.add_argument("--config", help="run config whose [orchestrator.reconstruction] policies to use")
    p.add_argument("--chat-template", help="Jinja file replacing the tokenizer's template (default: the config's)")
    p.add_argument(
        "--batch-input",
        help="for an OpenAI Batch API output file: the batch's input file (the .jsonl uploaded), which holds the "
        "request messages (default: the config's orchestrator.replay.batch_input)",
    )
    a = p.parse_args(argv)
    check_output(p, a)
    from orchestrator.reconstruct import tokenize_file

    cfg = load_config(a.config) if a.config else None
    template = a.chat_template or (cfg.student.chat_template if cfg else None)
    rc, workers = (cfg.orchestrator.reconstruction, cfg.orchestrator.reconstruct_workers) if cfg else (None, 0)
    batch_input = a.batch_input or (cfg.orchestrator.replay.batch_input if cfg else None)
    summary = tokenize_file(a.tokenizer, a.input, a.output, rc, template, workers, batch_input)
    print(json.dumps(summary, default=str))
    if summary["samples"]:
        return 0
    if not summary["lines"]:  # a run that made nothing fails, as replay does
        print(
            f"distill: {a.input} has no conversation line (it is empty, or holds only blank lines). "
            "Fix: give a JSONL file with a 'messages' list per line",
            file=sys.stderr,
        )
    else:
        print(
            f"distill: no sample from {summary['lines']} line(s): {summary['rejected']} rejected "
            f"{json.dumps(summary['by_reason'])}; each line's reason is in {a.output}{_first_error(a.output)}. Fix: "
            + (
                summary.get("hint")
                or "see the reasons in docs/reconstruction.md (Rejection reasons) and docs/troubleshooting.md"
            ),
            file=sys.stderr,
        )
    return 1


def _first_error(output: str) -> str:
    """`; the first: ...` quoting the output's first line (every line is a rejection here), shortened: the
    counts by reason alone do not say what to fix (the reason's detail names the role, the key, the switch)."""
    try:
        with open(output, encoding="utf-8", errors="replace") as f:
            error = str(json.loads(f.readline()).get("error", ""))
    except (OSError, ValueError, AttributeError):
        return ""
    return f"; the first: {quoted(error)}" if error else ""
