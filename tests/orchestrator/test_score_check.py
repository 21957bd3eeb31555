"""The scorer self-tests against the exact-logprob score server (a real SmolLM2 computing exact logprobs):
all three pass on it for every scoring kind, and each one refuses the server it exists to catch."""

from __future__ import annotations

import asyncio
import random

import pytest
from support import tokenizer_builds

from orchestrator.score_check import ScoreCheckError, run_self_tests
from orchestrator.scoring import make_transport
from distill.core.config.schema_score import SCORER_CONFIGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TYPES = ["vllm", "sglang", "echo"]


def scorer_cfg(server, type_: str, **kw):
    url = server.root if type_ == "sglang" else server.base_url
    return SCORER_CONFIGS[type_](base_url=url, model=server.model, retry={"max_attempts": 1}, **kw)


def self_tests(sc, tok, stop_at_failure: bool = True):
    async def go():
        t = make_transport(sc, "EMPTY")
        try:
            return await run_self_tests(sc, t, tok, stop_at_failure)
        finally:
            await t.close()

    return asyncio.run(go())


@pytest.mark.parametrize("type_", TYPES)
def test_self_tests_pass_on_an_exact_server(score_server, smol_tokenizer, type_):
    rows = self_tests(scorer_cfg(score_server, type_), smol_tokenizer)
    assert [(name, result) for name, result, _ in rows] == [
        ("tokenizer identity", "pass"),
        ("alignment", "pass"),
        ("determinism", "pass"),
    ]
    assert "special tokens tokenised identically" in rows[0][2]
    assert "generated tokens, max |diff|" in rows[1][2] and "tolerance 0.05" in rows[1][2]


@pytest.mark.parametrize("type_", ["vllm", "echo"])
def test_alignment_refuses_a_server_shifted_by_one(make_score_server, smol_tokenizer, type_):
    server = make_score_server(shift=1)  # llama-cpp-python's echo: token i scored under position i+1
    with pytest.raises(ScoreCheckError) as e:
        self_tests(scorer_cfg(server, type_), smol_tokenizer)
    msg = str(e.value)
    assert msg.startswith("scorer self-test 'alignment' failed: at generated token 0")
    assert "off by one?" in msg and "scorer.alignment_tolerance = 0.05" in msg
    # both values are named
    assert msg.count("logprob") >= 1 and "while sampling but" in msg


def test_tokenizer_identity_refuses_another_tokenizer(score_server):
    other = tokenizer_builds.load_or_skip("llama3", "llama3_1")  # a student with Llama 3's tokenizer
    with pytest.raises(ScoreCheckError) as e:
        self_tests(scorer_cfg(score_server, "vllm"), other)
    msg = str(e.value)
    assert msg.startswith("scorer self-test 'tokenizer identity' failed: the teacher tokenises the plain probe")
    assert "cross-tokenizer distillation is not supported" in msg


class NoisyModel:
    """The exact model, but every scoring answer carries fresh noise (a non-deterministic server)."""

    def __init__(self, exact, sigma: float):
        self.exact, self.sigma, self.rng = exact, sigma, random.Random(0)

    def __getattr__(self, name):
        return getattr(self.exact, name)

    def score(self, ids, k=0, shift=0):
        lps, tops, ranks = self.exact.score(ids, k, shift)
        # pushed down only, so a logprob near 0 stays a valid one (<= 0)
        return [None if x is None else x - abs(self.rng.gauss(0, self.sigma)) for x in lps], tops, ranks


def test_determinism_refuses_a_noisy_server(exact_model, smol_tokenizer):
    from support.score_server import ScoreServer

    # noise well under the alignment tolerance (0.05), well over the determinism tolerance (0.01)
    with ScoreServer(NoisyModel(exact_model, 0.004)) as server:
        sc = scorer_cfg(server, "vllm", alignment_tolerance=0.05, determinism_tolerance=0.001)
        with pytest.raises(ScoreCheckError, match=r"^scorer self-test 'determinism' failed: the same sequence"):
            self_tests(sc, smol_tokenizer)
        rows = self_tests(sc, smol_tokenizer, stop_at_failure=False)
    assert [r[1] for r in rows] == ["pass", "pass", "FAIL"]
    assert "scorer.determinism_tolerance = 0.001" in rows[2][2]


@pytest.mark.slow
def test_real_llama_cpp_server_is_refused_by_the_self_tests(smol_tokenizer, tmp_path):
    """The REAL llama-cpp-python server (its echo logprobs are shifted by one) as an echo scorer: the
    alignment self-test refuses it and says "off by one?" (its special tokens echo as "", so tokenizer
    identity fails too; every row runs here)."""
    from support.llamacpp_server import ALIAS, llama_cpp_server

    with llama_cpp_server(log_path=str(tmp_path / "llama.log")) as url:
        sc = SCORER_CONFIGS["echo"](base_url=url, model=ALIAS, retry={"max_attempts": 2})
        rows = self_tests(sc, smol_tokenizer, stop_at_failure=False)
        with pytest.raises(ScoreCheckError):
            self_tests(sc, smol_tokenizer)  # as a run does: refused at the first failure
    results = {name: (result, detail) for name, result, detail in rows}
    assert results["alignment"][0] == "FAIL", rows
    assert "off by one?" in results["alignment"][1], rows
