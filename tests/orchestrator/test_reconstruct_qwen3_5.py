"""Qwen3.5 (0.8B-9B and the MoEs; tests/templates/qwen3_5.jinja: its real template, on Qwen3's tokenizer -
Qwen3.5's own, larger vocabulary is not shipped by a package; the template's text and special tokens are
Qwen3's).

Thinking is on by default: the generation prompt ends "<|im_start|>assistant\\n<think>\\n", and every assistant
turn after the last user message is rendered "<think>\\n" + reasoning (trimmed; empty when there is none) +
"\\n</think>\\n\\n" + content, the turns before it without the block (so each such turn is a sample of its own).
Calls are Qwen3-Coder's XML (`<function=f>` / `<parameter=x>`, dict arguments); tool results are gathered into
one user turn. Content is trimmed (`|trim`): `content_whitespace = "strip"`. With `enable_thinking = false`
the prompt closes an empty block, and reasoning can only be dropped.
"""

from __future__ import annotations

import json

import pytest
from support.reconstruct_helpers import TWO_TURNS, full_text, recon, reference, runs, trained
from support.tokenizer_builds import load_or_skip

TOOLS = [
    {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"x": {}}}},
    }
]
PROMPT_END = "<|im_start|>assistant\n<think>\n"


def call(i: int, x: int) -> dict:
    return {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": json.dumps({"x": x})}}


CALLS = [
    {"role": "user", "content": "Q"},
    {"role": "assistant", "content": "Let me.", "reasoning_content": "need f", "tool_calls": [call(1, 1), call(2, 2)]},
    {"role": "tool", "content": "1", "tool_call_id": "c1"},
    {"role": "tool", "content": "2", "tool_call_id": "c2"},
    {"role": "assistant", "content": "Done.", "reasoning_content": "ok"},
]
XML = "<tool_call>\n<function=f>\n<parameter=x>\n{}\n</parameter>\n</function>\n</tool_call>"


@pytest.fixture(scope="module")
def qwen35():
    return load_or_skip("qwen", "qwen3_5")


def test_thinking_on_each_turn_before_the_last_question_is_its_own_sample(qwen35):
    r = recon(tok=qwen35)
    samples, rejections = r.build(TWO_TURNS, None, sample_id="s")
    assert rejections == [] and [trained(qwen35, s) for s in samples] == [
        ["\n</think>\n\nHello!<|im_end|>"],
        ["\n</think>\n\nGood.<|im_end|>"],
    ]
    first, second = (runs(qwen35, s)[0][1] for s in samples)
    assert first == "<|im_start|>user\nHi<|im_end|>\n" + PROMPT_END
    assert second.endswith("<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nFine<|im_end|>\n" + PROMPT_END)
    assert full_text(qwen35, samples[1]) == reference(qwen35, TWO_TURNS).rstrip("\n")


def test_calls_and_reasoning_after_the_question_in_one_sample(qwen35):
    r = recon(tok=qwen35)
    samples, rejections = r.build(CALLS, TOOLS, sample_id="s")
    assert rejections == [] and len(samples) == 1
    calls = XML.format(1) + "\n" + XML.format(2)
    assert trained(qwen35, samples[0]) == [
        "need f\n</think>\n\nLet me.\n\n" + calls + "<|im_end|>",
        "ok\n</think>\n\nDone.<|im_end|>",
    ]
    assert runs(qwen35, samples[0])[2] == (
        0,
        "\n<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n"
        + PROMPT_END,
    )
    assert full_text(qwen35, samples[0]) == reference(qwen35, CALLS, TOOLS).rstrip("\n")


def test_trimmed_content_is_rejected_unless_stripped(qwen35):
    msgs = [TWO_TURNS[0], dict(TWO_TURNS[1], content="Hello! ")]
    _, rejections = recon(tok=qwen35).build(msgs, None, sample_id="s")
    assert [x.reason for x in rejections] == ["template_alters_content"]
    assert 'content_whitespace = "strip"' in rejections[0].detail
    samples, _ = recon(tok=qwen35, content_whitespace="strip").build(msgs, None, sample_id="s")
    assert trained(qwen35, samples[0]) == ["\n</think>\n\nHello!<|im_end|>"]


def test_thinking_off_reasoning_only_dropped(qwen35):
    off = {"enable_thinking": False}
    samples, rejections = recon(tok=qwen35, chat_template_kwargs=off, reasoning="drop").build(
        CALLS, TOOLS, sample_id="s"
    )
    assert rejections == [] and trained(qwen35, samples[0]) == [
        "Let me.\n\n" + XML.format(1) + "\n" + XML.format(2) + "<|im_end|>",
        "Done.<|im_end|>",
    ]
    for msgs in (CALLS, [TWO_TURNS[0], dict(TWO_TURNS[1], reasoning_content="R")]):
        _, rejections = recon(tok=qwen35, chat_template_kwargs=off).build(msgs, TOOLS, sample_id="s")
        assert [x.reason for x in rejections] == ["template_mismatch"]
        assert 'set reasoning = "drop", or enable thinking' in rejections[0].detail
