"""`distill inspect PATH`: one sample (or all, as HTML) with its trained tokens highlighted.

PATH is a run dir, its samples folder, a shard file, or the output of `distill tokenize` (whose lines carry
no sample id: each is named after its input line, and the lines that are rejections are counted and passed
over)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import load_config


def _is_tokenize_output(path: Path) -> bool:
    """Whether a file's first line is one of `distill tokenize`'s (a "line" number, no sample id)."""
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and "line" in row and "sample_id" not in row


def _tokenized_lines(path: Path) -> list:
    """The samples of a `distill tokenize` output, each named "line<N>" after its input line."""
    from distill.core.contract import Sample
    from distill.core.jsonl import read_jsonl

    samples, rejected = [], 0
    for ln in read_jsonl(path, torn=False):
        if ln.blank:
            continue
        row = ln.value if ln.ok else None
        if not isinstance(row, dict) or "error" in row:
            rejected += 1
            continue
        samples.append(Sample.from_dict({"sample_id": f"line{row.get('line')}", **row}, f"{path}:{ln.number}"))
    if rejected:
        print(f"{path}: {rejected} line(s) are rejections or unreadable, not samples; passed over", file=sys.stderr)
    return samples


def _find_samples(path: Path) -> list:
    from distill.core.contract import iter_samples, read_shard

    if path.is_file():
        return _tokenized_lines(path) if _is_tokenize_output(path) else read_shard(path)
    if (path / "samples").is_dir():
        path = path / "samples"
    return list(iter_samples(path))


def cmd_inspect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="distill inspect")
    p.add_argument("path", help="run dir, samples dir or shard file")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the run's student, or the builtin one)")
    p.add_argument("--index", type=int, default=0, help="which sample (default 0)")
    p.add_argument("--id", help="sample id to show instead of --index")
    p.add_argument("--html", help="also write an HTML page of all samples here")
    p.add_argument("--chat-template", help="Jinja file replacing the tokenizer's template (default: the run's)")
    p.add_argument("--no-color", action="store_true")
    a = p.parse_args(argv)
    from orchestrator.sample_view import render_html, render_terminal
    from distill.core.config import Student
    from distill.core.student import student_tokenizer

    path = Path(a.path)
    samples = _find_samples(path)
    if not samples:
        why = "does not exist" if not path.exists() else "holds no sample"
        raise SystemExit(f"distill inspect: {path} {why}. Fix: pass a run dir, its samples folder or a shard file")
    spec = Student(tokenizer=a.tokenizer) if a.tokenizer else None
    if spec is None:  # the run's student, or the builtin one
        cfg_file = (path if path.is_dir() else path.parent.parent) / "config.toml"
        spec = load_config(cfg_file).student if cfg_file.is_file() else Student()
    spec.chat_template = a.chat_template or spec.chat_template
    tok = student_tokenizer(spec)
    if a.id:
        chosen = [s for s in samples if s.sample_id == a.id]
        if not chosen:
            raise SystemExit(f"distill inspect: no sample with id {a.id!r}")
        sample = chosen[0]
    else:
        if not 0 <= a.index < len(samples):
            raise SystemExit(f"distill inspect: --index {a.index} out of range (0..{len(samples) - 1})")
        sample = samples[a.index]
    color = not a.no_color and sys.stdout.isatty()
    print(render_terminal(sample, tok, color=color))
    if a.html:
        Path(a.html).write_text(render_html(samples, tok, title=str(path)), encoding="utf-8")
        print(f"wrote {a.html} ({len(samples)} samples)")
    return 0
