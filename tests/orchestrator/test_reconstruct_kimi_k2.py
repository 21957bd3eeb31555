"""Kimi-K2-Instruct (tests/templates/kimi_k2.jinja, llama.cpp's copy, on the stand-in of
tests/support/family_standins.py): role tokens, a default system prompt before the first message when
it is not a system message, content + <|im_end|>, no reasoning and no tool calls rendered."""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import TWO_TURNS, CALL_TURNS, recon, reference, runs


@pytest.fixture(scope="module")
def tok():
    return standin("kimi_k2")


def test_answers_chain_after_the_default_system_prompt(tok):
    samples, rejections = recon(tok=tok).build(TWO_TURNS, None, sample_id="k")
    assert rejections == [] and len(samples) == 1
    prompt, *rest = runs(tok, samples[0])
    assert prompt[1] == (
        "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
        "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>"
    )
    assert [text for mask, text in rest if mask] == ["Hello!<|im_end|>", "Good.<|im_end|>"]
    assert "".join(text for _, text in [prompt, *rest]) == reference(tok, TWO_TURNS)


def test_reasoning_needs_think_tags_and_tool_calls_are_not_rendered(tok):
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"}]
    _, rejections = recon(tok=tok).build(msgs, None, sample_id="k")
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"] and "think_tags" in rejections[0].detail
    samples, rejections = recon(tok=tok, reasoning="think_tags").build(msgs, None, sample_id="k")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "<think>\nR\n</think>\n\nA<|im_end|>")]
    _, rejections = recon(tok=tok).build(CALL_TURNS, None, sample_id="k")
    assert [x.reason for x in rejections] == ["tool_calls_not_rendered"]
