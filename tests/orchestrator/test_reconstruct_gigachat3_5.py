"""GigaChat3.5 (tests/templates/gigachat3_5.jinja: its real template, llama.cpp's models/templates copy, on the
stand-in of tests/support/family_standins.py), and the rule its reasoning mode needs
(orchestrator/reconstruction/thinking_blocks.py, `_with_empty_reasoning`).

The template writes role names as text ("assistant<|role_sep|>\\n"), a default "developer system" message, an
empty system message and, after each user turn, an "available functions" message; the last assistant turn of a
render ends with the eos, the others with "<|message_sep|>\\n\\n". Calls are `<｜GCML｜tool_calls>` blocks with
dict arguments. Reasoning (`reasoning_content`) is rendered as "<think>R</think>\\n\\n" before the answer, for
the turns after the last user message only.

With `reasoning = true` the generation prompt ends "assistant<|role_sep|>\\n<think>", and the template writes a
block only for a turn whose reasoning field is set. A turn without reasoning was trained after that prompt with
think_tags' default layout ("\\n\\n</think>\\n\\n" + answer), which is not how this template writes an empty
block ("<think></think>\\n\\n"), and a tool-call turn was rejected. Now such a turn is the template's own render
with an empty reasoning field, under the "template" and "drop" policies.
"""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import TWO_TURNS, full_text, recon, reference, runs, trained

TOOLS = [
    {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"x": {}}}},
    }
]
HEADER = "assistant<|role_sep|>\n"
ON = {"reasoning": True}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": json.dumps({"x": 1})}}
CALLS = [
    {"role": "user", "content": "Q"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "1", "tool_call_id": "c1"},
    {"role": "assistant", "content": "Done."},
]
GCML = (
    '<｜GCML｜tool_calls>\n<｜GCML｜invoke name="f">\n<｜GCML｜parameter name="x" string="false">1'
    "</｜GCML｜parameter>\n</｜GCML｜invoke>\n</｜GCML｜tool_calls>"
)


@pytest.fixture(scope="module")
def giga():
    return standin("gigachat3_5")


def test_golden_two_turns_in_one_sample(giga):
    r = recon(tok=giga)
    assert (r.eot, r.final_tail) == ("<|message_sep|>", "")
    samples, rejections = r.build(TWO_TURNS, None, sample_id="s")
    assert rejections == [] and len(samples) == 1
    assert full_text(giga, samples[0]) == reference(giga, TWO_TURNS)
    got = runs(giga, samples[0])
    assert got[0][1].startswith("<s>developer system<|role_sep|>\n")
    assert got[0][1].endswith(
        "user<|role_sep|>\nHi<|message_sep|>\n\navailable functions<|role_sep|>\n[]<|message_sep|>\n\n" + HEADER
    )
    assert got[1:] == [
        (1, "Hello!<|message_sep|>"),
        (
            0,
            "\n\nuser<|role_sep|>\nFine<|message_sep|>\n\navailable functions<|role_sep|>\n[]<|message_sep|>\n\n"
            + HEADER,
        ),
        (1, "Good.<|message_sep|>"),
    ]


def test_tool_calls_and_reasoning_as_the_template_writes_them(giga):
    r = recon(tok=giga)
    samples, rejections = r.build(CALLS, TOOLS, sample_id="s")
    assert rejections == [] and len(samples) == 1
    assert trained(giga, samples[0]) == [GCML + "<|message_sep|>", "Done.<|message_sep|>"]
    reasoned = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "reasoning_content": "R"}]
    samples, rejections = r.build(reasoned, None, sample_id="s")
    assert rejections == [] and trained(giga, samples[0]) == ["<think>R</think>\n\nHello!<|message_sep|>"]


@pytest.mark.parametrize("policy", ["template", "drop"])
def test_reasoning_on_a_turn_without_reasoning_closes_the_templates_own_empty_block(giga, policy):
    """Before: "\\n\\n</think>\\n\\nHello!" (think_tags' layout, which this template never writes)."""
    r = recon(tok=giga, reasoning=policy, chat_template_kwargs=ON)
    msgs = TWO_TURNS[:2]
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and len(samples) == 1
    got = runs(giga, samples[0])
    assert got[0][1].endswith(HEADER + "<think>") and got[1:] == [(1, "</think>\n\nHello!<|message_sep|>")]
    own = [msgs[0], dict(msgs[1], reasoning_content="")]  # the template's render with an empty reasoning field
    assert full_text(giga, samples[0]) == reference(giga, own, reasoning=True)
    assert r.stats["opened_reasoning_turns"] == 0


def test_reasoning_on_with_and_without_reasoning_share_one_layout(giga):
    r = recon(tok=giga, chat_template_kwargs=ON)
    msgs = [*TWO_TURNS[:3], dict(TWO_TURNS[3], reasoning_content="R")]
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and [trained(giga, s) for s in samples] == [
        ["</think>\n\nHello!<|message_sep|>"],
        ["R</think>\n\nGood.<|message_sep|>"],
    ]


@pytest.mark.parametrize("policy", ["template", "drop"])
def test_reasoning_on_a_tool_call_turn_is_trained(giga, policy):
    """Before: template_mismatch ("no render shows how the student continues from it into the tool call")."""
    r = recon(tok=giga, reasoning=policy, chat_template_kwargs=ON)
    samples, rejections = r.build(CALLS, TOOLS, sample_id="s")
    assert rejections == [] and [trained(giga, s) for s in samples] == [
        ["</think>\n\n" + GCML + "<|message_sep|>"],
        ["</think>\n\nDone.<|message_sep|>"],
    ]
    own = [CALLS[0], dict(CALLS[1], content="", reasoning_content="")]  # null content: transformers 5 drops it
    assert full_text(giga, samples[0]) == reference(giga, own, TOOLS, reasoning=True)


def test_think_tags_keeps_its_form_and_names_the_fix_for_calls(giga):
    default = recon(tok=giga, reasoning="think_tags", chat_template_kwargs=ON)
    samples, _ = default.build(TWO_TURNS[:2], None, sample_id="s")
    assert trained(giga, samples[0]) == [
        "\n\n</think>\n\nHello!<|message_sep|>"
    ]  # "<think>\n{reasoning}\n</think>\n\n"
    # a turn without reasoning gets the form's own empty block (before: the default form's)
    form = recon(
        tok=giga, reasoning="think_tags", reasoning_form="<think>{reasoning}</think>\n\n", chat_template_kwargs=ON
    )
    msgs = [*TWO_TURNS[:3], dict(TWO_TURNS[3], reasoning_content="R")]
    samples, rejections = form.build(msgs, None, sample_id="s")
    assert rejections == [] and [trained(giga, s) for s in samples] == [
        ["</think>\n\nHello!<|message_sep|>"],
        ["R</think>\n\nGood.<|message_sep|>"],
    ]
    _, rejections = default.build(CALLS, TOOLS, sample_id="s")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert 'Fix: set reasoning = "template" or "drop"' in rejections[0].detail
