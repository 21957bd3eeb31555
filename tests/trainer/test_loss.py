"""The chunked loss equals the naive full-logits reference, in values and gradients."""

from __future__ import annotations

import pytest
import torch

from trainer.loss import IGNORE, chunked_nll, naive_nll


def _inputs(n=37, h=16, v=101, ignore_frac=0.4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, n, h, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (2, n), generator=g)
    labels[torch.rand(2, n, generator=g) < ignore_frac] = IGNORE
    return hidden, weight, labels


def _grads(fn, hidden, weight, labels, norm, **kw):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, labels, norm, **kw)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000, None])
def test_chunked_equals_naive(chunk_size):
    hidden, weight, labels = _inputs()
    norm = float((labels != IGNORE).sum()) + 3.0  # a global count larger than the local one
    ref = _grads(naive_nll, hidden, weight, labels, norm)
    got = _grads(chunked_nll, hidden, weight, labels, norm, chunk_size=chunk_size)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # ignored positions get exactly zero gradient
    assert torch.all(got[1][labels == IGNORE] == 0)


def test_chunked_bf16_hidden_matches_fp32_reference():
    hidden, weight, labels = _inputs(dtype=torch.bfloat16)
    norm = float((labels != IGNORE).sum())
    ref_loss = naive_nll(hidden.detach().float(), weight.detach().float(), labels, norm)
    loss, gh, gw = _grads(chunked_nll, hidden, weight, labels, norm, chunk_size=7)
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)


def test_value_is_mean_nll_of_trained_positions():
    hidden, weight, labels = _inputs(n=9, v=11)
    keep = labels != IGNORE
    logp = torch.log_softmax(hidden.detach() @ weight.detach().t(), -1)
    expected = -logp[keep].gather(1, labels[keep][:, None]).mean()
    got = chunked_nll(hidden, weight, labels, float(keep.sum()), chunk_size=4)
    torch.testing.assert_close(got.detach(), expected)


def test_no_trained_position_gives_zero_loss_connected_to_inputs():
    hidden, weight, labels = _inputs()
    labels[:] = IGNORE
    loss = chunked_nll(hidden, weight, labels, 1.0, chunk_size=8)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)


def test_chunk_size_must_be_positive():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_nll(hidden, weight, labels, 1.0, chunk_size=0)


def test_auto_chunk_size_keeps_a_chunks_logits_near_96_mib():
    from trainer.losses.sft import LOGITS_BYTES_PER_CHUNK, auto_chunk_size

    assert auto_chunk_size(49152) == 512  # SmolLM2: 96 MiB of fp32 logits
    assert auto_chunk_size(151936) == 128  # Qwen's vocabulary: the floor
    assert auto_chunk_size(101) == 4096  # a toy vocabulary: the ceiling
    for v in (32000, 49152, 65536, 128256):
        c = auto_chunk_size(v)
        assert c & (c - 1) == 0 and (c == 128 or c * 4 * v <= LOGITS_BYTES_PER_CHUNK < 2 * c * 4 * v)
