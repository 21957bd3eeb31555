"""Kimi K3 (tests/templates/kimi_k3.jinja, llama.cpp's copy, on the stand-in of
tests/support/family_standins.py): a turn whose end is a run of closing tags with words in it.

Every message ends "<|close|>message<|sep|><|end_of_msg|>", an answer "<|close|>response<|sep|>" before
that. The first special token after the content is <|close|>, a closing tag; the student stops only at the
eos <|end_of_msg|>. Before, <|close|> was taken for the end token and "response<|sep|><|close|>message<|sep|>
<|end_of_msg|>" for the template's constant final text: every answer was trained through "A<|close|>" and the
eos never, so the student would not learn to stop. Now the turn runs through the eos
(end_of_turn._through_eos), proven by the render where a user turn follows.
"""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, reference, runs

END = "<|close|>response<|sep|><|close|>message<|sep|><|end_of_msg|>"
TWO = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "R1 because"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "A2", "reasoning_content": "R2 because"},
]


@pytest.fixture(scope="module")
def tok():
    return standin("kimi_k3")


def test_the_turn_ends_at_the_eos_after_the_closing_tags(tok):
    r = recon(tok=tok)
    assert (r.eot, r.eot_spaces, r.eot_closing, r.final_tail) == (
        "<|end_of_msg|>",
        END[: -len("<|end_of_msg|>")],
        "",
        "",
    )


def test_thinking_on_each_turn_trains_its_reasoning_and_answer_through_the_eos(tok):
    """Thinking on (the template's default): the generation prompt opens the think tag and the history renders
    every turn's reasoning there, so the answers chain in one sample equal to the template's render."""
    samples, rejections = recon(tok=tok).build(TWO, None, sample_id="k")
    assert rejections == [] and len(samples) == 1
    prompt, *rest = runs(tok, samples[0])
    assert prompt[1].endswith('<|open|>message role="assistant"<|sep|><|open|>think<|sep|>')
    assert [text for mask, text in rest if mask] == [
        "R1 because<|close|>think<|sep|><|open|>response<|sep|>A1" + END,
        "R2 because<|close|>think<|sep|><|open|>response<|sep|>A2" + END,
    ]
    assert "".join(text for _, text in [prompt, *rest]) == reference(tok, TWO)


def test_thinking_off_trains_the_answer_after_the_response_tag_and_a_cut_answer_stays_open(tok):
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "A1"}]
    r = recon(tok=tok, chat_template_kwargs={"thinking": False}, truncated="keep")
    samples, rejections = r.build(msgs, None, sample_id="k")
    assert rejections == []
    prompt, *rest = runs(tok, samples[0])
    assert prompt[1].endswith("<|open|>response<|sep|>") and rest == [(1, "A1" + END)]
    # cut off: no closing tags and no eos (the template's text after the content never came)
    samples, _ = r.build(msgs, None, sample_id="k", finish_reason="length")
    assert runs(tok, samples[0])[1:] == [(1, "A1")]


def test_a_tool_loop_trains_the_calls_and_the_answer_each_through_the_eos(tok):
    """The calls are tags in the message after the response tag; the result's message names its tool (the template
    matches it to the call by id)."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "RES", "tool_call_id": "c1"},
        {"role": "assistant", "content": "A2"},
    ]
    r = recon(tok=tok, chat_template_kwargs={"thinking": False})
    samples, rejections = r.build(msgs, tools, sample_id="k")
    assert rejections == [] and len(samples) == 1
    prompt, *rest = runs(tok, samples[0])
    assert [text for mask, text in rest if mask] == [
        '<|close|>response<|sep|><|open|>tools<|sep|><|open|>call tool="f" index="1"<|sep|><|open|>argument '
        'key="q" type="string"<|sep|>x<|close|>argument<|sep|><|close|>call<|sep|><|close|>tools<|sep|>'
        "<|close|>message<|sep|><|end_of_msg|>",
        "A2" + END,
    ]
    assert 'role="tool" tool="f" index="1"<|sep|>RES' in rest[1][1]
    assert "".join(text for _, text in [prompt, *rest]) == reference(tok, msgs, tools, thinking=False)


@pytest.mark.parametrize("family", ["kimi_k3", "kimi_k2_thinking"])
def test_a_named_assistant_message_names_the_fix(family):
    """Kimi K3 and K2-Thinking write an assistant message's `name` in its header (` name="bot"`, `bot`), which the
    generation prompt never has: the student is never prompted so. Rejected, and the rejection now says why and
    names the fix; without the name the same conversation trains."""
    t = standin(family)
    plain = [TWO[0], {"role": "assistant", "content": "A1"}]
    _, rejections = recon(tok=t).build([plain[0], dict(plain[1], name="bot")], None, sample_id="k")
    assert [r.reason for r in rejections] == ["template_mismatch"]
    assert "writes the assistant message's name ('bot') in the turn's header" in rejections[0].detail
    assert "Fix: remove `name` from the assistant messages" in rejections[0].detail
    samples, rejections = recon(tok=t).build(plain, None, sample_id="k")
    assert rejections == [] and len(samples) == 1
