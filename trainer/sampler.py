"""In-process student sampling for on-policy distillation (docs/on_policy.md, "Student sampling").

`StudentSampler.sample(prompts, policy_step)` generates `on_policy.samples_per_prompt` completions per
prompt with the model's CURRENT weights and returns them as `Sample`s carrying `sampling_logprobs`: the
log-probability of every sampled token under exactly the distribution it was drawn from (the logits
divided by the temperature, then cut to the top-p nucleus and renormalised). The token is drawn from that
very tensor, so the logprob kept is the sampling policy's, not a re-computation of it.

Generation is our own loop over the HF model's forward with a KV cache: batches of
`generation_batch_size` sequences, left padded (the prompts' positions count from their first real token),
only the last position's logits computed. Each sequence draws its uniforms from its own generator, seeded
from (seed, policy_step, prompt_id, k), so a sample does not depend on which other sequences shared its
batch or in which order they came: batched generation samples what one-by-one generation samples, up to
the float noise of padded batch arithmetic. Nothing is decoded and re-tokenised.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Sequence

import torch

from distill.core.contract import Sample

#: A prompt to sample from: (prompt_id, prompt token ids, already rendered with the generation prompt;
#: distill.core.prompt_render.render_prompt).
Prompt = tuple[str, list[int]]


def process_logits(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities [..., V] of the sampling distribution: log_softmax(logits / temperature) cut to
    the nucleus (the fewest most-probable tokens whose probability reaches top_p; ties broken by token
    order) and renormalised; -inf outside it."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return logp
    sorted_lp, order = logp.sort(dim=-1, descending=True, stable=True)
    before = sorted_lp.exp().cumsum(dim=-1) - sorted_lp.exp()  # mass of the tokens ranked above each
    keep_sorted = before < top_p  # the top token is always kept (before = 0)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    cut = logp.masked_fill(~keep, float("-inf"))
    return cut - torch.logsumexp(cut, dim=-1, keepdim=True)


def sequence_seed(seed: int, policy_step: int, prompt_id: str, k: int) -> int:
    """A 63-bit seed for one sequence's generator, stable across processes and Python versions."""
    h = hashlib.sha256(f"{seed}\x00{policy_step}\x00{prompt_id}\x00{k}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's eos token and the model's generation config's eos ids."""
    ids: set[int] = set()
    for v in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    if not ids:
        raise ValueError(
            "the student has no end-of-sequence token (tokenizer.eos_token_id, generation_config.eos_token_id); "
            "samples could only end at on_policy.max_new_tokens. Fix: set eos_token in the tokenizer folder"
        )
    return ids


class StudentSampler:
    """Samples completions from the student's current weights (see the module docstring)."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, on_policy_cfg: Any, device: torch.device, seed: int = 0, ctx=None
    ):
        # A LossModel (trainer/model.py) wraps the HF causal LM as `.lm`; either may be passed. The LossModel's
        # lm_forward is called rather than .lm itself: under FSDP2 it gathers the root's shards.
        self.model = getattr(model, "lm", model)
        self._forward = getattr(model, "lm_forward", self.model)
        # Under torchrun (ctx.world > 1, FSDP) each rank samples its own prompts, but every forward is a
        # collective: the ranks run as many batches and decoding steps as the busiest rank (_max_over_ranks).
        self.ctx = ctx if ctx is not None and ctx.distributed else None
        self.cfg = on_policy_cfg
        self.device = torch.device(device)
        self.seed = int(seed)
        self.eos = eos_ids(tokenizer, self.model)
        self._eos_tensor = torch.tensor(sorted(self.eos), device=self.device)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else min(self.eos)  # fed in padding slots, never kept
        # transformers 5.2x renamed forward's `past_key_values` to `cache` (the old name warns, then goes).
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def sample(self, prompts: Sequence[Prompt], policy_step: int) -> list[Sample]:
        """`samples_per_prompt` samples per prompt, in prompt order then k; under no_grad, in eval mode
        (the model's train/eval mode is restored)."""
        n = self.cfg.samples_per_prompt
        jobs = [(pid, list(ids), k) for pid, ids in prompts for k in range(n)]
        seen: set[str] = set()
        for pid, ids, _ in jobs[::n]:
            if not ids:
                raise ValueError(f"prompt {pid!r} has no tokens; a sample needs a prompt")
            if pid in seen:  # sample ids "<prompt_id>/<k>" would collide (dedup and resume key on them)
                raise ValueError(f"prompt id {pid!r} appears twice in one call; prompt ids must be unique")
            seen.add(pid)
        # Similar lengths share a batch (less padding); results do not depend on the grouping.
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][1]))
        out: list[Sample | None] = [None] * len(jobs)
        modes = [(m, m.training) for m in self.model.modules()]  # restored module by module
        self.model.eval()
        try:
            with torch.no_grad():
                bs = self.cfg.generation_batch_size
                batches = [order[start : start + bs] for start in range(0, len(order), bs)]
                # under FSDP a rank with fewer batches runs empty ones (a finished dummy row) in step
                for b in range(int(self._max_over_ranks(len(batches)))):
                    idx = batches[b] if b < len(batches) else []
                    for i, s in zip(idx, self._generate([jobs[i] for i in idx], policy_step)):
                        out[i] = s
        finally:
            for m, training in modes:
                m.training = training
        return [s for s in out if s is not None]

    # size: one decoding loop (prefill, then a token per step for the whole batch) reads best whole
    def _generate(self, batch: list[tuple[str, list[int], int]], policy_step: int) -> list[Sample]:
        cfg, dev = self.cfg, self.device
        dummy = not batch  # an empty batch (FSDP lockstep): one padding row, done from the start, nothing kept
        if dummy:
            batch = [("", [self.pad_id], 0)]
        b, width, steps = len(batch), max(len(ids) for _, ids, _ in batch), cfg.max_new_tokens
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        for r, (_, ids, _) in enumerate(batch):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = 1
        # Each sequence's uniforms, drawn up front from its own generator (float64: no draw rounds to 1).
        uniforms = torch.stack(
            [
                torch.rand(
                    steps,
                    dtype=torch.float64,
                    generator=torch.Generator().manual_seed(sequence_seed(self.seed, policy_step, pid, k)),
                )
                for pid, _, k in batch
            ]
        ).to(dev)
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        tokens = torch.empty((b, steps), dtype=torch.long, device=dev)
        logps = torch.empty((b, steps), dtype=torch.float32, device=dev)
        done = torch.full((b,), dummy, dtype=torch.bool, device=dev)
        lengths = torch.full((b,), steps, dtype=torch.long, device=dev)
        past, step_ids, step_pos = None, input_ids, positions
        for t in range(steps):
            out = self._forward(
                input_ids=step_ids,
                attention_mask=attn,
                position_ids=step_pos,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: past},
            )
            past = getattr(out, self._cache_kw)
            lp = process_logits(out.logits[:, -1, :], cfg.temperature, cfg.top_p)
            tok, tok_lp = _draw(lp, uniforms[:, t])
            tokens[:, t], logps[:, t] = tok, tok_lp
            ended = torch.isin(tok, self._eos_tensor) & ~done
            lengths = torch.where(ended, t + 1, lengths)
            done |= ended
            if self._max_over_ranks(0.0 if bool(done.all()) else 1.0) == 0.0:  # every rank's batch has ended
                break
            step_ids = torch.where(done, self.pad_id, tok)[:, None]
            step_pos = step_pos[:, -1:] + 1
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=dev)], dim=1)
        if dummy:
            return []
        tokens, logps, lengths, done = tokens.cpu(), logps.cpu(), lengths.cpu(), done.cpu()
        samples = []
        for r, (pid, ids, k) in enumerate(batch):
            m = int(lengths[r])
            samples.append(
                Sample(
                    sample_id=f"{pid}/{k}",
                    prompt_ids=ids,
                    completion_ids=tokens[r, :m].tolist(),
                    completion_mask=[1] * m,
                    prompt_id=pid,
                    sample_index=k,
                    finish_reason="stop" if bool(done[r]) else "length",
                    meta={"policy_step": policy_step},
                    sampling_logprobs=logps[r, :m].tolist(),
                    group_id=pid,
                )
            )
        return samples

    def _max_over_ranks(self, x: float) -> float:
        """x itself in one process; under torchrun the largest x of all ranks (one small all-reduce)."""
        if self.ctx is None:
            return x
        from trainer.dist import all_reduce

        return all_reduce([float(x)], self.ctx, op="max")[0]


def _draw(logp: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse CDF: the first token whose cumulative probability (in token order)
    exceeds u * total; a token of probability 0 (outside the nucleus) is never the first to exceed it.
    Returns the tokens and their log-probabilities in `logp`."""
    cdf = logp.double().exp().cumsum(dim=-1)
    total = cdf[:, -1:]
    x = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    tok = torch.searchsorted(cdf, x, right=True).squeeze(1).clamp(max=logp.shape[-1] - 1)
    return tok, logp.gather(1, tok[:, None]).squeeze(1)
