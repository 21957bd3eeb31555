"""The REAL llama-cpp-python server on a free 127.0.0.1 port (never the default 8765), for slow tests.

    with llama_cpp_server() as base_url:        # "http://127.0.0.1:<port>/v1", model alias ALIAS
        ...

It serves the builtin SmolLM2 GGUF (`distill.core.student.resolve_gguf`) with the command distill's own
local teacher uses (`orchestrator.local_teacher.server_command`) and is stopped (its process only)
on exit. What its echo logprobs look like is recorded in tests/orchestrator/kinds/golden/llamacpp_echo.json:
shifted by one position (token i scored under the distribution of token i+1), top_logprobs keyed by
token string with the scored token added, the generated token of max_tokens=1 not listed, a prompt
list refused with a 500, and max_tokens=0 taken as "no limit".
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

from distill.core.student import resolve_gguf
from orchestrator.local_teacher import server_command
from support.helpers import free_port

ALIAS = "llamacpp-teacher"


@contextlib.contextmanager
def llama_cpp_server(n_ctx: int = 2048, timeout: float = 180.0, log_path: str | None = None) -> Iterator[str]:
    port = free_port()
    cmd = server_command(resolve_gguf("builtin:smollm2-135m-instruct"), "127.0.0.1", port, ALIAS, n_ctx, 2, [])
    log = open(log_path or os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} before answering: {cmd}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not answer within {timeout:.0f} s") from None
                time.sleep(0.5)
        yield base_url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only this server and its children
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
