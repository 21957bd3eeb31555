"""Ministral 3 Reasoning (tests/templates/ministral3_reasoning.jinja, on the stand-in of
tests/support/family_standins.py): "[INST]user[/INST]answer</s>" turns after a default system prompt, no
generation prompt, calls as "[TOOL_CALLS]name[ARGS]{...}". The template reads no reasoning field: an
assistant turn's reasoning is a thinking content part, rendered "[THINK]R[/THINK]" before the answer, in every
turn (the history keeps it: one sample per conversation). Under reasoning = "template" (the default) the
reasoning is placed as that part renders it (open_reasoning.probe_thinking_part_form)."""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import full_text, recon, reference, runs

from orchestrator.open_reasoning import probe_thinking_part_form
from orchestrator.thinking_syntax import ThinkingSyntaxError

TOOLS = [
    {
        "type": "function",
        "function": {"name": "add", "description": "d", "parameters": {"type": "object", "properties": {"a": {}}}},
    }
]
FORM = "[THINK]{reasoning}[/THINK]"


@pytest.fixture(scope="module")
def tok():
    return standin("ministral3_reasoning")


def with_parts(msgs: list[dict]) -> list[dict]:
    """The messages as Mistral writes reasoning: content parts, a thinking part before the text."""
    out = []
    for m in msgs:
        r = m.get("reasoning_content")
        if r is None:
            out.append(m)
            continue
        text = [{"type": "text", "text": m["content"]}] if m.get("content") else []
        rest = {k: v for k, v in m.items() if k not in ("reasoning_content", "content")}
        out.append({**rest, "content": [{"type": "thinking", "thinking": r}, *text]})
    return out


def samples_of(r, msgs, tools=None):
    samples, rejections = r.build(msgs, tools, sample_id="s")
    assert rejections == []
    return [(s.prompt_ids, s.completion_ids, s.completion_mask) for s in samples]


def test_reasoning_is_placed_as_the_templates_thinking_part(tok):
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
    ]
    r = recon(tok=tok)
    assert r.reasoning_form_from_parts == FORM and (r.cfg.reasoning, r.cfg.reasoning_form) == ("think_tags", FORM)
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and len(samples) == 1
    assert runs(tok, samples[0]) == [
        (None, reference(tok, msgs[:1])),  # no generation prompt: the history's render
        (1, "[THINK]A greeting.[/THINK]Hello!</s>"),
        (0, "[INST]2+2?[/INST]"),
        (1, "[THINK]Add them.[/THINK]4</s>"),
    ]
    # the template's own render of the conversation with the reasoning as thinking parts, token for token
    assert full_text(tok, samples[0]) == reference(tok, with_parts(msgs))
    think = tok.convert_tokens_to_ids("[THINK]")
    assert samples[0].completion_ids.count(think) == 2  # the student's control token, not text


def test_thinking_parts_and_explicit_form_give_the_same_samples(tok):
    """Mistral's API answers with thinking parts ({"thinking": [text parts]}); think_tags with the form set by
    hand, and a reconstructor made from the converted config (as worker processes are), give the same ids."""
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
    ]
    parts = [
        *msgs[:2],
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "Add them."}]},
                {"type": "text", "text": "4"},
            ],
        },
    ]
    r = recon(tok=tok)
    want = samples_of(r, msgs)
    assert samples_of(r, parts) == want
    assert samples_of(recon(tok=tok, reasoning="think_tags", reasoning_form=FORM), msgs) == want
    from orchestrator.reconstruct import Reconstructor

    assert samples_of(Reconstructor(tok, r.cfg), msgs) == want


def test_tool_call_turn_with_reasoning(tok):
    msgs = [
        {"role": "user", "content": "2+2?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Use the tool.",
            "tool_calls": [
                {"id": "abcdefghi", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "4"},
        {"role": "assistant", "content": "4", "reasoning_content": "Got it."},
    ]
    samples, rejections = recon(tok=tok).build(msgs, TOOLS, sample_id="s")
    assert rejections == [] and len(samples) == 1
    assert [t for m, t in runs(tok, samples[0])[1:]] == [
        '[THINK]Use the tool.[/THINK][TOOL_CALLS]add[ARGS]{"a": 2}</s>',
        "[TOOL_RESULTS]4[/TOOL_RESULTS]",
        "[THINK]Got it.[/THINK]4</s>",
    ]


def test_drop_and_turns_without_reasoning_are_the_plain_render(tok):
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "Add."}]
    plain = [msgs[0], {"role": "assistant", "content": "4"}]
    dropped = samples_of(recon(tok=tok, reasoning="drop"), msgs)
    assert dropped == samples_of(recon(tok=tok), plain)
    assert [t for _, t in runs(tok, recon(tok=tok).build(plain, None, sample_id="s")[0][0])[1:]] == ["4</s>"]


def test_think_tags_without_a_form_names_template_first(tok):
    with pytest.raises(ThinkingSyntaxError) as e:
        recon(tok=tok, reasoning="think_tags")
    msg = str(e.value)
    assert 'set reasoning = "template"' in msg and repr(FORM) in msg


def render_with(template: str):
    from jinja2 import Environment

    t = Environment().from_string(template)
    return lambda msgs: t.render(messages=msgs)


PARTS = (
    "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}"
    "{% if p.type == 'text' %}{{ p.text }}{% elif p.type == 'thinking' %}"
)


@pytest.mark.parametrize(
    "template,form",
    [
        (
            PARTS + "{{ '<reflect>' + p.thinking + '</reflect>\\n' }}{% endif %}{% endfor %}{% endif %};{% endfor %}",
            "<reflect>{reasoning}</reflect>\n",
        ),
        (PARTS + "{{ p.thinking }}{% endif %}{% endfor %}{% endif %};{% endfor %}", None),  # no text opens the block
        (PARTS + "{{ p | tojson }}{% endif %}{% endfor %}{% endif %};{% endfor %}", None),  # the part as JSON
        (PARTS + "{% endif %}{% endfor %}{% endif %};{% endfor %}", None),  # thinking parts ignored
        ("{% for m in messages %}{{ m.content }};{% endfor %}", None),  # the list itself, as Python writes it
        ("{% for m in messages %}{{ m.content + '' }};{% endfor %}", None),  # raises on a list
    ],
)
def test_the_probe_reads_only_a_thinking_syntax(template, form):
    assert probe_thinking_part_form(render_with(template)) == form


def test_no_form_for_templates_that_render_the_reasoning_field_or_dump_parts():
    """LFM2.5 writes unknown parts as JSON (and places reasoning itself); Qwen3 reads reasoning_content."""
    from support.reconstruct_helpers import tokenizer_with

    for name in ("lfm2_5", "qwen3", "mistral_small_3_1"):
        tok = tokenizer_with(name)
        assert probe_thinking_part_form(lambda msgs: tok.apply_chat_template(msgs, tokenize=False)) is None, name
        assert recon(tok=tok).cfg.reasoning == "template", name


@pytest.mark.parametrize(
    "content", ["<think>\nAdd them.\n</think>\n\n4", "Add them.</think>4", "[THINK]Add them.[/THINK]4"]
)
def test_a_teachers_think_block_inside_content_is_written_in_the_students_syntax(tok, content):
    """A teacher served without a reasoning parser writes its block inside content: under the default it is
    the reasoning, trained as the student writes it (before: the <think> tags were trained as text, and a
    block in the student's own [THINK] tags was special_token_in_content)."""
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": content}]
    samples, rejections = recon(tok=tok).build(msgs, None, sample_id="s")
    assert rejections == [] and [t for _, t in runs(tok, samples[0])[1:]] == ["[THINK]Add them.[/THINK]4</s>"]


def test_drop_removes_a_block_in_the_students_own_tags(tok):
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "[THINK]Add them.[/THINK]4"}]
    plain = [msgs[0], {"role": "assistant", "content": "4"}]
    assert samples_of(recon(tok=tok, reasoning="drop"), msgs) == samples_of(recon(tok=tok), plain)
