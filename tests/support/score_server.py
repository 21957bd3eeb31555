"""ScoreServer: a project-owned HTTP server answering scoring requests with EXACT logprobs of a real model.

SmolLM2-135M-Instruct runs in-process (tests/support/score_model.py, fp32), so every logprob it sends
is the model's own and a test can compare a kind's parsed answer with the same weights evaluated
directly. It speaks the shapes of the scoring kinds (bodies: tests/support/score_shapes.py):

    POST /generate          SGLang native (input_ids or text, single or batched; scoring and generation)
    POST /v1/completions    legacy OpenAI completions: echo + logprobs (text or ids, a prompt list ->
                            one choice per prompt), generation with logprobs, and vLLM's
                            `prompt_logprobs` on token-id prompts
    POST /tokenize          vLLM's / SGLang's {"prompt", "add_special_tokens"} -> {"tokens", "count", ...}
    GET  /v1/models         the model list (one model, `model`)

It reuses FaultServer's loop (127.0.0.1, a free port unless `port` is given, bounded by max_seconds).
Fault kinds (constructor arguments):

    fail_first=N            the first N POSTs get HTTP `fail_status` (500), then they are answered
    malformed=KIND          the answers of the first `malformed_requests` POSTs (default: all) are spoilt:
                              "not_json"  a truncated body
                              "missing"   the logprob field is gone (SGLang input_token_logprobs; echo
                                          choices[i].logprobs null; vLLM prompt_logprobs; /tokenize tokens)
                              "short"     one entry too few in that list
                              "nan"       a NaN logprob (JSON NaN) at position 1
                              "ids"       a wrong token at position 1 (SGLang/vLLM: the id; echo: the string)
                              "count"     one result (batch entry / choice) too few
                              "topk"      the top-k entry at position 1 is not a list/dict
    shift=1                 echo / prompt / input logprobs scored one position late, as llama-cpp-python's
                            server echoes them: token i under the distribution that predicts token i+1

`requests_seen` logs (path, body) of every POST. pytest fixtures (tests/conftest.py loads this module as a
plugin): `exact_model` (session, the shared ExactModel), `score_server` (session, no faults) and
`make_score_server` (a factory: make_score_server(**kwargs) -> a started ScoreServer, stopped after the test).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import score_shapes
from support.fault_server import FaultServer, _err
from support.score_model import ExactModel

MALFORMED = ("not_json", "missing", "short", "nan", "ids", "count", "topk")


class ScoreServer(FaultServer):
    """Context manager; `.base_url` ends in /v1 (vLLM/echo kinds), `.root` is the server root (SGLang)."""

    def __init__(
        self,
        model: ExactModel,
        *,
        model_name: str = "score-teacher",
        port: int = 0,
        fail_first: int = 0,
        fail_status: int = 500,
        malformed: str | None = None,
        malformed_requests: int = 1_000_000,
        shift: int = 0,
        max_seconds: float = 1800.0,
    ):
        if malformed is not None and malformed not in MALFORMED:
            raise ValueError(f"malformed={malformed!r}; one of {MALFORMED}")
        if shift not in (0, 1):
            raise ValueError("shift is 0 or 1")
        super().__init__(model=model_name, port=port, max_seconds=max_seconds, log_requests=False)
        self.exact = model
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.malformed = malformed
        self.malformed_requests = malformed_requests
        self.shift = shift
        self.posts = 0
        self.requests_seen: list[tuple[str, Any]] = []

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _dispatch(self, method, path, headers, body, writer) -> bool:
        path = path.split("?")[0].rstrip("/")
        routes = {
            "/generate": ("sglang", lambda r: score_shapes.sglang_generate(self.exact, r, self.shift)),
            "/v1/completions": ("completions", lambda r: score_shapes.completions(self.exact, r, self.shift)),
            "/tokenize": ("tokenize", lambda r: score_shapes.tokenize(self.exact, r)),
            "/v1/tokenize": ("tokenize", lambda r: score_shapes.tokenize(self.exact, r)),
        }
        if method == "GET" and path == "/v1/models":
            data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "distill-scoreserver"}]
            self._send(writer, 200, {"object": "list", "data": data})
        elif method == "POST" and path in routes:
            self._post(path, *routes[path], body, writer)
        else:
            self._send(writer, 404, _err(f"no route {method} {path}", "invalid_request_error"))
        await writer.drain()
        return True

    def _post(self, path: str, shape: str, answer, body: bytes, writer) -> None:
        self.posts += 1
        try:
            req = json.loads(body)
        except json.JSONDecodeError:
            self._send(writer, 400, _err("request body is not JSON", "invalid_request_error"))
            return
        self.requests_seen.append((path, req))
        if self.posts <= self.fail_first:
            self._send(writer, self.fail_status, _err("internal error (fault injection)", "server_error"))
            return
        if shape == "completions" and req.get("model") != self.model:
            self._send(writer, 404, _err(f"The model `{req.get('model')}` does not exist.", "NotFoundError"))
            return
        try:
            payload = answer(req)
        except score_shapes.BadRequest as e:
            self._send(writer, 400, _err(str(e), "BadRequestError"))
            return
        if self.malformed and self.posts - self.fail_first <= self.malformed_requests:
            if self.malformed == "not_json":
                self._send(writer, 200, None, raw=json.dumps(payload).encode()[:40])
                return
            spoil(payload, shape, self.malformed)
        self._send(writer, 200, payload, {"x-request-id": f"score-{self.posts}"})


def spoil(payload: Any, shape: str, kind: str) -> None:
    """Breaks `payload` (a body of `shape`: sglang, completions, tokenize) in place the way `kind` says."""
    if shape == "tokenize":
        if kind == "missing":
            del payload["tokens"]
        elif kind in ("short", "count"):
            payload["tokens"] = payload["tokens"][:-1]
        elif kind == "ids":
            payload["tokens"][0] += 1
        elif kind == "nan":
            payload["tokens"][0] = float("nan")
        return
    if shape == "sglang":
        items = payload if isinstance(payload, list) else [payload]
        if kind == "count":
            if isinstance(payload, list):
                payload.pop()
            else:
                del payload["meta_info"]
            return
        meta = items[0]["meta_info"]
        gen = bool(meta.get("output_token_logprobs"))  # a generation: spoil what it reads
        _spoil_triples(meta, "output_token_logprobs" if gen else "input_token_logprobs", kind)
        if kind == "topk" and not gen and meta.get("input_top_logprobs"):
            meta["input_top_logprobs"][1] = "bad"
        return
    choices = payload["choices"]
    if kind == "count":
        choices.pop()
        return
    c = choices[0]
    if c.get("prompt_logprobs") is not None:  # vLLM's shape
        pl = c["prompt_logprobs"]
        if kind == "missing":
            del c["prompt_logprobs"]
        elif kind == "short":
            pl.pop()
        elif kind == "nan":
            next(iter(pl[1].values()))["logprob"] = float("nan")
        elif kind == "ids":  # position 1 no longer holds the scored token's entry
            pl[1] = {str(int(t) + 100000): v for t, v in pl[1].items()}
        elif kind == "topk":
            pl[1] = "bad"
        return
    lp = c.get("logprobs")
    if kind == "missing":
        c["logprobs"] = None
        return
    if kind == "short":
        lp["token_logprobs"].pop()
    elif kind == "nan":
        lp["token_logprobs"][1] = float("nan")
    elif kind == "ids":
        lp["tokens"][1] = lp["tokens"][1] + "#"
    elif kind == "topk":
        lp["top_logprobs"][1] = ["bad"]


def _spoil_triples(meta: dict, key: str, kind: str) -> None:
    """Spoils a list of SGLang [logprob, id, text] triples."""
    if kind == "missing":
        del meta[key]
    elif kind == "short":
        meta[key].pop()
    elif kind == "nan":
        meta[key][1][0] = float("nan")
    elif kind == "ids":
        meta[key][1][1] += 1


# --- pytest fixtures (loaded through `pytest_plugins` in tests/conftest.py) ---------------------------


@pytest.fixture(scope="session")
def exact_model() -> ExactModel:
    """SmolLM2-135M-Instruct in fp32, loaded once per session (about 2 s from the cached HF folder)."""
    return ExactModel()


@pytest.fixture(scope="session")
def score_server(exact_model):
    """A fault-free ScoreServer shared by the session. It must outlive the whole run: the default
    max_seconds (30 min) stopped it in the middle of a CI run that took 35 min, and a later test
    got a connection error (bounded still, as every FaultServer: it runs in this process)."""
    with ScoreServer(exact_model, max_seconds=6 * 3600.0) as srv:
        yield srv


@pytest.fixture
def make_score_server(exact_model):
    """make_score_server(**ScoreServer kwargs) -> a started server with those faults, stopped after the test."""
    started: list[ScoreServer] = []

    def make(**kw) -> ScoreServer:
        srv = ScoreServer(exact_model, **kw).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
