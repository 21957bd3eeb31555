"""Terminal output: third-party bars quiet unless DISTILL_VERBOSE=1, distill's two bars on their own
rows, and the rollout summary naming retries and rejections by reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.core.verbosity import bar_position, quiet_gguf_conversion, quoted
from support.fault_server import FaultServer, Faults, write_prompts

ROOT = Path(__file__).resolve().parents[2]

LOAD = """
import sys
from distill.core.verbosity import quiet_third_party
quiet_third_party()  # what the CLI does first
from transformers import LlamaConfig, LlamaForCausalLM, AutoModelForCausalLM
m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2))
m.save_pretrained(sys.argv[1], max_shard_size="20KB")  # several shards: shard writing and loading bars
AutoModelForCausalLM.from_pretrained(sys.argv[1])
"""


def _load(tmp_path: Path, name: str, **env) -> str:
    """stderr of saving and loading a sharded model after the CLI's quiet hook (no HF_*/DISTILL_* set)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_HUB_DISABLE", "HF_DATASETS_DISABLE", "TRANSFORMERS_VERBOSITY", "DISTILL_VERBOSE"))
    }
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / name).glob("model-*.safetensors"))) > 1
    return out.stderr


def test_third_party_bars_are_quiet_unless_verbose(tmp_path):
    assert "%|" in _load(tmp_path, "loud", DISTILL_VERBOSE="1")  # the bars exist, so their absence means something
    assert "%|" not in _load(tmp_path, "quiet")


def test_gguf_conversion_bar_is_off_unless_verbose(monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as g

    monkeypatch.delenv("DISTILL_VERBOSE", raising=False)
    with quiet_gguf_conversion():
        assert g.tqdm(range(3)).disable
    assert not g.tqdm(range(3), file=open(os.devnull, "w")).disable  # restored
    monkeypatch.setenv("DISTILL_VERBOSE", "1")
    with quiet_gguf_conversion():
        assert not g.tqdm(range(3), file=open(os.devnull, "w")).disable


def test_bars_of_distill_run_have_their_own_rows():
    train, teacher = bar_position("train", True, tty=True), bar_position("teacher", True, tty=True)
    assert train["position"] != teacher["position"]
    assert "position" not in bar_position("teacher", False, tty=True)  # alone (distill rollout): no blank row above it


def test_bars_into_a_log_file_are_never_moved_and_rarely_written():
    for together in (True, False):
        kw = bar_position("teacher", together, tty=False)
        assert "position" not in kw and kw["mininterval"] >= 10  # no cursor codes in logs, no line per update


BARS = """
import sys, threading, time
from tqdm import tqdm
from distill.core.verbosity import bar_position, close_bar
teacher_first = sys.argv[1] == "teacher_first"
stop = threading.Event()
def teacher():
    b = tqdm(total=20 if teacher_first else 10**6, desc="teacher", file=sys.stderr, **bar_position("teacher", True, tty=True))
    while b.n < b.total and not stop.is_set():
        time.sleep(0.02); b.update(1)
    close_bar(b)
    tqdm.write("orchestrator: stop=completed SUMMARY", file=sys.stderr)
t = threading.Thread(target=teacher); t.start()
time.sleep(0.1)
b = tqdm(total=40, desc="train", **bar_position("train", True, tty=True))
for _ in range(40):
    time.sleep(0.03); b.update(1); b.set_postfix(loss="1.0")
b.close(); stop.set(); t.join()
print("distill: done.")
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux to look at the terminal")
@pytest.mark.parametrize("order", ["teacher_first", "trainer_first"])
def test_teacher_and_trainer_bars_do_not_overwrite_each_other(tmp_path, order):
    script = tmp_path / "bars.py"
    script.write_text(BARS)
    session = f"distill-bars-{os.getpid()}-{order}"
    cmd = f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} {script} {order}; sleep 60"
    subprocess.run(["tmux", "new", "-d", "-s", session, "-x", "120", "-y", "30", cmd], check=True)
    try:
        deadline, screen = time.time() + 60, ""
        while time.time() < deadline and "distill: done." not in screen:
            time.sleep(0.3)
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session])
    lines = [x.rstrip() for x in screen.splitlines() if x.strip()]
    assert lines[-1] == "distill: done.", screen
    assert sum(x.startswith("train: 100%") for x in lines) == 1, screen  # one whole trainer bar
    assert sum("train:" in x for x in lines) == 1 and sum("teacher:" in x for x in lines) <= 1, screen
    assert "orchestrator: stop=completed SUMMARY" in lines, screen  # the summary line is whole
    assert all(x.count("%|") <= 1 for x in lines), screen  # no bar drawn over another


def test_rollout_summary_names_retries_and_rejections_by_reason(tmp_path, smol_tokenizer_dir):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 12)
    with FaultServer(Faults(rate_429=0.2, rate_500=0.3, retry_after=0.01), seed=7) as s:
        cfg = tmp_path / "r.toml"
        cfg.write_text(f"""
output_dir = "{tmp_path / "run"}"
[student]
path = "{smol_tokenizer_dir}"
[orchestrator]
concurrency = 2
max_failed_fraction = 1.0  # the injected faults fail some pairs for good; that is what the summary must show
[orchestrator.retry]
max_attempts = 2
initial_backoff = 0.001
max_backoff = 0.01
[orchestrator.rollout_model]
base_url = "{s.base_url}"
model = "fault-teacher"
api_key_var = "VERBOSITY_TEST_KEY"
[orchestrator.sampling]
n = 2
max_tokens = 24
[orchestrator.source]
type = "jsonl"
path = "{prompts}"
""")
        out = subprocess.run(
            [sys.executable, "-m", "distill", "rollout", str(cfg)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "VERBOSITY_TEST_KEY": "k"},
        )
    assert out.returncode == 0, out.stderr[-3000:]
    final = [json.loads(x) for x in (tmp_path / "run" / "orchestrator_metrics.jsonl").read_text().splitlines()][-1]
    assert final["retries"] and final["rejections"], "the faults should cause both"
    line = next(x for x in out.stderr.splitlines() if x.startswith("orchestrator: stop="))
    for reason, count in final["retries"].items():
        assert f"{reason}={count}" in line.split("retries: ")[1].split(";")[0]
    for reason, count in final["rejections"].items():
        assert f"{reason}={count}" in line.split("rejections: ")[1].split(";")[0]
    assert (
        f"pairs done={final['pairs_done']} (published {final['pairs_published']}, rejected {final['pairs_rejected']})"
    ) in line
    assert final["pairs_done"] == 24 == final["pairs_published"] + final["pairs_rejected"]


def test_a_quoted_detail_is_one_line_and_shortened():
    """Rejection details quoted inside one-line errors (replay, tokenize, rollout with no sample): a template's
    multi-line error becomes one line, and a long one ends in '...' at the limit."""
    assert quoted("template_error: line 1\n  raise 'x'\n\tend") == "template_error: line 1 raise 'x' end"
    assert quoted("a" * 400) == "a" * 400
    assert quoted("a" * 401) == "a" * 400 + "..."
    assert quoted("abc def", limit=3) == "abc..."
