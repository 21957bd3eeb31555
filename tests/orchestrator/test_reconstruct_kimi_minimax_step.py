"""Kimi-K2-Thinking, MiniMax-M2 and Step-3.7-Flash (tests/templates/, their templates as vendored in llama.cpp, on the stand-ins
of tests/support/family_standins.py).

Kimi-K2-Thinking writes "<think></think>" before the content of every finished turn but the agentic loop's last
ones (whose reasoning_content it renders in that block): a turn whose content starts with a block of its own
would be trained as two blocks. Rejected, naming the form that fills the template's empty block instead
(`ThinkingBlocks._own_empty_block`). MiniMax-M2's generation prompt opens "<think>\\n" (the first shape of
docs/reconstruction.md's "Generation prompts that open the thinking block"); Step-3.7-Flash's too, and it
renders the block (empty without reasoning) in every turn after the last user message: the plain cut."""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, reference, runs

TOOLS = [
    {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"q": {}}}},
    }
]
KIMI_FORM = "<think>{reasoning}</think>"
CALL = {"id": "functions.f:0", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}
KIMI_CALL = (
    '<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{"q": "x"}'
    "<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
)
MINIMAX_CALL = (
    '\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="q">x</parameter>\n</invoke>\n</minimax:tool_call>'
)


@pytest.fixture(scope="module")
def kimi():
    return standin("kimi_k2_thinking")


@pytest.fixture(scope="module")
def minimax():
    return standin("minimax_m2")


@pytest.fixture(scope="module")
def step():
    return standin("stepfun3_7")


def trained(tok, msgs, tools=None, **policy):
    samples, rejections = recon(tok=tok, **policy).build(msgs, tools, sample_id="s")
    assert rejections == [], rejections
    return [[t for m, t in runs(tok, s) if m] for s in samples]


def test_kimi_a_teachers_block_after_the_templates_empty_one_is_rejected_naming_the_form(kimi):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>R</think>Hello."}]
    assert reference(kimi, msgs).endswith("<|im_middle|><think></think><think>R</think>Hello.<|im_end|>")
    for policy in ({}, {"reasoning": "think_tags"}):
        samples, rejections = recon(tok=kimi, **policy).build(msgs, None, sample_id="s")
        assert samples == [] and [r.reason for r in rejections] == ["template_mismatch"]
        assert "its own empty thinking block ('<think></think>')" in rejections[0].detail
        assert "reasoning_form = '<think>{reasoning}</think>'" in rejections[0].detail
    # think_tags' own block in its default layout, after the template's empty one: the same
    field = [msgs[0], {"role": "assistant", "content": "Hello.", "reasoning_content": "R"}]
    samples, rejections = recon(tok=kimi, reasoning="think_tags").build(field, None, sample_id="s")
    assert samples == [] and "a second block comes with it ('<think>\\nR\\n</think>" in rejections[0].detail


def test_kimi_reasoning_fills_the_templates_empty_block_with_its_own_form(kimi):
    inline = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>R</think>Hello."}]
    field = [inline[0], {"role": "assistant", "content": "Hello.", "reasoning_content": "R"}]
    for msgs in (inline, field):
        assert trained(kimi, msgs, reasoning="think_tags", reasoning_form=KIMI_FORM) == [
            ["<think>R</think>Hello.<|im_end|>"]
        ]
    # the agentic loop's last turns: the template's own render of a call turn with reasoning is the same text
    loop = [inline[0], {"role": "assistant", "content": None, "reasoning_content": "T", "tool_calls": [CALL]}]
    assert reference(kimi, loop, TOOLS).endswith("<|im_middle|><think>T</think>" + KIMI_CALL)
    got = trained(kimi, loop, TOOLS, reasoning="think_tags", reasoning_form=KIMI_FORM)
    assert got == [["<think>T</think>" + KIMI_CALL]]
    assert trained(kimi, loop, TOOLS) == got  # the template's own placement (reasoning = "template")


def test_kimi_without_reasoning_and_with_drop_the_empty_block_is_trained(kimi):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello.", "reasoning_content": "R"}]
    assert trained(kimi, msgs, reasoning="drop") == [["<think></think>Hello.<|im_end|>"]]
    assert trained(kimi, [msgs[0], {"role": "assistant", "content": "Hello."}]) == [["<think></think>Hello.<|im_end|>"]]
    # the template drops a finished answer's reasoning: not rendered under the default
    samples, rejections = recon(tok=kimi).build(msgs, None, sample_id="s")
    assert samples == [] and [r.reason for r in rejections] == ["reasoning_not_rendered"]
    assert "reasoning_form = '<think>{reasoning}</think>', the template's own" in rejections[0].detail


def test_minimax_the_prompt_opens_the_block_and_the_turn_continues_it(minimax):
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "reasoning_content": "T", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "functions.f:0", "content": "42"},
        {"role": "assistant", "content": "It is 42.", "reasoning_content": "R"},
    ]
    prompt = reference(minimax, msgs[:1], TOOLS, add_generation_prompt=True)
    assert prompt.endswith("]~b]user\nQ[e~[\n]~b]ai\n<think>\n")
    samples, rejections = recon(tok=minimax).build(msgs, TOOLS, sample_id="s")
    assert rejections == [] and len(samples) == 1
    assert runs(minimax, samples[0]) == [
        (None, prompt),
        (1, "T\n</think>\n\n" + MINIMAX_CALL + "\n[e~["),  # the template's "\n" before its end token
        (0, "\n]~b]tool\n<response>42</response>[e~[\n]~b]ai\n<think>\n"),
        (1, "R\n</think>\n\nIt is 42.[e~["),
    ]
    # the teacher's own block inside content is the same turn; drop: the empty block's rest, then the answer
    inline = [msgs[0], {"role": "assistant", "content": "<think>R</think>It is 42."}]
    assert trained(minimax, inline) == [["R\n</think>\n\nIt is 42.[e~["]]
    assert trained(minimax, inline, reasoning="drop") == [["\n</think>\n\nIt is 42.[e~["]]


def test_minimax_a_call_without_reasoning_closes_the_prompts_block_before_its_calls(minimax):
    """The template writes a block only for a turn with reasoning; rendered with the block, closed and empty, at the
    start of its content, the turn is that content verbatim after the header: the student closes the prompt's block,
    then calls (before: template_mismatch, no render showing it)."""
    call_turn = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    msgs = [
        {"role": "user", "content": "Q"},
        call_turn,
        {"role": "tool", "tool_call_id": "functions.f:0", "content": "42"},
    ]
    msgs.append({"role": "assistant", "content": "It is 42."})
    with_r = [msgs[0], dict(call_turn, reasoning_content="T"), *msgs[2:]]
    for convo, policy in ((msgs, {}), (with_r, {"reasoning": "drop"}), (msgs, {"reasoning": "think_tags"})):
        samples, rejections = recon(tok=minimax, **policy).build(convo, TOOLS, sample_id="s")
        assert rejections == [] and len(samples) == 2, (policy, rejections)  # the history renders no block
        assert runs(minimax, samples[0])[1:] == [(1, "\n</think>\n\n" + MINIMAX_CALL + "\n[e~[")]
        prompt, *rest = runs(minimax, samples[1])
        assert prompt[1] == reference(minimax, msgs[:3], TOOLS, add_generation_prompt=True)
        assert "]~b]ai\n" + MINIMAX_CALL in prompt[1] and rest == [(1, "\n</think>\n\nIt is 42.[e~[")]


def test_step_the_template_closes_the_prompts_block_in_every_turn_after_the_last_user_message(step):
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "functions.f:0", "content": "42"},
        {"role": "assistant", "content": "It is 42.", "reasoning_content": "R"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome."},
    ]
    call = "<tool_call>\n<function=f>\n<parameter=q>\nx\n</parameter>\n</function>\n</tool_call><|im_end|>"
    samples, rejections = recon(tok=step).build(msgs, TOOLS, sample_id="s")
    assert rejections == [] and len(samples) == 2  # the history drops the block once a user message follows
    assert runs(step, samples[0])[1:] == [
        (1, "\n</think>\n" + call),
        (
            0,
            "\n<|im_start|>tool_response\n<tool_response>42</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n",
        ),
        (1, "R\n</think>\nIt is 42.<|im_end|>"),
    ]
    prompt = runs(step, samples[1])[0][1]
    assert prompt == reference(step, msgs[:5], TOOLS, add_generation_prompt=True)
    assert "<|im_start|>assistant\n<tool_call>" in prompt and "R\n</think>" not in prompt  # the history's
    assert runs(step, samples[1])[1:] == [(1, "\n</think>\nYou are welcome.<|im_end|>")]


def test_the_form_named_for_a_templates_own_empty_block():
    from orchestrator.open_reasoning import THINK_FORM, empty_block_form

    assert empty_block_form("<think></think>") == KIMI_FORM
    assert empty_block_form("<think>\n\n</think>\n\n") == THINK_FORM  # the reasoning in the middle
    # not an empty block alone, or no middle to the whitespace in it: no form named
    for lead in ("", "<think>R</think>", "<think></think>A", "<think>\n</think>", "</think>"):
        assert empty_block_form(lead) is None


def test_a_template_that_drops_the_block_and_writes_its_own_empty_one():
    """tests/templates/empty_block_rewrite.jinja (GLM-4.5's history layout): the template drops think_tags' block
    from the content and writes "<think></think>" in its place. Before, the block was written before that empty one,
    "<think>R</think><think></think>Hello.": now the form's block fills it, and another form is rejected."""
    from support.reconstruct_helpers import tokenizer_with

    tok = tokenizer_with("empty_block_rewrite")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello.", "reasoning_content": "R"}]
    assert trained(tok, msgs, reasoning="think_tags", reasoning_form=KIMI_FORM) == [
        ["<think>R</think>Hello.<|im_end|>"]
    ]
    assert trained(tok, msgs, reasoning="drop") == [["<think></think>Hello.<|im_end|>"]]
    samples, rejections = recon(tok=tok, reasoning="think_tags").build(msgs, None, sample_id="s")
    assert samples == [] and [r.reason for r in rejections] == ["template_mismatch"]
    assert f"reasoning_form = {KIMI_FORM!r}" in rejections[0].detail
