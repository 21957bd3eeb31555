"""reasoning = "think_tags" on templates that drop the block it writes (reconstruction/dropped_blocks.py),
and `reasoning_form`, the student's own thinking syntax for it. Gemma 4's case, with its real template:
test_reconstruct_gemma4.py.

Before: a template that strips a `<think>` block from every answer it renders (the last one too) and
whose generation prompt does not open one trained the answer alone, the reasoning silently gone; one
that rendered something else in the block's place trained that. Now the first trains the block then
the turn as rendered, once a render proves the template drops exactly the block, and the second is
rejected naming reasoning_form.
"""

from __future__ import annotations

import copy

import pytest
from support.reconstruct_helpers import TWO_TURNS, full_text, runs, tokenizer_with

from distill.core.config import ConfigError, Reconstruction, load_config
from orchestrator.reconstruct import Reconstructor

LOOP = "{%- for m in messages %}{%- set c = m.content %}"
TURN = "{{- '<|im_start|>' + m.role + '\\n' + c + '<|im_end|>\\n' }}{%- endfor %}"
PROMPT = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
#: ChatML that strips a thinking block from every answer (as QwQ's template does, without QwQ's opened prompt)
STRIPS = (
    LOOP + "{%- if m.role == 'assistant' and '</think>' in c %}"
    "{%- set c = c.split('</think>')[-1].lstrip('\\n') %}{%- endif %}" + TURN + PROMPT
)
#: ChatML that keeps the tags of a thinking block and empties it
EMPTIES = (
    LOOP + "{%- if m.role == 'assistant' and '</think>' in c %}"
    "{%- set c = '<think></think>' + c.split('</think>')[-1] %}{%- endif %}" + TURN + PROMPT
)
REASONED = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
    {"role": "user", "content": "Fine"},
    {"role": "assistant", "content": "Good.", "reasoning_content": "Be kind."},
]


def reconstructor(template: str, **policy) -> tuple[object, Reconstructor]:
    tok = copy.deepcopy(tokenizer_with(None))  # SmolLM2's, with the template given
    tok.chat_template = template
    return tok, Reconstructor(tok, Reconstruction(reasoning="think_tags", **policy))


def test_a_block_the_template_strips_from_every_answer_is_trained_before_the_answer():
    tok, r = reconstructor(STRIPS)
    samples, rejections = r.build(REASONED, None, sample_id="s")
    assert rejections == [] and [s.sample_id for s in samples] == ["s/turn1", "s/turn2"]  # the history drops it
    for s, k, block in zip(samples, (1, 3), ("<think>\nGreet back.\n</think>\n\n", "<think>\nBe kind.\n</think>\n\n")):
        prompt = tok.apply_chat_template(TWO_TURNS[:k], tokenize=False, add_generation_prompt=True)
        assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
        answer = TWO_TURNS[k]["content"]
        assert full_text(tok, s) == prompt + block + answer + "<|im_end|>"
        # the template renders the turn with the block as without it: it is what it strips
        with_block = [*TWO_TURNS[:k], dict(TWO_TURNS[k], content=block + answer)]
        assert tok.apply_chat_template(with_block, tokenize=False) == prompt + answer + "<|im_end|>\n"
    assert r.stats["dropped_reasoning_turns"] == 2


def test_a_template_that_renders_something_else_in_the_blocks_place_is_rejected_naming_the_form():
    _, r = reconstructor(EMPTIES)
    _, rejections = r.build(REASONED[:2], None, sample_id="e")
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"]
    assert "reasoning_form" in rejections[0].detail and 'reasoning = "drop"' in rejections[0].detail
    samples, rejections = r.build(TWO_TURNS[:2], None, sample_id="e")  # no reasoning: nothing to lose
    assert rejections == [] and len(samples) == 1


def test_a_form_the_template_renders_verbatim_is_trained_as_written():
    tok, r = reconstructor(tokenizer_with(None).chat_template, reasoning_form="<reasoning>{reasoning}</reasoning>")
    samples, rejections = r.build(REASONED, None, sample_id="v")
    assert rejections == [] and len(samples) == 1  # the history shows it as the last turn does
    assert [text for mask, text in runs(tok, samples[0]) if mask] == [
        "<reasoning>Greet back.</reasoning>Hello!<|im_end|>",
        "<reasoning>Be kind.</reasoning>Good.<|im_end|>",
    ]
    assert r.stats["dropped_reasoning_turns"] == 0


@pytest.mark.parametrize(
    "section,match",
    [
        ({"reasoning_form": "<t>{reasoning}</t>"}, 'used only with reasoning = "think_tags"'),
        ({"reasoning": "think_tags", "reasoning_form": "<t></t>"}, "must hold {reasoning}"),
        ({"reasoning": "think_tags", "reasoning_form": "{reasoning}</t>"}, "after the text that opens"),
        ({"reasoning": "think_tags", "reasoning_form": "<t>{reasoning}{reasoning}"}, "once"),
    ],
)
def test_the_form_is_checked_when_the_config_loads(section, match):
    with pytest.raises(ConfigError, match="reasoning_form") as e:
        load_config(None, {"orchestrator": {"reconstruction": section}})
    assert match in str(e.value)


def test_a_prompt_that_opens_the_templates_own_block_refuses_another_form():
    """DeepSeek-R1-Distill's prompt opens "<think>\\n" itself: the turn continues in the template's layout
    (open_reasoning.py), so a reasoning_form is not what the student writes there."""
    from support import tokenizer_builds

    tok = tokenizer_builds.load_or_skip("deepseek", "deepseek_r1_distill")
    r = Reconstructor(tok, Reconstruction(reasoning="think_tags", reasoning_form="<t>{reasoning}</t>"))
    _, rejections = r.build(REASONED[:2], None, sample_id="d")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert "remove reasoning_form" in rejections[0].detail
    samples, rejections = r.build(TWO_TURNS[:2], None, sample_id="d")  # no reasoning: the opened turn as before
    assert rejections == [] and r.stats["opened_reasoning_turns"] == 1
