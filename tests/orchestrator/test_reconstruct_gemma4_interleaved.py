"""Gemma 4 31B's interleaved template (tests/templates/gemma4_interleaved.jinja, on the Gemma 4 stand-in): as
Gemma 4's (test_reconstruct_gemma4.py runs those tests on both), and it renders a tool-call turn's reasoning in
a thought channel before its calls when the turn comes after the last user message (the agentic loop).
With thinking on, that is where the student writes it: the loop is trained as one sample, each call turn
with its reasoning as the template renders it. With thinking off, the generation prompt already ends with
the empty channel: a turn trained with a second, filled channel after it would teach the student to write
one, so it is rejected naming the switches (before: trained so, dropped_blocks._check_no_reasoning_in_lead)."""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, reference, runs

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {}}}]
ARGS = json.dumps({"city": "Paris"})
CALL_TEXT = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
LOOP = [
    {"role": "user", "content": "Weather?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "reasoning_content": "Need a tool.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Check again.",
        "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}],
    },
    {"role": "tool", "content": "still sunny", "tool_call_id": "c2"},
    {"role": "assistant", "content": "It is sunny."},
]


@pytest.fixture(scope="module")
def tok():
    return standin("gemma4_interleaved")


def test_thinking_on_the_agentic_loop_is_one_sample_with_the_reasoning_where_the_template_writes_it(tok):
    r = recon(tok=tok, chat_template_kwargs={"enable_thinking": True})
    samples, rejections = r.build(LOOP, TOOLS, sample_id="l")
    assert rejections == [] and len(samples) == 1
    got = runs(tok, samples[0])
    assert [text for mask, text in got if mask == 1] == [
        "<|channel>thought\nNeed a tool.<channel|>" + CALL_TEXT + "Let me check.<turn|>",
        "<|channel>thought\nCheck again.<channel|>" + CALL_TEXT + "<turn|>",
        "It is sunny.<turn|>",
    ]
    whole = "".join(text for _, text in got)
    assert whole + "\n" == reference(tok, LOOP, TOOLS, enable_thinking=True)  # the template's own render
    prompt = reference(tok, LOOP[:1], TOOLS, add_generation_prompt=True, enable_thinking=True)
    assert samples[0].prompt_ids == tok.encode(prompt, add_special_tokens=False)


def test_thinking_off_a_call_turns_rendered_reasoning_is_not_trained_after_the_empty_channel(tok):
    _, rejections = recon(tok=tok).build(LOOP, TOOLS, sample_id="o")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    detail = rejections[0].detail
    assert detail.startswith("messages[1]:") and "<|channel>thought\\n<channel|>" in detail
    assert 'reasoning = "drop"' in detail and "enable_thinking = true" in detail
    samples, rejections = recon(tok=tok, reasoning="drop").build(LOOP, TOOLS, sample_id="d")
    assert rejections == [] and len(samples) == 3  # each after the empty channel, as the student sees it
    for s, text in zip(samples, (CALL_TEXT + "Let me check.<turn|>", CALL_TEXT + "<turn|>", "It is sunny.<turn|>")):
        assert runs(tok, s)[0][1].endswith("<|turn>model\n<|channel>thought\n<channel|>")
        assert runs(tok, s)[1:] == [(1, text)]
