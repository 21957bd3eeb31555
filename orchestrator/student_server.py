"""The student's own vLLM inference server (`on_policy.sampler = "server"`; docs/on_policy.md, "Student
inference server"): checks, weight refresh, and sampling.

    client = VLLMStudentClient(cfg.on_policy.student_server, api_key)
    client.check(tokenizer, temperature, top_p)   # same tokenizer; logprobs of the sampling policy
    client.refresh(folder, step)                  # load the weights saved in `folder`; confirmed, then
                                                  #   the server is tagged as serving step `step`
    client.sample(requests, step)                 # StudentSampleAnswers, after confirming the server still
                                                  #   serves step `step`

Refresh mechanisms (vLLM 0.32; read from its source, tested against the real server):

    reload_weights  (server started with VLLM_SERVER_DEV_MODE=1)
        POST {root}/collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": folder}}
             every worker reloads the model's weights in place from the safetensors in `folder`
        POST {root}/reset_prefix_cache     KV blocks computed with the old weights are not reused
        POST {root}/update_weight_version {"new_version": "distill-step-<step>"}
        confirmation before sampling: GET {root}/weight_info -> {"weight_version": "distill-step-<step>"}
    lora_adapter    (server started with --enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)
        POST {base_url}/load_lora_adapter {"lora_name": name, "lora_path": folder, "load_inplace": true}
             answered 200 with plain text "Success: LoRA adapter '<name>' added successfully." (not JSON)
             a new folder per step: vLLM does not invalidate prefix-cache blocks of an adapter reloaded
             from the same path
        confirmation before sampling: GET {base_url}/models lists `name` with root = the step's folder;
        the requests name the adapter as their model

A refused or failed control call raises StudentServerError with the server's answer and the fix.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from distill.core.redact import redact_url
from orchestrator.http_client import ResponseTooLarge, read_capped
from orchestrator.kinds.score_vllm import root_url
from orchestrator.kinds.student_vllm import StudentSampleAnswer, StudentSampleRequest, VLLMStudentSample
from orchestrator.limits import RetryPolicy
from orchestrator.transport import Transport

#: A text whose tokenisation the student and the server must agree on (spaces, digits, accents, emoji, code).
TOKENIZER_PROBE = "Hello, world! 12345 + 678 = ?  Ünïcödé façade — naïve 東京 😀\n\tdef f(x):\n        return x**2"


class StudentServerError(Exception):
    """The student server cannot be used or refused a refresh; the message names the key and the fix."""


def version_tag(step: int) -> str:
    return f"distill-step-{step}"


#: What vLLM 0.32 answers (HTTP 500) when it cannot load an adapter, and the fix (tested against the real server).
_LORA_FIXES = {
    "LoRA is not enabled": "start the student server with --enable-lora",
    "greater than max_lora_rank": "start the student server with --max-lora-rank at least trainer.lora.r "
    "(vLLM's default is 16), or lower trainer.lora.r",
}


def lora_fix(detail: str) -> str:
    """'. Fix: ...' for a failed /v1/load_lora_adapter whose answer `detail` names a known cause ('' if none)."""
    fixes = [fix for cause, fix in _LORA_FIXES.items() if cause in detail]
    return f". Fix: {fixes[0]}" if fixes else ""


class VLLMStudentClient:
    """One student vLLM server (module docstring)."""

    def __init__(self, cfg: Any, api_key: str | None):
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.root = root_url(self.base_url)
        self.api_key = api_key
        self.kind = VLLMStudentSample()
        self.loop = asyncio.new_event_loop()
        self.transport: Transport | None = None
        self.folder: Path | None = None  # the folder of the last refresh (lora_adapter's confirmation)
        self.lora_step: int | None = None  # and its step
        self.control_calls = 0

    @property
    def model(self) -> str:
        return self.cfg.lora_name if self.cfg.refresh == "lora_adapter" else self.cfg.model

    # --- control calls -----------------------------------------------------------------------------------

    def _call(self, method: str, url: str, body: dict | None = None, what: str = "", text: bool = False) -> Any:
        """The server's JSON answer (None if empty); with `text`, its answer as text (vLLM's
        /v1/load_lora_adapter answers 200 with a plain-text "Success: ..." body, not JSON)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        self.control_calls += 1
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout) as r:
                raw = read_capped(r)
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode(errors="replace")
            hint = {404: f" (404: the endpoint is off; {what})" if what else ""}.get(e.code, "")
            raise StudentServerError(
                f"the student server ({redact_url(self.root)}) answered {method} {url[len(self.root) :]} with HTTP "
                f"{e.code}{hint}: {detail}"
            ) from None
        except ResponseTooLarge as e:
            raise StudentServerError(
                f"the student server ({redact_url(self.root)}) answered {method} {url[len(self.root) :]} with {e}. "
                "Fix: point on_policy.student_server.base_url at a vLLM server"
            ) from None
        except OSError as e:
            raise StudentServerError(
                f"the student server ({redact_url(self.root)}) is unreachable for {method} {url[len(self.root) :]}: {e}. "
                "Fix: start it, or correct on_policy.student_server.base_url"
            ) from None
        if text:
            return raw.decode(errors="replace")
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise StudentServerError(
                f"the student server ({redact_url(self.root)}) answered {method} {url[len(self.root) :]} with something that "
                f"is not JSON: {raw[:200].decode(errors='replace')!r}. Fix: point on_policy.student_server.base_url "
                "at a vLLM server"
            ) from None

    def check(self, tokenizer: Any, temperature: float, top_p: float) -> None:
        """Before the first sample: the server tokenises as the student does, and its logprobs are the
        sampling policy's (`--logprobs-mode processed_logprobs`, or temperature = top_p = 1)."""
        got = self._call(
            "POST", self.root + "/tokenize", {"model": self.cfg.model, "prompt": TOKENIZER_PROBE,
                                              "add_special_tokens": False},
        )  # fmt: skip
        want = tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False)
        if not isinstance(got, dict) or got.get("tokens") != want:
            raise StudentServerError(
                "on_policy.student_server: the server tokenises a probe text differently from the student's "
                "tokenizer; its samples would be other tokens than the trainer's. Fix: serve the student "
                "(the same model folder as student.path) on on_policy.student_server.base_url"
            )
        if temperature == 1.0 and top_p == 1.0:
            return  # raw and processed logprobs are the same distribution
        dev = "VLLM_SERVER_DEV_MODE=1 so that GET /server_info tells its --logprobs-mode"
        info = self._call("GET", self.root + "/server_info?config_format=json", what=f"start the server with {dev}")
        mode = ((info or {}).get("vllm_config") or {}).get("model_config", {}).get("logprobs_mode")
        if mode != "processed_logprobs":
            raise StudentServerError(
                f"on_policy.student_server: the server's --logprobs-mode is {mode!r}: its logprobs are the "
                f"unprocessed model's, not those of the sampling policy (temperature {temperature}, top_p "
                f"{top_p}) that drew the tokens. Fix: start it with --logprobs-mode processed_logprobs"
            )

    def refresh(self, folder: Path, step: int) -> None:
        """Load the weights saved in `folder` (trainer/refresh.py) and confirm them as step `step`."""
        folder = Path(folder).resolve()
        if self.cfg.refresh == "lora_adapter":
            self._load_lora(folder, step)
            return
        dev = "start the student server with VLLM_SERVER_DEV_MODE=1"
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
        self._call("POST", self.root + "/collective_rpc", rpc, what=dev)
        reset = self._call("POST", self.root + "/reset_prefix_cache", what=dev)
        if not (isinstance(reset, dict) and reset.get("success")):
            raise StudentServerError(
                f"the student server did not reset its prefix cache after the reload ({reset!r}): cached KV "
                "blocks of the old weights could be reused. Fix: make sure no other client is using the server"
            )
        self._call("POST", self.root + "/update_weight_version", {"new_version": version_tag(step)}, what=dev)
        self.confirm(step)

    def _load_lora(self, folder: Path, step: int) -> None:
        body = {"lora_name": self.cfg.lora_name, "lora_path": str(folder), "load_inplace": True}
        try:  # vLLM answers 200 with the plain text "Success: LoRA adapter '<name>' added successfully."
            self._call(
                "POST", self.base_url + "/load_lora_adapter", body,
                what="start the server with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True", text=True,
            )  # fmt: skip
        except StudentServerError as e:
            raise StudentServerError(f"{e}{lora_fix(str(e))}") from None
        self.folder, self.lora_step = folder, step
        self._confirm_lora(step)

    def confirm(self, step: int) -> None:
        """The server serves the weights of `step` (StudentServerError if not)."""
        if self.cfg.refresh == "lora_adapter":
            self._confirm_lora(step)
            return
        got = (self._call("GET", self.root + "/weight_info") or {}).get("weight_version")
        if got != version_tag(step):
            raise StudentServerError(
                f"the student server serves weight version {got!r}, not {version_tag(step)!r}: it was restarted "
                "or refreshed by someone else since this run loaded its weights. Fix: give the run a server of "
                "its own and rerun (the run resumes and reloads the weights)"
            )

    def _confirm_lora(self, step: int) -> None:
        if step != self.lora_step:
            raise StudentServerError(
                f"the student server serves the adapter of step {self.lora_step}, not {step}: samples recorded as "
                f"step {step} would come from other weights"
            )
        cards = (self._call("GET", self.base_url + "/models") or {}).get("data") or []
        roots = {c.get("id"): c.get("root") for c in cards if isinstance(c, dict)}
        if self.folder is None or roots.get(self.cfg.lora_name) != str(self.folder):
            raise StudentServerError(
                f"the student server lists adapter {self.cfg.lora_name!r} at {roots.get(self.cfg.lora_name)!r}, "
                f"not at the run's last refresh {str(self.folder)!r}. Fix: give the run a server of its own"
            )

    # --- sampling ----------------------------------------------------------------------------------------

    def sample(self, requests: list[StudentSampleRequest], step: int) -> list[StudentSampleAnswer]:
        """The answers to `requests`, in order (concurrent; retried by the transport), after confirming that
        the server still serves the weights of `step`."""
        self.confirm(step)
        return self.loop.run_until_complete(self._sample(requests))

    def logprobs(self, ids: list[int]) -> list[float | None]:
        """The served weights' logprobs of a given sequence (prompt logprobs: the unprocessed model's, entry 0
        None): how a refresh is checked against the trainer's own weights."""
        from orchestrator.kinds.score_types import ScoreBatch, ScoreSeq
        from orchestrator.kinds.score_vllm import VLLMScore

        async def one() -> list[float | None]:
            d = await self._transport().request(VLLMScore(), ScoreBatch([ScoreSeq(list(ids))]))
            return d.answer.seqs[0].logprobs

        return self.loop.run_until_complete(one())

    def _transport(self) -> Transport:
        if self.transport is None:
            c = self.cfg
            self.transport = Transport(
                [self.base_url], self.model, self.api_key or "EMPTY", timeout=c.timeout,
                concurrency=c.concurrency,
                retry=RetryPolicy(c.retry.max_attempts, c.retry.initial_backoff, c.retry.max_backoff),
            )  # fmt: skip
        return self.transport

    async def _sample(self, requests: list[StudentSampleRequest]) -> list[StudentSampleAnswer]:
        t = self._transport()
        delivered = await asyncio.gather(*(t.request(self.kind, r) for r in requests))
        return [d.answer for d in delivered]

    def close(self) -> None:
        if self.transport is not None:
            self.loop.run_until_complete(self.transport.close())
        self.loop.close()
