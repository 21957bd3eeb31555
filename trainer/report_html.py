"""RUN_DIR/report.html of `distill report`: one self-contained page (no external file or script): the
report PNG embedded as base64, then summary tables (training, eval, teacher)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from distill.core.contract import atomic_write_text

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1600px}img{max-width:100%}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left}th{background:#f4f4f4}"
)


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_html(run_dir: Path, png: Path, rows: list[dict], teacher, notes: tuple[str, ...] | list[str] = ()) -> Path:
    """Write run_dir/report.html next to `png`, with `notes` (what was skipped reading metrics.jsonl); its path."""
    from trainer.report import eval_keys, summary_text
    from trainer.report_teacher import teacher_rows

    parts = [f"<h1>distill report: {html.escape(run_dir.name)}</h1>"]
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    parts.append(f'<img alt="report plots" src="data:image/png;base64,{data}">')
    if rows:
        parts.append("<h2>Training</h2>")
        parts.append(_table(["", ""], [ln.split(": ", 1) for ln in summary_text(rows).splitlines()]))
        keys = eval_keys(rows)
        evals = [r for r in rows if any(r.get(k) is not None for k in keys)]
        if evals:
            parts.append("<h2>Eval</h2>")
            parts.append(_table(["step", *keys], [[r["step"], *(_num(r.get(k, "")) for k in keys)] for r in evals]))
    if notes:
        parts.append("<h2>Skipped</h2>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if teacher is not None:
        parts.append("<h2>Teacher</h2>")
        parts.append(_table(["", ""], [list(x) for x in teacher_rows(teacher)]))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>distill report: {html.escape(run_dir.name)}"
        f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
