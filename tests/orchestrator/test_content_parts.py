"""Reasoning as content parts of its own (orchestrator/content_parts.py): Mistral's API for its reasoning
models, Anthropic's thinking blocks. The teacher client records it as reasoning_content
(test_client.py); reconstruction reads it so from replayed data (below)."""

from __future__ import annotations

import pytest
from support.reconstruct_helpers import runs, tokenizer_with

from distill.core.config import Reconstruction
from orchestrator.content_parts import joined_thinking, thinking_text
from orchestrator.reconstruct import Reconstructor

#: Mistral's shape: the reasoning as a list of text parts inside the thinking part
MISTRAL = [
    {"type": "thinking", "thinking": [{"type": "text", "text": "Add "}, {"type": "text", "text": "them."}]},
    {"type": "text", "text": "4"},
]
#: Anthropic's shape: the reasoning as a string, and a signature
ANTHROPIC = [{"type": "thinking", "thinking": "Add them.", "signature": "sig"}, {"type": "text", "text": "4"}]


@pytest.mark.parametrize(
    "part,text",
    [
        (MISTRAL[0], "Add them."),
        (ANTHROPIC[0], "Add them."),
        ({"type": "text", "text": "4"}, None),
        ({"type": "thinking", "thinking": 7}, None),  # unreadable: left for the content check to name
        ({"type": "thinking", "thinking": [{"type": "image_url"}]}, None),
        ("thinking", None),
    ],
)
def test_thinking_text(part, text):
    assert thinking_text(part) == text


def test_joined_in_order():
    assert joined_thinking([*MISTRAL, {"type": "thinking", "thinking": " Done."}]) == "Add them. Done."
    assert joined_thinking([{"type": "text", "text": "4"}]) == ""


def build(policy: dict, answer: dict):
    r = Reconstructor(tokenizer_with(None), Reconstruction(**policy))  # SmolLM2's ChatML: renders no reasoning
    return r.build([{"role": "user", "content": "2+2?"}, answer], None, sample_id="p")


@pytest.mark.parametrize("parts", [MISTRAL, ANTHROPIC], ids=["mistral", "anthropic"])
def test_reconstruction_reads_thinking_parts_as_reasoning(parts):
    """Before, such an answer was rejected (non_text_content): no sample from a Magistral teacher's data."""
    tok = tokenizer_with(None)
    answer = {"role": "assistant", "content": parts}
    samples, rejections = build({"reasoning": "think_tags"}, answer)
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "<think>\nAdd them.\n</think>\n\n4<|im_end|>")]
    samples, rejections = build({"reasoning": "drop"}, answer)
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "4<|im_end|>")]
    _, rejections = build({}, answer)  # read as reasoning, which this template does not render
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"]


def test_a_reasoning_field_that_says_the_same_is_kept_one_that_differs_is_rejected():
    tok = tokenizer_with(None)
    same = {"role": "assistant", "content": MISTRAL, "reasoning_content": "Add them.\n"}
    samples, rejections = build({"reasoning": "think_tags"}, same)
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "<think>\nAdd them.\n</think>\n\n4<|im_end|>")]
    _, rejections = build({"reasoning": "think_tags"}, dict(same, reasoning_content="Guess."))
    assert [x.reason for x in rejections] == ["invalid_message"] and "reasoning twice" in rejections[0].detail


def test_whitespace_strip_keeps_the_thinking_parts():
    tok = tokenizer_with(None)
    answer = {"role": "assistant", "content": [ANTHROPIC[0], {"type": "text", "text": " 4\n"}]}
    samples, rejections = build({"reasoning": "think_tags", "content_whitespace": "strip"}, answer)
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "<think>\nAdd them.\n</think>\n\n4<|im_end|>")]


def test_thinking_parts_of_other_roles_and_unreadable_ones_are_still_rejected():
    r = Reconstructor(tokenizer_with(None), Reconstruction())
    _, rejections = r.build(
        [{"role": "user", "content": MISTRAL}, {"role": "assistant", "content": "4"}], None, sample_id="u"
    )
    assert [x.reason for x in rejections] == ["non_text_content"]
    odd = {"role": "assistant", "content": [{"type": "thinking", "thinking": 7}, {"type": "text", "text": "4"}]}
    _, rejections = build({"reasoning": "drop"}, odd)
    assert [x.reason for x in rejections] == ["non_text_content"] and "'thinking'" in rejections[0].detail
