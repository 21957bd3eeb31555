"""Start and stop a local teacher server (llama.cpp via llama-cpp-python) on loopback.

Used when the config has `[orchestrator.local_teacher] enabled = true`: `distill`
starts the server(s) before sampling and stops them afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from distill.core.config.schema import BUILTIN_TEACHER_GGUF
from distill.core.student import resolve_gguf
from orchestrator.http_client import ResponseTooLarge, read_capped


class LocalTeacherError(RuntimeError):
    pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ready(base_url: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
            data = json.loads(read_capped(r))
    except (urllib.error.URLError, OSError, ValueError, ResponseTooLarge):
        return False
    return any(m.get("id") == model for m in data.get("data", []))


def server_command(
    gguf: Path, host: str, port: int, alias: str, n_ctx: int, n_threads: int | None, extra_args: list[str]
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]
    if n_threads:
        cmd += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    return cmd + list(extra_args)


@contextlib.contextmanager
def local_teacher(cfg, log_dir: Path) -> Iterator[list[str]]:
    """Start `cfg.orchestrator.local_teacher` servers; yield their base URLs; stop them."""
    lt = cfg.orchestrator.local_teacher
    alias = cfg.orchestrator.rollout_model.model
    if lt.host not in ("127.0.0.1", "localhost", "::1"):
        raise LocalTeacherError(
            f"orchestrator.local_teacher.host = {lt.host!r}: the local teacher listens on loopback only"
        )
    try:  # a config mistake first, whatever is installed
        gguf = resolve_gguf(lt.model_path)
    except (ValueError, FileNotFoundError) as e:
        raise LocalTeacherError(
            f"orchestrator.local_teacher.model_path: {e}. Fix: set it to {BUILTIN_TEACHER_GGUF!r} (the default) "
            "or to a .gguf file of the teacher"
        ) from None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise LocalTeacherError(
            "the local teacher needs llama-cpp-python. Fix: pip install 'llama-cpp-python[server]==0.3.36' "
            "(or run scripts/setup.sh)"
        ) from None
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen, str]] = []
    try:
        for i in range(lt.replicas):
            port = lt.port + i
            url = f"http://{lt.host}:{port}/v1"
            if not _port_free(lt.host, port):
                raise LocalTeacherError(
                    f"port {port} on {lt.host} is already in use. Fix: stop what uses it or set "
                    "orchestrator.local_teacher.port (and rollout_model.base_url) to a free port"
                )
            log = open(_log_path(log_dir, i), "ab")
            cmd = server_command(gguf, lt.host, port, alias, lt.n_ctx, lt.n_threads, lt.extra_args)
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            log.close()
            procs.append((proc, url))
        _wait_ready(procs, alias, lt.startup_timeout, log_dir)
        try:
            yield [url for _, url in procs]
        except Exception as e:  # the run failed: a server that died is the cause to name
            died = _died(procs, log_dir)
            if died:
                raise LocalTeacherError(f"{died}\n(the run then stopped with: {e})") from None
            raise
    finally:
        for proc, _ in procs:
            _stop(proc)


def _wait_ready(procs: list[tuple[subprocess.Popen, str]], alias: str, timeout: float, log_dir: Path) -> None:
    """Until every server lists `alias`; LocalTeacherError if one exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    for i, (proc, url) in enumerate(procs):
        log = _log_path(log_dir, i)
        while not _ready(url, alias):
            if proc.poll() is not None:
                raise LocalTeacherError(
                    f"the llama.cpp teacher server for {url} {_exit_reason(proc.returncode)} while starting. "
                    f"Its output ({log}):\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise LocalTeacherError(f"the llama.cpp server for {url} was not ready after {timeout:.0f}s; see {log}")
            time.sleep(0.25)


def _died(procs: list[tuple[subprocess.Popen, str]], log_dir: Path) -> str:
    """A message for the first server that exited during the run ("" if all run)."""
    for i, (proc, url) in enumerate(procs):
        code = proc.poll()
        if code is None:
            continue
        log = _log_path(log_dir, i)
        return (
            f"the llama.cpp teacher server for {url} {_exit_reason(code)}. Answers already received are "
            f"recorded: rerunning the same command resumes. Its output ({log}):\n{_tail(log)}"
        )
    return ""


def _log_path(log_dir: Path, i: int) -> Path:
    """Where server i's output goes (RUN_DIR/logs/teacher_server_<i>.log)."""
    return log_dir / f"teacher_server_{i}.log"


def _exit_reason(code: int) -> str:
    """How a server process ended, from its return code, with the fix where there is one."""
    if code == -signal.SIGILL:
        return (
            "died of an illegal instruction (SIGILL): llama-cpp-python was compiled for instructions this CPU "
            "does not run (a -march=native build made on another machine, or on a VM that reports AMX "
            "without enabling it). Fix: rebuild it portably: rm -rf ~/.cache/distill/wheels/llama-cpp-python-* "
            "and rerun scripts/setup.sh (it builds with -DGGML_NATIVE=OFF -DGGML_AVX2=ON; CMAKE_ARGS overrides)"
        )
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
