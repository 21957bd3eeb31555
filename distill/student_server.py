"""The on-policy loop's student samplers (docs/on_policy.md, "Student sampling" and "Student inference
server"): `on_policy.sampler` chooses where the student's samples come from.

    sampler, eval_sampler, refresh = make_samplers(cfg, run_dir, setup)
    samples = sampler.sample(prompts, policy_step=step)   # list[Sample], the same fields either way
    refresh(step)                                         # after every optimizer step (None in-process)

"in_process": trainer/sampler.py's StudentSampler with the trainer's own weights; refresh does nothing.
"server": ServerSampler asks the student's own inference server ([on_policy.student_server];
orchestrator/student_server.py). refresh(step) saves the trainer's current weights into the refresh folder
(trainer/refresh.py), has the server load them and confirms it; a sample call confirms the server still
serves the weights of its `policy_step` before sampling, so `meta.policy_step` is always the step of the
weights that drew the tokens. The first refresh happens here, before anything is sampled (a resumed run's
server gets the resumed weights).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from distill.core.contract import Sample


def student_server_api_key(srv: Any) -> str | None:
    """The key from the environment variable named by on_policy.student_server.api_key_var (None: none named)."""
    from distill.core.config import key_from_env
    from orchestrator.student_server import StudentServerError

    if not srv.api_key_var:
        return None
    return key_from_env(srv.api_key_var, lambda fix: StudentServerError(f"on_policy.student_server.api_key_var {fix}"))


class ServerSampler:
    """Samples on the student server: the same `sample(prompts, policy_step)` as trainer.sampler.StudentSampler,
    one request per (prompt, k) with the sequence's own seed."""

    def __init__(self, client: Any, tokenizer: Any, model: Any, on_policy_cfg: Any, seed: int = 0):
        from trainer.sampler import eos_ids

        self.client, self.cfg, self.seed = client, on_policy_cfg, int(seed)
        self.eos = tuple(sorted(eos_ids(tokenizer, getattr(model, "lm", model))))

    def sample(self, prompts: Sequence[tuple[str, list[int]]], policy_step: int) -> list[Sample]:
        from orchestrator.kinds.student_vllm import StudentSampleRequest
        from trainer.sampler import sequence_seed

        n, c = self.cfg.samples_per_prompt, self.cfg
        jobs = [(pid, list(ids), k) for pid, ids in prompts for k in range(n)]
        if len({pid for pid, _ in prompts}) != len(prompts):
            raise ValueError("a prompt id appears twice in one call; prompt ids must be unique")
        reqs = [
            StudentSampleRequest(
                prompt_ids=tuple(ids),
                max_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=sequence_seed(self.seed, policy_step, pid, k),
                stop_token_ids=self.eos,
            )
            for pid, ids, k in jobs
        ]
        answers = self.client.sample(reqs, policy_step)
        return [
            Sample(
                sample_id=f"{pid}/{k}",
                prompt_ids=ids,
                completion_ids=a.token_ids,
                completion_mask=[1] * len(a.token_ids),
                prompt_id=pid,
                sample_index=k,
                finish_reason=a.finish_reason,
                meta={"policy_step": policy_step},
                sampling_logprobs=a.logprobs,
                group_id=pid,
            )
            for (pid, ids, k), a in zip(jobs, answers)
        ]


class Refresher:
    """After each optimizer step: save the weights for the server, have it load them, confirm the version, and
    check that the server now computes the trainer's logprobs (a fixed probe sequence, within
    on_policy.student_server.refresh_tolerance nats); returns the seconds spent."""

    def __init__(self, client: Any, model: Any, tokenizer: Any, refresh_dir: Path, ctx: Any, tolerance: float):
        from orchestrator.student_server import TOKENIZER_PROBE

        self.client, self.model, self.dir, self.ctx, self.tol = client, model, Path(refresh_dir), ctx, tolerance
        self.probe = tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False)
        self.last_diff: float | None = None

    def __call__(self, step: int) -> float:
        from trainer.refresh import save_refresh

        t0 = time.perf_counter()
        from distill.on_policy_dist import from_rank0

        folder = save_refresh(self.model, self.dir, step, self.ctx)
        # rank 0 talks to the server; its failure is raised on every rank (distill/on_policy_dist.py)
        from_rank0(self.ctx, lambda: self.client.refresh(folder, step))
        mine = self.own_logprobs()  # on every rank: under FSDP the forward is a collective
        from_rank0(self.ctx, lambda: self.check(step, mine))
        return time.perf_counter() - t0

    def own_logprobs(self) -> list[float]:
        """The trainer's logprobs of the probe's tokens (fp32 forward, dropout off, as on the server)."""
        import torch

        lm = getattr(self.model, "lm", self.model)
        forward = getattr(self.model, "lm_forward", lm)  # under FSDP2 it gathers the root's shards
        modes = [(m, m.training) for m in lm.modules()]
        lm.eval()
        try:
            with torch.no_grad():
                out = forward(input_ids=torch.tensor([self.probe], device=self.ctx.device))
                logits = out.logits[0, :-1].float()
        finally:
            for m, training in modes:
                m.training = training
        mine = logits.log_softmax(-1).gather(1, torch.tensor(self.probe[1:], device=logits.device)[:, None])
        return mine.squeeze(1).tolist()

    def check(self, step: int, mine: list[float]) -> None:
        from orchestrator.student_server import StudentServerError

        served = self.client.logprobs(self.probe)[1:]
        self.last_diff = max(abs(float(a) - float(b)) for a, b in zip(mine, served))
        if self.last_diff > self.tol:
            raise StudentServerError(
                f"after loading the weights of step {step}, the student server's logprobs of a probe sequence "
                f"differ from the trainer's by up to {self.last_diff:.3g} nats "
                f"(on_policy.student_server.refresh_tolerance = {self.tol}): it did not take the new weights "
                "(vLLM 0.32 on CPU keeps a tied lm_head's packed copy: serve such a student untied, "
                'docs/on_policy.md "Student inference server"), or it serves another model or dtype'
            )


def make_samplers(cfg: Any, run_dir: Path, s: Any) -> tuple[Any, Any, Callable[[int], float] | None, Any]:
    """(sampler, eval sampler, refresh or None, client to close or None) for `on_policy.sampler`; `s` is the
    trainer's setup (trainer/train.py `_setup`: model, tokenizer, ctx, state)."""
    op, tok, dev = cfg.on_policy, s.tokenizer, s.ctx.device
    # The held-out eval samples the student's own distribution (temperature 1, no nucleus), so that
    # mean(log piS - log piT) over its tokens estimates the reverse KL of the student to the teacher.
    eval_cfg = op.model_copy(update={"temperature": 1.0, "top_p": 1.0, "samples_per_prompt": 1})
    if op.sampler == "in_process":
        from trainer.sampler import StudentSampler

        return (
            StudentSampler(s.model, tok, op, dev, seed=cfg.seed, ctx=s.ctx),
            StudentSampler(s.model, tok, eval_cfg, dev, seed=cfg.seed, ctx=s.ctx),
            None,
            None,
        )
    from orchestrator.student_server import VLLMStudentClient

    srv = op.student_server
    client = VLLMStudentClient(srv, student_server_api_key(srv))
    client.check(tok, op.temperature, op.top_p)
    folder = Path(srv.refresh_dir or Path(run_dir) / "on_policy" / "refresh")
    refresh = Refresher(client, s.model, tok, folder, s.ctx, srv.refresh_tolerance)
    refresh(s.state.step)  # the server samples with the trainer's weights from the first sample on
    return (
        ServerSampler(client, tok, s.model, op, seed=cfg.seed),
        ServerSampler(client, tok, s.model, eval_cfg, seed=cfg.seed),
        refresh,
        client,
    )
