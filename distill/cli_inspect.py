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
        where = f"{path}:{ln.number}"
        samples.append((Sample.from_dict({"sample_id": f"line{row.get('line')}", **row}, where), where))
    if rejected:
        print(f"{path}: {rejected} line(s) are rejections or unreadable, not samples; passed over", file=sys.stderr)
    return samples


def _shard_with_lines(path: Path) -> list:
    """(sample, "file:line") for each sample of a shard (read_shard checks every line first)."""
    from distill.core.contract import read_shard
    from distill.core.jsonl import read_jsonl

    samples = read_shard(path)
    numbers = [ln.number for ln in read_jsonl(path, 1 << 62, torn=False) if not ln.blank]
    return [(s, f"{path}:{n}") for s, n in zip(samples, numbers)]


def _find_samples(path: Path) -> list:
    """(sample, "file:line") for each sample under `path`."""
    from distill.core.contract import list_shards

    if path.is_file():
        return _tokenized_lines(path) if _is_tokenize_output(path) else _shard_with_lines(path)
    if (path / "samples").is_dir():
        path = path / "samples"
    return [pair for shard in list_shards(path) for pair in _shard_with_lines(shard)]


def _bad_field(sample, vocab: int) -> str | None:
    """A token id `sample` holds outside this tokenizer's 0..vocab-1, or None. (Reading a sample already
    refused what is no token id or no mask at all: Sample.from_dict, sample_fields.check_token_fields.)"""
    for name in ("prompt_ids", "completion_ids"):
        k, v = next(((k, v) for k, v in enumerate(getattr(sample, name)) if v >= vocab), (None, None))
        if k is not None:
            return (
                f"{name}[{k}] = {v!r} is not a token id of this tokenizer (integers 0..{vocab - 1}; "
                "if the samples were made with another tokenizer, pass it as --tokenizer)"
            )
    return None


def check_samples(pairs: list, tok) -> None:
    """Raise ShardError naming file:line and the field of the first sample `tok` cannot show."""
    from distill.core.contract import ShardError

    vocab = len(tok)
    for sample, where in pairs:
        why = _bad_field(sample, vocab)
        if why:
            raise ShardError(
                f"{where}: sample {sample.sample_id!r}: {why}. Fix: rebuild the samples (distill tokenize / "
                "distill replay): shards are written whole, so this line was edited or damaged"
            )


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
    pairs = _find_samples(path)
    samples = [s for s, _ in pairs]
    if not samples:
        why = "does not exist" if not path.exists() else "holds no sample"
        raise SystemExit(f"distill inspect: {path} {why}. Fix: pass a run dir, its samples folder or a shard file")
    spec = Student(tokenizer=a.tokenizer) if a.tokenizer else None
    if spec is None:  # the run's student, or the builtin one
        cfg_file = (path if path.is_dir() else path.parent.parent) / "config.toml"
        spec = load_config(cfg_file).student if cfg_file.is_file() else Student()
    spec.chat_template = a.chat_template or spec.chat_template
    tok = student_tokenizer(spec, needs_template=False)  # ids back to text: no template needed
    if a.id:
        chosen = [s for s in samples if s.sample_id == a.id]
        if not chosen:
            raise SystemExit(
                f"distill inspect: no sample with id {a.id!r} among the {len(samples)}. Fix: pass an id from the "
                "samples' sample_id field, or --index N"
            )
        sample = chosen[0]
    else:
        if not 0 <= a.index < len(samples):
            raise SystemExit(
                f"distill inspect: --index {a.index} out of range (0..{len(samples) - 1}). "
                f"Fix: pass --index from 0 to {len(samples) - 1}"
            )
        sample = samples[a.index]
    check_samples(pairs if a.html else [p for p in pairs if p[0] is sample], tok)
    color = not a.no_color and sys.stdout.isatty()
    print(render_terminal(sample, tok, color=color))
    if a.html:
        Path(a.html).write_text(render_html(samples, tok, title=str(path)), encoding="utf-8")
        print(f"wrote {a.html} ({len(samples)} samples)")
    return 0
