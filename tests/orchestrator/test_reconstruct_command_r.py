"""Cohere Command R7B (tests/templates/command_r7b.jinja, on the stand-in of
tests/support/family_standins.py) and the template shape it brought: an answer ends with two
special tokens, `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`, and the model stops at the second (its
eos). Before, the first was taken as the end token and the second stayed outside every trained
turn, so the student was never taught to stop. Both are now trained: closing tokens, proven
from two probe renders (orchestrator/reconstruction/end_of_turn.py), and only those.
"""

from __future__ import annotations

import copy
import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import CALL_TURNS, TWO_TURNS, decode, full_text, recon, reference, runs

HEAD = "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
END = "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
PLAIN = TWO_TURNS


@pytest.fixture(scope="module")
def tok():
    return standin("command_r7b")


def test_both_end_tokens_are_trained_after_every_answer(tok):
    r = recon(tok=tok)
    assert (r.eot, r.eot_spaces, r.eot_closing, r.final_tail) == ("<|END_RESPONSE|>", "", "<|END_OF_TURN_TOKEN|>", "")
    msgs = [{"role": "system", "content": "Be brief."}, *PLAIN]
    samples, rejections = r.build(msgs, None, sample_id="p")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    assert runs(tok, s) == [
        (
            None,
            HEAD + "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>",
        ),
        (1, "Hello!" + END),
        (
            0,
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Fine<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            "<|START_RESPONSE|>",
        ),
        (1, "Good." + END),
    ]
    # the template's own renders: the prompt, and the whole conversation (nothing after the last end)
    assert s.prompt_ids == tok.encode(reference(tok, msgs[:2], add_generation_prompt=True), add_special_tokens=False)
    assert full_text(tok, s) == reference(tok, msgs)
    # the eos is the last trained token, as the model emits it
    assert s.completion_ids[-1] == tok.eos_token_id and s.completion_mask[-1] == 1


def test_a_cut_off_answer_ends_before_both(tok):
    samples, rejections = recon(tok=tok, truncated="keep").build(PLAIN[:2], None, sample_id="t", finish_reason="length")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "Hello!")]


def test_content_the_template_strips_names_the_switch(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello!\n"}]
    _, rejections = recon(tok=tok).build(msgs, None, sample_id="w")
    assert [x.reason for x in rejections] == ["template_alters_content"]
    assert 'content_whitespace = "strip"' in rejections[0].detail
    samples, rejections = recon(tok=tok, content_whitespace="strip").build(msgs, None, sample_id="w")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "Hello!" + END)]


def test_tool_calls_are_not_rendered_by_the_default_template(tok):
    """The default template renders calls only with `documents` (its plain branch drops them): a
    tool-call turn is rejected, naming the switches, rather than trained as an empty answer."""
    _, rejections = recon(tok=tok).build(CALL_TURNS, None, sample_id="c")
    assert [x.reason for x in rejections] == ["tool_calls_not_rendered"]
    assert "messages[1]" in rejections[0].detail and "tool_calls_as_text" in rejections[0].detail


def test_tool_use_template_trains_the_call_turn_and_the_answer(tok):
    """Command R7B's "tool_use" template is the default's first branch without its `documents`
    condition (derived here): the generation prompt is written after every conversation, a call turn
    is the (empty) tool plan, the calls, `<|END_ACTION|>` and the closing eos, and an answer starts
    with `<|START_RESPONSE|>`, which the student writes itself there."""
    t = _with_template(tok, tok.chat_template.replace("{% if documents %}\n{% set tools = [] %}", "{% if true %}", 1))
    r = recon(tok=t)
    assert (r.eot, r.eot_closing, r.final_tail) == (
        "<|END_RESPONSE|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    )
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"c": "P"})},
    }
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {}}}]
    # this copy's preamble, cut short, lists no tools (the real one does): with them, the student would be
    # taught calls to tools it is not shown (tools_not_rendered); the render is the same without them
    _, rejections = r.build(msgs, tools, sample_id="u")
    assert [x.reason for x in rejections] == ["tools_not_rendered"]
    samples, rejections = r.build(msgs, None, sample_id="u")
    assert rejections == [] and len(samples) == 1
    got = runs(t, samples[0])
    assert got[0][1].endswith("<|USER_TOKEN|>Weather?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    assert got[1:] == [
        (
            1,
            '<|START_THINKING|><|END_THINKING|><|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", '
            '"parameters": {"c": "P"}}\n]<|END_ACTION|><|END_OF_TURN_TOKEN|>',
        ),
        (
            0,
            '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><|START_TOOL_RESULT|>[\n    {\n        "tool_call_id": "0",\n'
            '        "results": {\n            "0": "sunny"\n        },\n        "is_error": null\n    }\n]'
            "<|END_TOOL_RESULT|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        ),
        (1, "<|START_RESPONSE|>It is sunny." + END),
    ]
    full = reference(t, msgs, tools)
    assert full_text(t, samples[0]) == full[: len(full) - len(r.final_tail)]


def _with_template(tok, template: str):
    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


TURNS = "{%- for m in messages %}<|START_OF_TURN_TOKEN|>{{ m.role }}: {{ m.content }}"


@pytest.mark.parametrize(
    ("after_answer", "after_last", "closing", "tail"),
    [
        # the eos after every answer: trained
        (END, "", "<|END_OF_TURN_TOKEN|>", ""),
        # an eos only after the conversation's last turn (some fine-tunes' templates): not the turn's
        ("<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>", "", "<|END_OF_TURN_TOKEN|>"),
        # the next turn's header after every answer, even the last: no eos among them, not the turn's
        ("<|END_RESPONSE|><|START_OF_TURN_TOKEN|>", "", "", "<|START_OF_TURN_TOKEN|>"),
    ],
)
def test_closing_tokens_only_where_every_answer_has_them_through_the_eos(tok, after_answer, after_last, closing, tail):
    template = (
        TURNS + "{{ '" + after_answer + "' if m.role == 'assistant' else '<|END_OF_TURN_TOKEN|>' }}{%- endfor %}"
        "{{ '" + after_last + "' if not add_generation_prompt else '<|START_OF_TURN_TOKEN|>assistant: ' }}"
    )
    t = _with_template(tok, template)
    r = recon(tok=t)
    assert (r.eot, r.eot_closing, r.final_tail) == ("<|END_RESPONSE|>", closing, tail)
    samples, rejections = r.build(PLAIN, None, sample_id="x")
    assert rejections == []
    trained = [text for s in samples for m, text in runs(t, s)[1:] if m == 1]
    assert trained == ["Hello!<|END_RESPONSE|>" + closing, "Good.<|END_RESPONSE|>" + closing]
    last = samples[-1]
    full = reference(t, PLAIN)
    assert decode(t, last.prompt_ids + last.completion_ids) == full[: len(full) - len(tail)]


def test_another_end_token_before_the_closing_ones(tok):
    """A turn that ends with another special token (Command R's tool calls end <|END_ACTION|>) keeps the
    closing tokens after it."""
    template = (
        TURNS + "{{ ('<|END_ACTION|>' if m.content.startswith('!') else '<|END_RESPONSE|>') + '<|END_OF_TURN_TOKEN|>'"
        " if m.role == 'assistant' else '<|END_OF_TURN_TOKEN|>' }}{%- endfor %}"
        "{{ '<|START_OF_TURN_TOKEN|>assistant: ' if add_generation_prompt else '' }}"
    )
    t = _with_template(tok, template)
    r = recon(tok=t)
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "!act"}]
    samples, rejections = r.build(msgs, None, sample_id="a")
    assert rejections == [] and runs(t, samples[0])[1:] == [(1, "!act<|END_ACTION|><|END_OF_TURN_TOKEN|>")]
    assert r.stats["other_end_token"] == 1
