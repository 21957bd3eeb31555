"""End to end against the real llama.cpp server on loopback.

`distill run` starts llama-cpp-python's server with the SmolLM2 GGUF, samples
reasoning-gym prompts, rebuilds tokens with the real SmolLM2 tokenizer, trains a
tiny random-weight student (same tokenizer) on a fixed batch, and writes a
checkpoint that transformers loads.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.helpers import free_port, read_jsonl

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by scripts/setup.sh")


def run_config(tmp_path: Path, student_dir: Path, port: int, steps: int = 6) -> Path:
    cfg = tmp_path / "e2e.toml"
    cfg.write_text(f"""
output_dir = "{tmp_path / "run"}"

[student]
path = "{student_dir}"

[orchestrator]
concurrency = 2
samples_per_shard = 4

[orchestrator.rollout_model]
base_url = "http://127.0.0.1:{port}/v1"
model = "smollm2-teacher"
timeout = 120

[orchestrator.local_teacher]
enabled = true
port = {port}
n_ctx = 1024
startup_timeout = 180

[orchestrator.sampling]
n = 2
temperature = 0.8
max_tokens = 40
seed = 1

[orchestrator.source]
type = "reasoning_gym"
dataset = "gsm_symbolic"
size = 3
seed = 0

[orchestrator.reconstruction]
truncated = "keep"

[trainer]
max_steps = {steps}
samples_per_step = 6
seq_len = 512

[trainer.optim]
lr = 3e-3
schedule = "constant"
""")
    return cfg


@pytest.mark.slow
def test_distill_run_against_real_llama_cpp_server(tmp_path, tiny_student_dir, smol_tokenizer):
    port = free_port()
    cfg = run_config(tmp_path, tiny_student_dir, port)
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "run", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"

    # every (prompt, sample) was answered once and recorded
    rec = read_jsonl(run / "recording.jsonl")
    assert sorted((r["prompt_id"], r["sample_index"]) for r in rec) == sorted(
        {(r["prompt_id"], i) for r in rec for i in range(2)}
    )
    assert len(rec) == 6
    assert all(r["endpoint"].startswith(f"http://127.0.0.1:{port}") for r in rec)

    # samples: the trained tokens decode to exactly what the teacher said (+ <|im_end|> unless truncated)
    from distill.core.contract import iter_samples

    samples = list(iter_samples(run / "samples"))
    assert len(samples) == 6
    by_id = {f"{r['prompt_id']}/{r['sample_index']}": r for r in rec}
    for s in samples:
        r = by_id[s.sample_id]
        trained = [t for t, m in zip(s.completion_ids, s.completion_mask) if m]
        expect = r["response"]["content"] + ("" if r["finish_reason"] == "length" else "<|im_end|>")
        assert smol_tokenizer.decode(trained) == expect
        # the prompt is the student's own rendering of the prompt messages, tokenised alone
        prompt_text = smol_tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
        assert smol_tokenizer.decode(s.prompt_ids) == prompt_text

    # training: every step logged, and the loss falls on the fixed batch (6 samples = 1 step, repeated)
    metrics = [m for m in read_jsonl(run / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < losses[0] * 0.9, losses
    assert all(m["trained_tokens"] == sum(s.num_trained for s in samples) for m in metrics)

    # the checkpoint is an HF folder that transformers loads, with tokenizer and resolved config
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert ckpts, list(run.iterdir())
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    model = AutoModelForCausalLM.from_pretrained(ckpts[-1])
    tok = AutoTokenizer.from_pretrained(ckpts[-1])
    assert tok.chat_template == smol_tokenizer.chat_template
    ids = torch.tensor([samples[0].prompt_ids + samples[0].completion_ids])
    with torch.no_grad():
        out = model(ids)
    assert out.logits.shape == (1, ids.shape[1], len(smol_tokenizer))
    assert (ckpts[-1] / "distill_config.toml").is_file()
    assert "checkpoint" in proc.stdout and str(ckpts[-1]) in proc.stdout

    # the server was stopped with the run: nothing listens on its port any more
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.slow
def test_local_teacher_refuses_a_busy_port(tmp_path):
    from distill.core.config import load_config
    from orchestrator.local_teacher import LocalTeacherError, local_teacher

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = load_config(
            None,
            [
                "--orchestrator.local_teacher.enabled",
                "true",
                "--orchestrator.local_teacher.port",
                str(port),
                "--orchestrator.rollout_model.base_url",
                f"http://127.0.0.1:{port}/v1",
            ],
        )
        with pytest.raises(LocalTeacherError, match=f"port {port}"):
            with local_teacher(cfg, tmp_path):
                pass


# A project-owned fake for a fault no real server here shows on demand: a teacher server that
# answers /v1/models, then dies of SIGILL at its first request (as a llama.cpp build with
# instructions the CPU does not run does at its first decode).
_DIES_OF_SIGILL = """
import http.server, json, os, signal, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": sys.argv[2]}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        os.kill(os.getpid(), signal.SIGILL)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def dying_teacher(tmp_path, monkeypatch):
    """(config, orchestrator.local_teacher) with its server command replaced by _DIES_OF_SIGILL on a free port."""
    from distill.core.config import load_config
    from orchestrator import local_teacher as lt_mod

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(
        None,
        [
            "--orchestrator.local_teacher.enabled", "true",
            "--orchestrator.local_teacher.port", str(port),
            "--orchestrator.rollout_model.base_url", f"http://127.0.0.1:{port}/v1",
        ],
    )  # fmt: skip
    script = tmp_path / "dies.py"
    script.write_text(_DIES_OF_SIGILL)
    monkeypatch.setattr(
        lt_mod, "server_command", lambda gguf, host, port, alias, *a: [sys.executable, str(script), str(port), alias]
    )
    return cfg, lt_mod


def test_local_teacher_that_dies_is_named_with_the_fix(tmp_path, dying_teacher):
    """The run's own error (connection refused) becomes one message naming the dead server, the
    signal, the fix and the server's log, instead of a connection error that hides the cause."""
    import urllib.request

    cfg, lt_mod = dying_teacher
    with pytest.raises(lt_mod.LocalTeacherError) as got:
        with lt_mod.local_teacher(cfg, tmp_path / "logs") as urls:
            try:
                urllib.request.urlopen(urllib.request.Request(urls[0] + "/chat/completions", data=b"{}"), timeout=10)
            except OSError:
                pass
            time.sleep(0.5)  # the process is gone once its signal is delivered
            raise ConnectionError("All connection attempts failed")
    msg = str(got.value)
    assert "illegal instruction (SIGILL)" in msg and "GGML_NATIVE=OFF" in msg, msg
    assert str(tmp_path / "logs" / "teacher_server_0.log") in msg
    assert "All connection attempts failed" in msg  # what the run saw, kept


@pytest.mark.parametrize(
    "code,expected",
    [
        ("os.kill(os.getpid(), signal.SIGILL)", ["illegal instruction (SIGILL)", "GGML_NATIVE=OFF"]),
        ("print('bad model file'); sys.exit(3)", ["exited with code 3", "bad model file"]),
    ],
)
def test_local_teacher_that_exits_while_starting_is_named(tmp_path, monkeypatch, dying_teacher, code, expected):
    """A server that ends before it is ready: how it ended (the SIGILL fix too) and its log."""
    cfg, lt_mod = dying_teacher
    script = tmp_path / "dies_at_start.py"
    script.write_text(f"import os, signal, sys\n{code}\n")
    monkeypatch.setattr(lt_mod, "server_command", lambda *a: [sys.executable, str(script)])
    with pytest.raises(lt_mod.LocalTeacherError) as got:
        with lt_mod.local_teacher(cfg, tmp_path / "logs"):
            pass
    msg = str(got.value)
    assert "while starting" in msg and str(tmp_path / "logs" / "teacher_server_0.log") in msg, msg
    assert all(e in msg for e in expected), msg


def test_local_teacher_run_errors_pass_through_while_the_server_lives(tmp_path, dying_teacher):
    cfg, lt_mod = dying_teacher
    with pytest.raises(ValueError, match="not the server's fault"):
        with lt_mod.local_teacher(cfg, tmp_path / "logs"):
            raise ValueError("not the server's fault")
