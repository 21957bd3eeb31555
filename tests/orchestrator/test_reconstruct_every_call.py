"""A turn with several tool calls is trained only where the template renders every one of them
(reconstruction/rendered_checks.py).

GigaChat3's real template (tests/templates/gigachat3.jinja, on the stand-in of
tests/support/family_standins.py) renders a turn's first call only. The check before looked
for each call's name in the turn's render, and two calls of one function share it: such a turn
was trained with one call, followed by two results - a wrong sample, silently. Now a render
without each call in turn must differ from the turn's render (also for a single call, whose name the
template's own text in the turn may hold: a constructed template). Qwen2.5's real template renders
every call: the same turns are trained there. GigaChat3's other turns, for the record of what
the family trains: the role names are text, each turn ends with <|message_sep|>, and a call is a
"function call" message after the assistant's (empty) one.
"""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, reference, runs
from support.tokenizer_builds import load_or_skip

TOOLS = [
    {"type": "function", "function": {"name": n, "description": "d", "parameters": {"type": "object"}}}
    for n in ("f", "g")
]


def call(cid: str, name: str, args: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def calls_turn(*calls: dict) -> list[dict]:
    return [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": list(calls)},
        *({"role": "tool", "tool_call_id": c["id"], "content": str(k)} for k, c in enumerate(calls)),
        {"role": "assistant", "content": "Done."},
    ]


@pytest.fixture(scope="module")
def giga():
    return standin("gigachat3")


@pytest.mark.parametrize(
    "calls",
    [
        (call("a", "f", '{"x": 1}'), call("b", "f", '{"x": 1}')),  # the same call twice
        (call("a", "f", '{"x": 1}'), call("b", "f", '{"x": 2}')),  # one function, other arguments
        (call("a", "f", "{}"), call("b", "g", "{}")),  # two functions (the name check found "g" in "<|message_sep|>")
    ],
)
def test_a_template_that_renders_the_first_call_only_is_refused(giga, calls):
    samples, rejections = recon(tok=giga).build(calls_turn(*calls), TOOLS, sample_id="c")
    assert samples == [] and [r.reason for r in rejections] == ["tool_calls_not_rendered"]
    assert "renders only some of this turn's 2 tool calls" in rejections[0].detail


def test_one_call_per_turn_is_trained_as_the_template_writes_it(giga):
    msgs = calls_turn(call("a", "f", '{"x": 1}'))
    r = recon(tok=giga)
    assert (r.eot, r.final_tail) == ("<|message_sep|>", "\n\n")
    samples, rejections = r.build(msgs, TOOLS, sample_id="c")
    assert rejections == [] and len(samples) == 1
    head = "assistant<|role_sep|>\n"
    assert runs(giga, samples[0])[0] == (None, reference(giga, msgs[:1], TOOLS, add_generation_prompt=True))
    assert runs(giga, samples[0])[0][1].endswith("user<|role_sep|>\nQ<|message_sep|>\n\n" + head)
    assert runs(giga, samples[0])[1:] == [
        (1, '<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "f", "arguments": {"x": 1}}<|message_sep|>'),
        (0, "\n\nfunction result<|role_sep|>\n0<|message_sep|>\n\n" + head),
        (1, "Done.<|message_sep|>"),
    ]


def test_a_template_that_renders_every_call_trains_them():
    tok = load_or_skip("qwen", "qwen2_5")
    for calls in [
        (call("a", "f", '{"x": 1}'), call("b", "f", '{"x": 1}')),
        (call("a", "f", "{}"), call("b", "g", "{}")),
    ]:
        samples, rejections = recon(tok=tok).build(calls_turn(*calls), TOOLS, sample_id="c")
        assert rejections == [] and len(samples) == 1
        trained = [t for m, t in runs(tok, samples[0])[1:] if m]
        assert trained[0].count("<tool_call>") == 2


#: a template that writes "answer: " before each answer's content and renders no tool calls (constructed)
ANSWER_LABEL = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}answer: {% endif %}"
    "{{ m.content or '' }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("name", ["answer", "f"])
def test_a_call_the_template_never_renders_is_refused_whatever_its_name(name):
    """The template's own text in the turn held the name "answer", so such a call passed the name check
    and the turn was trained as "answer: " and the end token: an empty answer instead of a call."""
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())  # its own: tokenizer_with's are shared
    tok.chat_template = ANSWER_LABEL
    msgs = calls_turn(call("a", name, "{}"))[:2]
    tools = [{"type": "function", "function": {"name": name, "description": "d", "parameters": {"type": "object"}}}]
    samples, rejections = recon(tok=tok).build(msgs, tools, sample_id="c")
    assert samples == [] and [r.reason for r in rejections] == ["tool_calls_not_rendered"]
    assert f"does not render tool call {name!r}" in rejections[0].detail


#: renders a turn's first call only, and raises on a call whose name is not a tool's (constructed)
FIRST_KNOWN_CALL = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}{% if m.tool_calls %}"
    "{% set c = m.tool_calls[0].function %}"
    "{% if c.name not in tools | map(attribute='function') | map(attribute='name') | list %}"
    "{{ raise_exception('unknown tool ' + c.name) }}{% endif %}<tool_call>{{ c.name }}</tool_call>{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_refuses_unknown_names_is_checked_by_leaving_each_call_out():
    """The render with marked names raises; the renders without each call decide."""
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())
    tok.chat_template = FIRST_KNOWN_CALL
    r = recon(tok=tok)
    samples, rejections = r.build(calls_turn(call("a", "f", "{}"), call("b", "f", "{}")), TOOLS, sample_id="c")
    assert samples == [] and [x.reason for x in rejections] == ["tool_calls_not_rendered"]
    samples, rejections = r.build(calls_turn(call("a", "g", "{}")), TOOLS, sample_id="c")
    assert rejections == [] and runs(tok, samples[0])[1] == (1, "<tool_call>g</tool_call><|im_end|>")


@pytest.mark.parametrize("reasoning", ["name", "tool_call", "f"])
def test_short_reasoning_found_in_the_calls_text_is_not_taken_for_rendered(reasoning):
    """Qwen2.5's template renders no reasoning. A short reasoning field ("name") was found in the call's JSON
    that the template writes in the turn, taken for rendered, and the turn trained without it, silently.
    Reasoning under 32 characters is proven by a render with a mark in its place."""
    tok = load_or_skip("qwen", "qwen2_5")
    msgs = calls_turn(call("a", "f", '{"x": 1}'))
    msgs[1]["reasoning_content"] = reasoning
    samples, rejections = recon(tok=tok).build(msgs, TOOLS, sample_id="r")
    assert samples == [] and [r.reason for r in rejections] == ["reasoning_not_rendered"]
    # a template that renders it (Qwen3's) trains it, short as it is
    qwen3 = load_or_skip("qwen", "qwen3")
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": reasoning}]
    samples, rejections = recon(tok=qwen3).build(msgs, None, sample_id="r")
    assert rejections == [] and runs(qwen3, samples[0])[1:] == [(1, f"<think>\n{reasoning}\n</think>\n\nA<|im_end|>")]
