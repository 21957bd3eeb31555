"""ServiceNow Apriel 1.5 15B Thinker (tests/templates/apriel1_5.jinja: its template with Unsloth's fixes, as
llama.cpp's models/templates keeps it; the stand-in of tests/support/family_standins.py). An answer ends
"\\n<|end|>\\n</s>": trained through <|end|>, the "\\n</s>" after it is the next prompt's context. The template
writes a tool call's id only when a message follows the call turn: the student writes the calls without
ids (the render with the turn last), and the next turn's prompt shows them with ids, so a call turn is its
own sample. Arguments are pasted as given (`|string`): the JSON string the API returned."""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import TWO_TURNS, recon, reference, runs

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
CALLS = '\n<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>'
LOOP = [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    {"role": "assistant", "content": "It is sunny."},
]


@pytest.fixture(scope="module")
def tok():
    return standin("apriel1_5")


def test_answers_chain_each_trained_through_end(tok):
    samples, rejections = recon(tok=tok).build(TWO_TURNS, None, sample_id="a")
    assert rejections == [] and len(samples) == 1
    got = runs(tok, samples[0])
    assert [text for mask, text in got if mask == 1] == ["Hello!\n<|end|>", "Good.\n<|end|>"]
    assert got[2] == (0, "\n</s><|user|>\nFine\n<|end|>\n<|assistant|>\n")
    assert "".join(text for _, text in got) + "\n</s>" == reference(tok, TWO_TURNS)


def test_a_call_turn_is_trained_without_the_ids_its_later_render_shows(tok):
    samples, rejections = recon(tok=tok).build(LOOP, TOOLS, sample_id="c")
    assert rejections == [] and len(samples) == 2
    for s, k, trained in zip(samples, (1, 3), (CALLS + "\n<|end|>", "It is sunny.\n<|end|>")):
        prompt = reference(tok, LOOP[:k], TOOLS, as_string=True, add_generation_prompt=True)
        last = reference(tok, LOOP[: k + 1], TOOLS, as_string=True)  # the turn rendered last
        assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
        assert runs(tok, s)[1:] == [(1, trained)] and last == prompt + trained + "\n</s>"
    followed = reference(tok, LOOP[:3], TOOLS, as_string=True)  # the call turn with a message after it
    assert CALLS.replace("}}]", '}, "id": "c1"}]') in followed
