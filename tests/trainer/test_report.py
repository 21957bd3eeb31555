"""`distill report` on a real run dir: a rollout against the project's FaultServer (faults, so retries; long
prompts cut at max_tokens, so rejections; prices, so a cost), resumed once, then the tiny student trained on
its samples with a held-out eval. The report's teacher panel and tables must say what the orchestrator's own
files say, and report.html must stand alone (the PNG embedded)."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter

from distill.cli import main
from distill.core.config import load_config
from orchestrator.reconstruct import Reconstructor
from orchestrator.scheduler import rollout
from support.fault_server import FaultServer, Faults
from support.helpers import read_jsonl
from support.rollout_helpers import make_cfg
from trainer.report import write_report
from trainer.report_teacher import read_teacher
from trainer.train import train


def _prompts(path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            tail = " and then some more words" * 3 if i % 4 == 3 else ""  # answered past max_tokens: rejected
            f.write(json.dumps({"id": f"p{i}", "prompt": f"What is {i} plus {i}?{tail}"}) + "\n")


def test_report_has_the_teacher_panel_eval_curves_and_a_self_contained_html(tmp_path, smol_tokenizer, tiny_student_dir):
    _prompts(tmp_path / "p.jsonl", 24)
    run = tmp_path / "run"
    orch = dict(
        sampling={"n": 1, "max_tokens": 14},
        concurrency=4,
        budget={"cost_per_1k_prompt": 0.5, "cost_per_1k_completion": 2.0},
    )
    with FaultServer(Faults(rate_429=0.15, rate_500=0.15, retry_after=0.01), seed=3) as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            budget={**orch["budget"], "max_requests": 12},
            **{k: v for k, v in orch.items() if k != "budget"},
        )
        recon = Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)
        first = rollout(cfg, run, recon, progress=False, backpressure=False)  # stopped by its budget
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", **orch)
        final = rollout(cfg, run, recon, progress=False, backpressure=False)  # resumed to the end
    assert first["stop_reason"] == "budget:max_requests" and final["stop_reason"] == "completed"
    lines = read_jsonl(run / "orchestrator_metrics.jsonl")
    rejects = Counter(r["reason"] for r in read_jsonl(run / "rejects.jsonl"))
    assert rejects and final["cost"] > 0 and first["retries"] | final["retries"]

    over = {
        "student": {"path": str(tiny_student_dir)},
        "trainer": {
            "max_steps": 4,
            "samples_per_step": 4,
            "seq_len": 128,
            "device": "cpu",
            "eval_samples": 2,
            "eval_every": 2,
        },
    }
    train(load_config(None, over), run, progress=False)

    t = read_teacher(run)
    assert len(t.lines) == len(lines) and [s["stop_reason"] for s in t.segments] == [
        "budget:max_requests",
        "completed",
    ]
    assert t.summed("retries") == Counter(first["retries"]) + Counter(final["retries"])
    assert t.rejects == rejects

    png, text = write_report(run)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"requests (attempts, retries included): {final['requests']}" in text
    assert f"cost (estimate, configured prices): {final['cost']:.4f}" in text
    for reason, count in rejects.items():
        assert f"{reason}={count}" in text
    for reason, count in t.summed("retries").items():
        assert f"{reason}={count}" in text
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in metrics if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]

    page = (run / "report.html").read_text()
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png.read_bytes()  # the PNG itself, inline
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external file, script or stylesheet
    assert "<h2>Eval</h2>" in page and "<h2>Teacher</h2>" in page
    for r in evals:
        assert f"<td>{r['step']}</td><td>{r['eval_loss']:.4g}</td>" in page
    assert f"<td>{final['requests']}</td>" in page

    # the CLI prints the summary and both paths
    assert main(["report", str(run)]) == 0


def test_report_of_a_rollout_only_run_has_the_teacher_panel_alone(tmp_path, smol_tokenizer):
    _prompts(tmp_path / "p.jsonl", 6)
    with FaultServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl")
        rollout(cfg, tmp_path / "run", Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction), progress=False)
    png, text = write_report(tmp_path / "run")
    assert text.startswith("no training step logged (teacher side only)") and "samples published: 6" in text
    assert "<h2>Training</h2>" not in (tmp_path / "run" / "report.html").read_text()
