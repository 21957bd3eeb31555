"""IBM Granite 4.0 and LG's EXAONE 4.0 (tests/templates/granite4.jinja, exaone4.jinja: their real templates,
on the stand-ins of tests/support/family_standins.py), and the rule both thinking-off modes need: a trained
turn that starts with a thinking block right after a generation prompt that closes an empty one is rejected.

Granite 4.0: "<|start_of_role|>ROLE<|end_of_role|>...<|end_of_text|>\\n" turns, a default system prompt,
calls as "<tool_call>\\n{json}\\n</tool_call>" after the content, tool results gathered into one user turn.
EXAONE 4.0: "[|role|]\\n...[|endofturn|]\\n" turns; every assistant turn of the history is rendered after an
empty "<think>\\n\\n</think>\\n\\n" (the template never renders reasoning unless told `skip_think = false`, and
then only in the last turn); the generation prompt closes that empty block (thinking off, the default) or opens
one ("<think>\\n": enable_thinking = true).
"""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import TWO_TURNS, decode, full_text, recon, reference, runs
from support.tokenizer_builds import load_or_skip

from orchestrator.open_reasoning import block_tags, ends_with_empty_block

TOOLS = [
    {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"x": {}}}},
    }
]
REASONED = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "reasoning_content": "R"}]
INLINE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nHello!"}]
G4_HEADER = "<|start_of_role|>assistant<|end_of_role|>"
EX_HEADER = "[|assistant|]\n"
EMPTY = "<think>\n\n</think>\n\n"


def call(i: int, x: int) -> dict:
    return {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": json.dumps({"x": x})}}


def two_calls(content: str) -> list[dict]:
    return [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": content, "tool_calls": [call(1, 1), call(2, 2)]},
        {"role": "tool", "content": "1", "tool_call_id": "c1"},
        {"role": "tool", "content": "2", "tool_call_id": "c2"},
        {"role": "assistant", "content": "Done."},
    ]


def one_sample(tok, r, msgs, tools=None, **kw):
    """The conversation's one sample, checked against the template's own render."""
    samples, rejections = r.build(msgs, tools, sample_id="s")
    assert rejections == [] and len(samples) == 1, rejections
    full = reference(tok, msgs, tools, **kw)
    assert full_text(tok, samples[0]) == full[: len(full) - len(r.final_tail)]
    return samples[0]


def student(family: str):
    """The stand-in, or for Qwen3 its real tokenizer with the real template."""
    return load_or_skip("qwen", "qwen3") if family == "qwen3" else standin(family)


@pytest.fixture(scope="module")
def granite():
    return standin("granite4")


@pytest.fixture(scope="module")
def exaone():
    return standin("exaone4")


def test_granite4_golden_with_its_default_system_prompt(granite):
    r = recon(tok=granite)
    assert (r.eot, r.final_tail) == ("<|end_of_text|>", "\n")
    s = one_sample(granite, r, TWO_TURNS)
    assert runs(granite, s) == [
        (
            None,
            "<|start_of_role|>system<|end_of_role|>You are a helpful assistant. Please ensure responses are "
            "professional, accurate, and safe.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n"
            + G4_HEADER,
        ),
        (1, "Hello!<|end_of_text|>"),
        (0, "\n<|start_of_role|>user<|end_of_role|>Fine<|end_of_text|>\n" + G4_HEADER),
        (1, "Good.<|end_of_text|>"),
    ]


@pytest.mark.parametrize("content", ["", None, "Let me see."])
def test_granite4_calls_after_the_text_and_results_in_one_user_turn(granite, content):
    r = recon(tok=granite)
    assert r.tool_shape.probed and not r.tool_shape.drops_text
    s = one_sample(granite, r, two_calls(content), TOOLS)
    calls = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n'
    calls += '<tool_call>\n{"name": "f", "arguments": {"x": 2}}\n</tool_call>'
    text = f"{content}\n{calls}" if content else calls
    assert runs(granite, s)[1:] == [
        (1, text + "<|end_of_text|>"),
        (
            0,
            "\n<|start_of_role|>user<|end_of_role|>\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n"
            "</tool_response><|end_of_text|>\n" + G4_HEADER,
        ),
        (1, "Done.<|end_of_text|>"),
    ]
    assert "<tools>\n" + json.dumps(TOOLS[0]) in decode(granite, s.prompt_ids)


def test_granite4_reasoning_is_not_rendered_and_goes_inline_with_think_tags(granite):
    _, rejections = recon(tok=granite).build(REASONED, None, sample_id="s")
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"]
    s = one_sample(granite, recon(tok=granite, reasoning="think_tags"), INLINE)
    assert runs(granite, s)[1:] == [(1, "<think>\nR\n</think>\n\nHello!<|end_of_text|>")]


def test_exaone4_golden_thinking_off(exaone):
    r = recon(tok=exaone)
    assert (r.eot, r.final_tail) == ("[|endofturn|]", "\n")
    s = one_sample(exaone, r, [{"role": "system", "content": "Be brief."}, *TWO_TURNS])
    assert runs(exaone, s) == [
        (None, "[|system|]\nBe brief.[|endofturn|]\n[|user|]\nHi[|endofturn|]\n" + EX_HEADER + EMPTY),
        (1, "Hello![|endofturn|]"),
        (0, "\n[|user|]\nFine[|endofturn|]\n" + EX_HEADER + EMPTY),
        (1, "Good.[|endofturn|]"),
    ]


def test_exaone4_calls(exaone):
    s = one_sample(exaone, recon(tok=exaone), two_calls("Let me see."), TOOLS)
    assert runs(exaone, s)[1:] == [
        (
            1,
            'Let me see.\n<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>{"name": "f", "arguments": {"x": 2}}</tool_call>[|endofturn|]',
        ),
        (
            0,
            '\n[|tool|]\n<tool_result>{"result": "1"}</tool_result>\n<tool_result>{"result": "2"}</tool_result>'
            "[|endofturn|]\n" + EX_HEADER + EMPTY,
        ),
        (1, "Done.[|endofturn|]"),
    ]


@pytest.mark.parametrize("inline", [False, True])
def test_exaone4_thinking_on_trains_the_rest_of_the_opened_block(exaone, inline):
    """The prompt opens "<think>\\n"; every turn of the history is rendered with the template's empty block,
    which is <think> tags' form with no reasoning: the student writes the rest of the block holding its
    reasoning. Before, the block was written whole after the prompt's opening ("<think>\\nR\\n</think>\\n\\n"
    then the rest of the empty block: a wrong sample)."""
    kw = {"enable_thinking": True}
    second = {"role": "assistant", "content": "Sure.", "reasoning": "S"}
    msgs = [*REASONED, {"role": "user", "content": "More"}, second]
    if inline:  # the teacher's own blocks, inside the content
        msgs = [*INLINE, msgs[2], {"role": "assistant", "content": "<think>S</think>Sure."}]
    r = recon(tok=exaone, reasoning="think_tags", chat_template_kwargs=kw)
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and len(samples) == 2  # the history drops the reasoning: one sample per turn
    for s, (question, reasoning, answer) in zip(samples, [("Hi", "R", "Hello!"), ("More", "S", "Sure.")]):
        prompt = decode(exaone, s.prompt_ids)
        assert prompt.endswith(f"[|user|]\n{question}[|endofturn|]\n{EX_HEADER}<think>\n")
        assert runs(exaone, s)[1:] == [(1, f"{reasoning}\n</think>\n\n{answer}[|endofturn|]")]
    # no reasoning: the rest of the empty block, as reasoning = "drop" trains every turn
    drop = recon(tok=exaone, reasoning="drop", chat_template_kwargs=kw)
    for r in (recon(tok=exaone, reasoning="think_tags", chat_template_kwargs=kw), drop):
        s = one_sample(exaone, r, TWO_TURNS, **kw)
        assert [t for m, t in runs(exaone, s) if m == 1] == [
            "\n</think>\n\nHello![|endofturn|]",
            "\n</think>\n\nGood.[|endofturn|]",
        ]


def test_exaone4_thinking_on_with_another_form_is_not_proven(exaone):
    """The template's empty block is not reasoning_form's with no reasoning: nothing proves the layout."""
    kw = {"enable_thinking": True}
    r = recon(tok=exaone, reasoning="think_tags", reasoning_form="<think>{reasoning}</think>", chat_template_kwargs=kw)
    samples, rejections = r.build(REASONED, None, sample_id="s")
    assert samples == [] and [x.reason for x in rejections] == ["template_mismatch"]
    assert "opens a thinking block ('<think>\\n')" in rejections[0].detail


@pytest.mark.parametrize(
    "family, kwargs",
    [("exaone4", {}), ("smollm3", {"enable_thinking": False}), ("qwen3", {"enable_thinking": False})],
)
@pytest.mark.parametrize("policy, msgs", [("think_tags", REASONED), ("think_tags", INLINE), ("template", INLINE)])
def test_no_second_thinking_block_after_a_prompt_that_closed_one(family, kwargs, policy, msgs):
    """Thinking off: the generation prompt ends with an empty block, closed. A turn trained with a block of
    its own after it (the teacher's reasoning as think_tags, or its block kept inside the content) would
    teach the student a second block where it answers; before, it was trained so (SmolLM3, EXAONE 4.0;
    Qwen3 rejected it already). Rejected naming both fixes; reasoning = "drop" trains the answer alone."""
    tok = student(family)
    r = recon(tok=tok, reasoning=policy, chat_template_kwargs=kwargs)
    samples, rejections = r.build(msgs, None, sample_id="s")
    if policy == "template" and family == "exaone4":  # it takes the block out of the content, unlike SmolLM3
        assert samples == [] and [x.reason for x in rejections] == ["template_alters_content"]
        assert 'reasoning = "drop"' in rejections[0].detail and "enable_thinking = true" in rejections[0].detail
        return
    assert samples == [] and [x.reason for x in rejections] == ["template_mismatch"]
    if family != "qwen3":  # Qwen3's own rejection: its template renders the reasoning, before the prompt's end
        assert "second block" in rejections[0].detail and "enable_thinking = true" in rejections[0].detail
    assert 'reasoning = "drop"' in rejections[0].detail
    drop = recon(tok=tok, reasoning="drop", chat_template_kwargs=kwargs)
    s = one_sample(tok, drop, msgs[:1] + TWO_TURNS[1:2], **kwargs)
    samples, rejections = recon(tok=tok, reasoning="drop", chat_template_kwargs=kwargs).build(msgs, None, sample_id="s")
    assert rejections == [] and [x.completion_ids for x in samples] == [s.completion_ids]
    assert decode(tok, s.prompt_ids).endswith("</think>\n" if family == "smollm3" else EMPTY)


def test_a_thinking_turn_after_its_header_is_not_a_second_block(exaone):
    """The rule reads the prompt's end: after a header with no block, the same turn trains."""
    s = one_sample(
        exaone, recon(tok=exaone), [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}]
    )
    assert runs(exaone, s)[1:] == [(1, "A[|endofturn|]")]
    smol = standin("smollm3")
    s = one_sample(smol, recon(tok=smol, reasoning="think_tags"), INLINE)
    assert runs(smol, s)[1:] == [(1, "<think>\nR\n</think>\n\nHello!<|im_end|>")]


def test_block_tags_and_the_empty_block():
    gemma = "<|channel>thought\n{reasoning}<channel|>"
    assert block_tags(None) == (("<think>", "</think>"),)
    assert block_tags(gemma) == (("<think>", "</think>"), ("<|channel>thought", "<channel|>"))
    assert ends_with_empty_block("x<|im_start|>assistant\n<think>\n\n</think>\n\n", ("<think>", "</think>"))
    assert ends_with_empty_block("<|turn>model\n<|channel>thought\n<channel|>", block_tags(gemma)[1])
    assert not ends_with_empty_block("assistant\n<think>\nR\n</think>\n\n", ("<think>", "</think>"))
    assert not ends_with_empty_block("assistant\n<think>\n", ("<think>", "</think>"))
    assert not ends_with_empty_block("</think>\n\nA", ("<think>", "</think>"))
