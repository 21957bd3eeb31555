"""Run configuration schema, part 5: `[on_policy.student_server]`, the student's own inference server
(`on_policy.sampler = "server"`; docs/on_policy.md, "Student inference server").

The student samples on an OpenAI-compatible server instead of in the trainer's process; after every
optimizer step the trainer saves the new weights into a refresh folder and asks the server to load them.
The section is a union keyed on `type`, one model per server kind (distill/student_server.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .schema import Retry, Strict
from .url_checks import check_api_key_var, check_http_url


class VLLMStudentServer(Strict):
    """A vLLM server serving the student (vLLM 0.32; docs/on_policy.md, "Student inference server")."""

    # The server kind: "vllm" (the only one so far).
    type: Literal["vllm"] = "vllm"
    # Base URL of the student's server, up to and including /v1. Never the [scorer]'s or
    # orchestrator.rollout_model's: a refresh writes the student's weights into this server.
    base_url: str = "http://127.0.0.1:8001/v1"
    # Model name sent with each request (`--served-model-name`); with refresh = "lora_adapter" the
    # requests name the adapter (lora_name) instead.
    model: str = "student"
    # NAME of the environment variable holding the API key (never the key itself).
    api_key_var: str | None = None
    # Seconds before one request times out (then retried); a refresh waits as long.
    timeout: float = Field(300.0, gt=0)
    # Sampling requests in flight at once (one request per sample).
    concurrency: int = Field(8, ge=1)
    retry: Retry = Retry()
    # How the server takes the new weights after each optimizer step:
    #   "reload_weights": the trainer saves the full HF weights (safetensors) and calls
    #       POST {root}/collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": DIR}},
    #       then /reset_prefix_cache and /update_weight_version. Needs the server started with
    #       VLLM_SERVER_DEV_MODE=1 (and --logprobs-mode processed_logprobs unless temperature = top_p = 1).
    #   "lora_adapter": a LoRA student (trainer.lora.enabled); the trainer saves the adapter and calls
    #       POST {base_url}/load_lora_adapter {"lora_name", "lora_path", "load_inplace": true}. Needs
    #       --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on the server.
    refresh: Literal["reload_weights", "lora_adapter"] = "reload_weights"
    # Adapter name the requests use with refresh = "lora_adapter".
    lora_name: str = "distill-student"
    # Folder the refreshed weights are saved into (one sub-folder per step, the last two kept); it must be
    # readable by the server at the same path. Unset: OUTPUT_DIR/on_policy/refresh.
    refresh_dir: str | None = None
    # After each refresh the server's logprobs of a fixed probe sequence must agree with the trainer's own
    # within this many nats, else the run stops (the server did not take the weights).
    refresh_tolerance: float = Field(1e-2, gt=0)

    @field_validator("api_key_var")
    @classmethod
    def _check_api_key_var(cls, v: str | None) -> str | None:
        return check_api_key_var(v, "MY_STUDENT_SERVER_KEY")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, url: str) -> str:
        return check_http_url(url)


#: The `[on_policy.student_server]` section: one model per server kind, keyed on `type` (only vLLM so far;
#: SGLang's documented `/update_weights_from_disk` is described in docs/on_policy.md, not built).
StudentServer = VLLMStudentServer
