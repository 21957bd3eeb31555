"""OLMo 3 Think (tests/templates/olmo3_think.jinja, on the stand-in of tests/support/family_standins.py).

Its generation prompt ends "<|im_start|>assistant\\n<think>" and its history writes an assistant's content verbatim,
reasoning fields not at all. A teacher's own "<think>R</think>A" inside content (a server without a reasoning
parser, or a reasoning dataset replayed) is then rendered as the prompt's "<think>" followed by the rest of the
content: the template's own cut after the prompt, the content from the prompt's opening on
(`ThinkingBlocks._continues_opening`). Before, it was template_alters_content under every policy but drop, and
the fix the message named (reasoning = "think_tags") was rejected the same way."""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, reference, runs

PROMPT_END = "<|im_start|>assistant\n<think>"


@pytest.fixture(scope="module")
def olmo():
    return standin("olmo3_think")


def built(tok, msgs, tools=None, **policy):
    samples, rejections = recon(tok=tok, **policy).build(msgs, tools, sample_id="s")
    assert rejections == [], rejections
    return [runs(tok, s) for s in samples]


def test_the_teachers_block_inside_content_continues_the_prompts_opening(olmo):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nR1\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>R2</think>A2"},
    ]
    prompt = reference(olmo, msgs[:2], add_generation_prompt=True)
    assert prompt.endswith(PROMPT_END)
    for policy in ({}, {"reasoning": "think_tags"}):
        # the history writes the content verbatim: one sample, the template's own render of the conversation
        (sample,) = built(olmo, msgs, **policy)
        assert sample == [
            (None, prompt),
            (1, "\nR1\n</think>\n\nA1<|im_end|>"),
            (0, "\n<|im_start|>user\nQ2<|im_end|>\n" + PROMPT_END),
            (1, "R2</think>A2<|im_end|>"),  # as the teacher wrote it
        ]
        assert "".join(text for _, text in sample) == reference(olmo, msgs)
    # drop: the block goes, and the student closes the prompt's block empty before the answer
    assert [s[1:] for s in built(olmo, msgs[:3], reasoning="drop")] == [[(1, "\n\n</think>\n\nA1<|im_end|>")]]


def test_a_reasoning_field_is_written_in_the_prompts_block(olmo):
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    turn1, turn2 = (1, "\nR1\n</think>\n\nA1<|im_end|>"), (1, "\n\n</think>\n\nA2<|im_end|>")
    first, second = built(olmo, msgs)  # the history renders no reasoning field, "A1" alone: split per turn
    assert first[1:] == [turn1] and second[1:] == [turn2]
    assert second[0][1] == reference(olmo, msgs[:3], add_generation_prompt=True)
    # think_tags writes the block into the content, which the history keeps: one sample
    (sample,) = built(olmo, msgs, reasoning="think_tags")
    assert sample[1:] == [turn1, (0, "\n<|im_start|>user\nQ2<|im_end|>\n" + PROMPT_END), turn2]


def test_tool_results_are_rejected_the_template_renders_environment_messages_only(olmo):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    samples, rejections = recon(tok=olmo).build(msgs, None, sample_id="s")
    assert samples == [] and [r.reason for r in rejections] == ["tool_results_not_rendered"]
