"""Padding-free attention over packed samples on the sdpa path: one row, causal SDPA per sample.

`LossModel` (trainer/model.py) feeds a micro-batch as ONE row [1, N] holding its samples back to
back (no padding slots) and passes `sample_bounds`, the samples' cumulative offsets (0, n1, n1+n2,
..., N; Python ints, computed once per micro-batch), as a keyword argument of the decoder's forward;
transformers hands it on, layer by layer, to the attention function registered here under `NAME`.
That function runs `torch.nn.functional.scaled_dot_product_attention(is_causal=True)` on each
sample's slice of the queries, keys and values (grouped-query heads through `enable_gqa`), so no
[T, T] mask is built and no attention is computed across samples or on padding.

The same name is registered with transformers' AttentionMaskInterface: a call WITH a 2D padding mask
(the on-policy sampler's generation, trainer/sampler.py) gets sdpa's mask and attention unchanged; a
call without a mask builds none (transformers would otherwise build a dense [N, N] mask from the
restarting position ids). Without `sample_bounds` and without a mask, a row whose position ids
restart at 0 is split into samples there (bounds found per layer); a batch of several such rows is refused.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

NAME = "distill_sdpa_varlen"


def sample_bounds(position_ids: torch.Tensor) -> tuple[int, ...]:
    """Cumulative sample offsets of one packed row [1, N] (or [N]) whose samples' positions restart
    at 0: (0, start of sample 2, ..., N)."""
    pos = position_ids.reshape(-1)
    starts = (pos == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a packed row must start a sample at its first position (position id 0)")
    return (*starts, pos.numel())


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sample_bounds: tuple[int, ...] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [1, heads, N, d], key/value [1, kv heads, N, d];
    returns [1, N, heads, d]. Without `sample_bounds`, transformers' sdpa attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if sample_bounds is None:
        sample_bounds = _bounds_from_positions(query, attention_mask, kwargs.get("position_ids"))
    if sample_bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError(f"attention {NAME!r} supports neither attention logit softcapping nor attention sinks")
    window = kwargs.get("sliding_window")
    if window is not None and max(b - a for a, b in zip(sample_bounds[:-1], sample_bounds[1:])) > window:
        raise ValueError(
            f"attention {NAME!r}: a sample is longer than the model's sliding window ({window}), which it does "
            "not apply. Fix: set trainer.seq_len <= the window"
        )
    if query.shape[0] != 1 or sample_bounds[-1] != query.shape[2]:
        raise ValueError(f"sample_bounds {sample_bounds[:3]}...{sample_bounds[-1]} do not cover a row {query.shape}")
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=dropout,
            scale=scaling,
            is_causal=True,
            enable_gqa=gqa,
        )
        for a, b in zip(sample_bounds[:-1], sample_bounds[1:])
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _bounds_from_positions(query: torch.Tensor, mask: torch.Tensor | None, position_ids) -> tuple[int, ...] | None:
    """A maskless call without bounds whose position ids restart at 0 mid-row holds packed samples
    (what transformers' sdpa would find and mask): their bounds, found here layer by layer (slower
    than passing `sample_bounds`); None for one plain sequence per row. Rows > 1 of packed samples
    are refused."""
    if mask is not None or position_ids is None or query.shape[2] < 2 or position_ids.shape[-1] != query.shape[2]:
        return None
    if not bool((position_ids[..., 1:] == 0).any()):
        return None
    if query.shape[0] != 1:
        raise ValueError(
            f"attention {NAME!r}: position ids restart inside rows of a batch of {query.shape[0]}; "
            "pass the samples as one row with sample_bounds (trainer.attention.sample_bounds), or an attention mask"
        )
    return sample_bounds(position_ids)


def _mask(**kwargs):
    """No mask when the caller passed none (the attention function needs none); sdpa's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(**kwargs)


def register() -> str:
    """Registers the attention function and its mask under `NAME` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME
