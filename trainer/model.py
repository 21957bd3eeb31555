"""The student as a loss module: HF causal LM body + the configured loss head; FSDP2 sharding.

`LossModel.forward` runs the decoder to its final hidden states and hands them,
with the lm_head weight and the micro-batch's per-token inputs, to the loss that
`trainer.loss.type` names in the registry (`trainer.losses`; for "sft" the chunked
NLL), so the full logits are never built. On the sdpa path a micro-batch's rows run as
one padding-free row [1, N] (`one_row`) with causal attention per sample
(trainer/attention.py). Wrapping the HF model this way also makes the wrapper the FSDP
root: its forward hook gathers the embedding / lm_head / final norm before we read them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from trainer import attention
from trainer.data import MicroBatch, block_causal_mask
from trainer.dist import DistContext
from trainer.losses import compute_loss, get_loss
from trainer.timing import StepTimes, maybe_section


def attention_implementation(device: torch.device, dtype: str = "float32") -> str:
    """flash_attention_2 (varlen over packed rows, from position ids) on CUDA in bfloat16
    when flash-attn is installed (its kernels take no fp32); otherwise our padding-free
    sdpa (trainer/attention.py: causal SDPA per sample of one row)."""
    if device.type == "cuda" and dtype == "bfloat16" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return attention.register()


def one_row(input_ids, position_ids, segment_ids, inputs: dict[str, torch.Tensor]):
    """The micro-batch's samples back to back in one row [1, N] (padding slots dropped), its per-token
    inputs [1, N, ...] likewise, and the samples' offsets in it (`attention.sample_bounds`). A micro-batch
    of padding only (`empty_micro_batch`) keeps its padding, each token a sample of its own (position 0)."""
    keep = segment_ids != 0
    if bool(keep.all()) or not bool(keep.any()):
        flat = (x.reshape(1, -1) for x in (input_ids, position_ids))
        inputs = {k: v.reshape(1, -1, *v.shape[2:]) for k, v in inputs.items()}
    else:
        flat = (x[keep][None] for x in (input_ids, position_ids))
        inputs = {k: v[keep][None] for k, v in inputs.items()}
    input_ids, position_ids = flat
    return input_ids, position_ids, inputs, attention.sample_bounds(position_ids)


class LossModel(nn.Module):
    # Private switch for bench/tests: False runs the sdpa path the old way ([B, T] padded rows and a
    # dense [B, 1, T, T] block-causal mask) instead of one padding-free row with per-sample attention.
    varlen = True

    def __init__(self, lm: nn.Module, loss_cfg):
        super().__init__()
        self.lm = lm
        # `[trainer.loss]`: its `type` picks the registered loss, its other fields are the loss's options.
        self.loss_cfg = loss_cfg
        self.loss_spec = get_loss(loss_cfg.type)
        cfg = lm.config
        for attr in ("final_logit_softcapping", "logit_scale"):
            if getattr(cfg, attr, None) not in (None, 1.0):
                raise ValueError(
                    f"the student's config sets {attr}; the chunked loss assumes "
                    "logits = hidden @ lm_head.weight.T. Use a Llama/Qwen/SmolLM-style student"
                )
        if getattr(lm.get_output_embeddings(), "bias", None) is not None:
            raise ValueError("the student's lm_head has a bias; the chunked loss does not support it")

    def lm_forward(self, **kwargs):
        """The HF model's own forward (logits, KV cache), for sampling and probes. Under FSDP2 it is registered
        as a forward method (`shard`), so it gathers the root's shards (embeddings, norm, head) as forward does;
        every rank must then run as many of these calls as the others (trainer/sampler.py keeps them in step)."""
        return self.lm(**kwargs)

    @property
    def uses_flash(self) -> bool:
        return self.lm.config._attn_implementation == "flash_attention_2"

    def forward(
        self,
        input_ids,
        position_ids,
        segment_ids,
        inputs: dict[str, torch.Tensor],
        normalizer: float,
        times: StepTimes | None = None,
    ):
        """`input_ids`, `position_ids`, `segment_ids`: the micro-batch's [B, T] rows (run as one row [1, N]
        without padding on the sdpa path, `one_row`); `inputs`: the loss's per-token tensors ([B, T, ...],
        aligned with the labels, reshaped alike), by name;
        `times`: where to add the decoder's and the loss head's seconds (trainer/timing.py)."""
        extra: dict = {}
        if self.uses_flash:
            # transformers finds packed samples from restarting position ids only in a
            # batch of one row, so the rows go in as one long row (padding positions are 0,
            # so each padding token is a sequence of its own).
            input_ids, position_ids = (x.reshape(1, -1) for x in (input_ids, position_ids))
            inputs = {k: v.reshape(1, -1, *v.shape[2:]) for k, v in inputs.items()}
            mask = None
        elif self.varlen:
            input_ids, position_ids, inputs, bounds = one_row(input_ids, position_ids, segment_ids, inputs)
            mask, extra = None, {"sample_bounds": bounds}
        else:
            mask = block_causal_mask(segment_ids)
        body = getattr(self.lm, self.lm.base_model_prefix)
        with maybe_section(times, "forward"):
            hidden = body(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **extra
            ).last_hidden_state
        with maybe_section(times, "loss"):
            return compute_loss(self.loss_cfg, hidden, self.lm.get_output_embeddings().weight, inputs, normalizer)

    def micro_batch_loss(self, mb: MicroBatch, normalizer: float, times: StepTimes | None = None) -> torch.Tensor:
        inputs = {name: mb.input(name) for name in self.loss_spec.needs}
        return self(mb.input_ids, mb.position_ids, mb.segment_ids, inputs, normalizer, times)


def load_student(
    model_dir: str | Path,
    device: torch.device,
    loss_cfg,
    activation_checkpointing: bool = False,
    dtype: str = "float32",
    lora=None,
    adapter_from: Path | None = None,
    seed: int = 0,
) -> LossModel:
    """The HF model in fp32 (the optimizer's master weights) on `device`, as a module computing the
    loss `loss_cfg` (a `[trainer.loss]` config model, e.g. `SFTLoss(chunk_size=1024)`) names.
    With `lora` (an enabled `[trainer.lora]`) the weights are frozen and adapters train (trainer/lora.py),
    loaded from the checkpoint `adapter_from` when resuming; their init is drawn from `seed`."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation=attention_implementation(device, dtype)
    )
    lm.config.use_cache = False
    if activation_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    lm.train()  # from_pretrained returns eval mode, where HF skips activation checkpointing
    wrapper = None
    if lora is not None and lora.enabled:
        from trainer.lora import apply_lora

        lm, wrapper = apply_lora(lm, lora, seed)
    model = LossModel(lm.to(device), loss_cfg)
    if wrapper is not None:
        # beside the module tree, not in it: its parameters are lm's own (see trainer/lora.py)
        model.__dict__["peft"] = wrapper
        if adapter_from is not None:
            from trainer.lora import load_adapter

            load_adapter(model, adapter_from)
    return model


def shard(model: LossModel, ctx: DistContext, dtype: str) -> LossModel:
    """FSDP2: one shard group per decoder layer, the rest (embeddings, norm, head) at the root.

    bf16 mixed precision (params cast to bf16 for compute, gradients reduced in fp32)
    when trainer.dtype = "bfloat16"; fp32 otherwise.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if dtype == "bfloat16"
        else MixedPrecisionPolicy()
    )
    block_names = set(getattr(model.lm, "_no_split_modules", None) or [])
    for m in model.lm.modules():
        if type(m).__name__ in block_names:
            fully_shard(m, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    register_fsdp_forward_method(model, "lm_forward")  # the on-policy sampler's forward (LossModel.lm_forward)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
