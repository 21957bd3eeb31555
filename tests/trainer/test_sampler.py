"""The in-process student sampler (trainer/sampler.py) with the real SmolLM2-135M-Instruct student:
sampling logprobs against a plain forward pass processed by transformers' own temperature/top-p warpers,
batching, seeds, EOS and length endings, groups, the model's mode and autograd."""

from __future__ import annotations

import pytest
import torch

from distill.core import config as C
from distill.core.prompt_render import render_prompt
from trainer.sampler import StudentSampler, process_logits

EOS = 2  # SmolLM2's <|im_end|> (also its pad token)


@pytest.fixture(scope="module")
def student():
    """(model, tokenizer): the real builtin student, fp32, in train mode as the trainer holds it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from distill.core.student import resolve_student

    torch.set_num_threads(1)  # 2 cores shared with other work; one thread keeps this file's CPU modest
    path = resolve_student("builtin:smollm2-135m-instruct")
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    model.train()
    return model, AutoTokenizer.from_pretrained(str(path))


def on_policy(**kw):
    base = dict(samples_per_prompt=2, max_new_tokens=10, temperature=1.0, top_p=1.0, generation_batch_size=4)
    return C.OnPolicy(**{**base, **kw})


def prompts(tok, *questions):
    return [(f"p{i}", render_prompt(tok, [{"role": "user", "content": q}])) for i, q in enumerate(questions)]


SHORT = "What is 2+3? Reply with the number only."
LONG = "Tell me a long story about a dragon who learns to count, with many characters and places."


def reference_logprobs(model, s, temperature: float, top_p: float):
    """log p(token) for each completion token, from one unpadded forward over prompt + completion, with the
    logits processed by transformers' TemperatureLogitsWarper and TopPLogitsWarper (what `generate` uses),
    and the untruncated log_softmax(logits / T) for comparison."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    rows = logits[len(s.prompt_ids) - 1 : -1]  # row j predicts completion token j
    scores = TemperatureLogitsWarper(temperature)(ids, rows.clone())
    full = torch.log_softmax(scores, -1)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    cut = torch.log_softmax(scores, -1)
    tok = torch.tensor(s.completion_ids)[:, None]
    return cut.gather(1, tok).squeeze(1), full.gather(1, tok).squeeze(1)


def test_render_prompt_is_the_prompt_reconstruction_builds(smol_tokenizer):
    from orchestrator.reconstruction import Reconstructor

    rec = Reconstructor(smol_tokenizer, C.Reconstruction())
    answer = {"role": "assistant", "content": "5"}
    for history in (
        [{"role": "user", "content": SHORT}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": SHORT}],
    ):
        samples, rejects = rec.build(history + [answer], sample_id="x/0")
        assert rejects == [] and len(samples) == 1
        assert render_prompt(smol_tokenizer, history) == samples[0].prompt_ids
    # Several turns: reconstruction's tokens up to the last trained turn are the rendered prompt.
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": SHORT},
    ]
    (s,), _ = rec.build(history + [answer], sample_id="x/0")
    last_turn = max(i for i, m in enumerate(s.completion_mask) if m and not s.completion_mask[i - 1])
    assert render_prompt(smol_tokenizer, history) == s.prompt_ids + s.completion_ids[:last_turn]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_sampling_logprobs_are_those_of_the_distribution_sampled_from(student, temperature, top_p):
    model, tok = student
    cfg = on_policy(temperature=temperature, top_p=top_p, max_new_tokens=12)
    samples = StudentSampler(model, tok, cfg, "cpu", seed=3).sample(prompts(tok, SHORT, LONG), policy_step=0)
    assert len(samples) == 4
    truncated = 0
    for s in samples:
        ref, full = reference_logprobs(model, s, temperature, top_p)
        got = torch.tensor(s.sampling_logprobs)
        assert torch.isfinite(ref).all(), f"{s.sample_id}: a token outside the nucleus was sampled"
        assert torch.allclose(got, ref, atol=2e-4, rtol=0), (s.sample_id, (got - ref).abs().max())
        if top_p < 1.0:  # renormalised over the nucleus: never below the untruncated logprob
            assert (got >= full - 2e-4).all()
            truncated += int((got > full + 1e-3).sum())
    if top_p < 1.0:
        assert truncated > 0, "no position had a nucleus smaller than the vocabulary; the test shows nothing"


def test_process_logits_matches_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(0)) * 3
    for t, p in [(1.0, 1.0), (0.5, 0.9), (1.7, 0.3), (1.0, 0.999)]:
        ref = TemperatureLogitsWarper(t)(None, logits.clone())
        ref = torch.log_softmax(TopPLogitsWarper(p)(None, ref) if p < 1 else ref, -1)
        got = process_logits(logits, t, p)
        assert torch.equal(torch.isfinite(got), torch.isfinite(ref)), (t, p)
        assert torch.allclose(got[torch.isfinite(got)], ref[torch.isfinite(ref)], atol=1e-5)
        assert torch.allclose(got.exp().sum(-1), torch.ones(6), atol=1e-5)


def test_tiny_nucleus_samples_the_argmax_with_logprob_zero(student):
    model, tok = student
    cfg = on_policy(top_p=1e-6, temperature=0.9, max_new_tokens=6, samples_per_prompt=2)
    samples = StudentSampler(model, tok, cfg, "cpu", seed=0).sample(prompts(tok, LONG), policy_step=0)
    assert samples[0].completion_ids == samples[1].completion_ids  # one token per nucleus: greedy
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            greedy = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1].argmax(-1).tolist()
        assert s.completion_ids == greedy
        assert s.sampling_logprobs == [0.0] * len(s.completion_ids)


def test_batched_samples_what_one_by_one_samples(student):
    model, tok = student
    ps = prompts(tok, SHORT, LONG, "Name a colour.")
    batched = StudentSampler(model, tok, on_policy(generation_batch_size=6), "cpu", seed=7).sample(ps, 5)
    single = StudentSampler(model, tok, on_policy(generation_batch_size=1), "cpu", seed=7).sample(ps, 5)
    # another batch mate and order: a prompt's samples do not depend on what else was sampled with them
    alone = StudentSampler(model, tok, on_policy(generation_batch_size=3), "cpu", seed=7).sample(ps[2:0:-1], 5)
    assert (
        [s.sample_id for s in batched]
        == [s.sample_id for s in single]
        == ["p0/0", "p0/1", "p1/0", "p1/1", "p2/0", "p2/1"]
    )
    for b, s in zip(batched, single):
        assert b.completion_ids == s.completion_ids
        assert max(abs(x - y) for x, y in zip(b.sampling_logprobs, s.sampling_logprobs)) < 1e-4
    by_id = {s.sample_id: s.completion_ids for s in batched}
    assert [s.sample_id for s in alone] == ["p2/0", "p2/1", "p1/0", "p1/1"]
    assert all(s.completion_ids == by_id[s.sample_id] for s in alone)
    again = StudentSampler(model, tok, on_policy(generation_batch_size=6), "cpu", seed=7).sample(ps, 5)
    assert [s.completion_ids for s in again] == [s.completion_ids for s in batched]
    other_step = StudentSampler(model, tok, on_policy(generation_batch_size=6), "cpu", seed=7).sample(ps, 6)
    other_seed = StudentSampler(model, tok, on_policy(generation_batch_size=6), "cpu", seed=8).sample(ps, 5)
    for other in (other_step, other_seed):
        assert [s.completion_ids for s in other] != [s.completion_ids for s in batched]


def test_completions_end_at_the_first_eos_and_hold_no_padding(student):
    model, tok = student
    cfg = on_policy(samples_per_prompt=3, max_new_tokens=16, temperature=0.7)
    samples = StudentSampler(model, tok, cfg, "cpu", seed=1).sample(prompts(tok, SHORT, LONG), policy_step=0)
    stops = [s for s in samples if s.finish_reason == "stop"]
    lengths = [s for s in samples if s.finish_reason == "length"]
    assert stops and lengths, "the batch must mix rows that ended early with rows that ran on"
    for s in stops:
        assert s.completion_ids[-1] == EOS and EOS not in s.completion_ids[:-1]
        assert len(s.completion_ids) < 16
    for s in lengths:
        assert len(s.completion_ids) == 16 and EOS not in s.completion_ids
    for s in samples:  # the left padding of shorter prompts is never in a sample
        assert s.prompt_ids == dict(prompts(tok, SHORT, LONG))[s.prompt_id]
        assert len(s.sampling_logprobs) == len(s.completion_ids) == len(s.completion_mask)


def test_max_new_tokens_ends_with_finish_reason_length(student):
    model, tok = student
    cfg = on_policy(samples_per_prompt=2, max_new_tokens=3)
    samples = StudentSampler(model, tok, cfg, "cpu", seed=0).sample(prompts(tok, LONG), policy_step=0)
    assert [(s.finish_reason, len(s.completion_ids)) for s in samples] == [("length", 3), ("length", 3)]


def test_samples_carry_groups_ids_and_the_policy_step(student):
    model, tok = student
    ps = prompts(tok, SHORT, LONG)
    cfg = on_policy(samples_per_prompt=3, max_new_tokens=4, generation_batch_size=4)
    samples = StudentSampler(model, tok, cfg, "cpu").sample(ps, policy_step=11)
    assert [(s.sample_id, s.group_id, s.prompt_id, s.sample_index) for s in samples] == [
        (f"{pid}/{k}", pid, pid, k) for pid, _ in ps for k in range(3)
    ]
    for s in samples:
        assert s.meta == {"policy_step": 11} and s.version == 3
        assert s.completion_mask == [1] * len(s.completion_ids)
        assert s.teacher_logprobs is None and s.reward is None


@pytest.mark.parametrize("start_training", [True, False])
def test_sampling_runs_in_eval_mode_without_autograd_and_restores_the_mode(student, start_training):
    model, tok = student
    seen = []
    hook = model.register_forward_hook(
        lambda m, a, o: seen.append((m.training, torch.is_grad_enabled(), o.logits.requires_grad))
    )
    model.train(start_training)
    try:
        StudentSampler(model, tok, on_policy(max_new_tokens=2), "cpu").sample(prompts(tok, SHORT), 0)
        assert seen and set(seen) == {(False, False, False)}
        assert model.training is start_training
        assert all(m.training is start_training for m in model.modules())
    finally:
        hook.remove()
        model.train()


def test_a_loss_model_wrapper_samples_from_its_language_model(student):
    model, tok = student
    from trainer.model import LossModel

    wrapper = LossModel(model, C.SFTLoss())
    a = StudentSampler(wrapper, tok, on_policy(max_new_tokens=4), "cpu").sample(prompts(tok, SHORT), 0)
    b = StudentSampler(model, tok, on_policy(max_new_tokens=4), "cpu").sample(prompts(tok, SHORT), 0)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]


def test_an_empty_prompt_and_a_repeated_prompt_id_are_refused(student):
    model, tok = student
    sampler = StudentSampler(model, tok, on_policy(), "cpu")
    with pytest.raises(ValueError, match="prompt 'e' has no tokens"):
        sampler.sample([("e", [])], 0)
    with pytest.raises(ValueError, match="prompt id 'p0' appears twice"):
        sampler.sample(prompts(tok, SHORT) * 2, 0)


def test_modules_in_mixed_modes_get_each_its_own_mode_back(student):
    model, tok = student
    model.train()
    model.model.layers[0].eval()  # e.g. a frozen block kept in eval mode
    try:
        StudentSampler(model, tok, on_policy(max_new_tokens=1), "cpu").sample(prompts(tok, SHORT), 0)
        assert model.training and model.model.layers[1].training
        assert not any(m.training for m in model.model.layers[0].modules())
    finally:
        model.train()
