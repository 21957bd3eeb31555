"""The student-server client's control calls (orchestrator/student_server.py) against a PROJECT-OWNED FAKE
that answers with the shapes read from vLLM 0.32's source (dev-mode /server_info, /tokenize,
/v1/load_lora_adapter, /v1/models): for what the real-server tests (tests/distill/test_student_server_vllm.py,
the LoRA refresh included) do not reach: a raw --logprobs-mode, a server with another tokenizer, an endpoint
that is off (404), an adapter listed at another folder."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from orchestrator.student_server import StudentServerError, VLLMStudentClient


class Fake:
    """State of the fake server: the answers it gives and the calls it got."""

    def __init__(self, tokens, mode="processed_logprobs", lora_runtime=True):
        self.tokens, self.mode, self.lora_runtime = tokens, mode, lora_runtime
        self.calls: list[tuple[str, str, dict | None]] = []
        self.adapters: dict[str, str] = {}


def serve(fake: Fake):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body, plain=False):
            data = body.encode() if plain else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "text/plain" if plain else "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            fake.calls.append(("GET", self.path, None))
            if self.path.startswith("/server_info") and fake.mode == "endless":
                return self._send(200, "x" * (2 << 20), plain=True)  # stands for a body without end
            if self.path.startswith("/server_info"):
                return self._send(200, {"vllm_config": {"model_config": {"logprobs_mode": fake.mode}}})
            if self.path == "/v1/models":
                cards = [{"id": "student", "root": "/models/student"}]
                cards += [{"id": k, "root": v, "parent": "student"} for k, v in fake.adapters.items()]
                return self._send(200, {"object": "list", "data": cards})
            self._send(404, {"detail": "Not Found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
            fake.calls.append(("POST", self.path, body))
            if self.path == "/tokenize":
                return self._send(200, {"tokens": fake.tokens, "count": len(fake.tokens), "max_model_len": 2048})
            if self.path == "/v1/load_lora_adapter" and fake.lora_runtime:
                fake.adapters[body["lora_name"]] = body["lora_path"]
                text = f"Success: LoRA adapter '{body['lora_name']}' added successfully."
                return self._send(200, text, plain=True)  # vLLM answers plain text here, not JSON
            self._send(404, {"detail": "Not Found"})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def make(smol_tokenizer):
    servers = []

    def _make(refresh="lora_adapter", **kw):
        from orchestrator.student_server import TOKENIZER_PROBE

        fake = Fake(smol_tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False), **kw)
        httpd = serve(fake)
        servers.append(httpd)
        cfg = SimpleNamespace(
            base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="student", timeout=10,
            refresh=refresh, lora_name="distill-student", concurrency=1,
        )  # fmt: skip
        return fake, VLLMStudentClient(cfg, None)

    yield _make
    for s in servers:
        s.shutdown()


def test_lora_refresh_loads_each_step_from_a_new_folder_in_place_and_confirms_it(make, tmp_path, smol_tokenizer):
    fake, client = make()
    client.check(smol_tokenizer, 0.7, 0.9)
    for step in (1, 2):
        client.refresh(tmp_path / f"step-{step:06d}", step)
    loads = [b for m, p, b in fake.calls if p == "/v1/load_lora_adapter"]
    assert loads == [
        {"lora_name": "distill-student", "lora_path": str((tmp_path / f"step-{s:06d}").resolve()), "load_inplace": True}
        for s in (1, 2)
    ]
    assert client.model == "distill-student"  # the requests name the adapter
    fake.adapters["distill-student"] = "/elsewhere"  # someone else loaded another adapter under that name
    with pytest.raises(StudentServerError, match="not at the run's last refresh"):
        client.confirm(2)


def test_raw_logprobs_are_refused_unless_temperature_and_top_p_are_1(make, smol_tokenizer):
    _, client = make(mode="raw_logprobs")
    client.check(smol_tokenizer, 1.0, 1.0)  # the raw distribution is the sampling one
    with pytest.raises(StudentServerError, match="--logprobs-mode processed_logprobs"):
        client.check(smol_tokenizer, 0.7, 1.0)


def test_another_tokenizer_is_refused(make, smol_tokenizer):
    fake, client = make()
    fake.tokens = fake.tokens[:-1] + [fake.tokens[-1] + 1]
    with pytest.raises(StudentServerError, match="tokenises a probe text differently"):
        client.check(smol_tokenizer, 1.0, 1.0)


def test_an_endpoint_that_is_off_names_the_server_flag(make, tmp_path):
    _, client = make(refresh="reload_weights")  # no dev mode: /collective_rpc is 404
    with pytest.raises(StudentServerError, match="VLLM_SERVER_DEV_MODE=1"):
        client.refresh(tmp_path, 1)
    _, lora = make(lora_runtime=False)
    with pytest.raises(StudentServerError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        lora.refresh(tmp_path, 1)


def test_a_control_answer_past_the_size_limit_is_refused_by_name(make, smol_tokenizer, monkeypatch):
    from orchestrator import http_client

    monkeypatch.setattr(http_client, "MAX_CONTROL_BYTES", 1 << 20)
    _, client = make(mode="endless")
    with pytest.raises(StudentServerError, match=r"GET /server_info.* passed 1 MiB and was cut off"):
        client.check(smol_tokenizer, 0.7, 1.0)  # below 1, the server's logprobs mode is asked
