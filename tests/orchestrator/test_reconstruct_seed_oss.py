"""ByteDance Seed-OSS (tests/templates/seed_oss.jinja, its real template, on the stand-in of
tests/support/family_standins.py): "<seed:bos>ROLE\\n" turns ended by "<seed:eos>", reasoning rendered by
the template as "<seed:think>R</seed:think>" before the answer in every assistant turn (the history keeps
it: one sample per conversation), calls as "<seed:tool_call>" blocks with one <parameter=...> per argument,
content trimmed."""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, reference, runs

TOOLS = [
    {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {}}}},
    }
]
HEADER = "<seed:bos>assistant\n"


@pytest.fixture(scope="module")
def tok():
    return standin("seed_oss")


def test_reasoning_is_rendered_by_the_template_and_kept_in_the_history(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Sure.", "reasoning_content": "Again."},
    ]
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<seed:eos>", "")
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and len(samples) == 1
    assert runs(tok, samples[0]) == [
        (None, reference(tok, msgs[:2], add_generation_prompt=True)),
        (1, "<seed:think>A greeting.</seed:think>\nHello!<seed:eos>"),
        (0, "<seed:bos>user\nMore<seed:eos>" + HEADER),
        (1, "<seed:think>Again.</seed:think>\nSure.<seed:eos>"),
    ]
    assert runs(tok, samples[0])[0][1].endswith("<seed:bos>user\nHi<seed:eos>" + HEADER)


def test_tool_calls_with_their_text(tok):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    samples, rejections = recon(tok=tok).build(msgs, TOOLS, sample_id="t")
    assert rejections == [] and runs(tok, samples[0])[1:] == [
        (
            1,
            "Let me look.\n\n<seed:tool_call>\n<function=f>\n<parameter=a>1</parameter>\n</function>\n</seed:tool_call><seed:eos>",
        ),
        (0, "<seed:bos>tool\n42<seed:eos>" + HEADER),
        (1, "It is 42.<seed:eos>"),
    ]


def test_content_the_template_trims_names_the_switch(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!\n"}]
    samples, rejections = recon(tok=tok).build(msgs, None, sample_id="w")
    assert samples == [] and [x.reason for x in rejections] == ["template_alters_content"]
    assert 'content_whitespace = "strip"' in rejections[0].detail
    samples, rejections = recon(tok=tok, content_whitespace="strip").build(msgs, None, sample_id="w")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "Hello!<seed:eos>")]


def test_think_tags_without_a_form_points_to_the_template_policy(tok):
    """Seed-OSS writes thinking as <seed:think> blocks and renders the reasoning field itself: think_tags with
    <think> tags (reasoning_form unset) is a config error whose fix names reasoning = "template" first."""
    with pytest.raises(ValueError, match="never <think>") as e:
        recon(tok=tok, reasoning="think_tags")
    assert 'set reasoning = "template"' in str(e.value) and "<seed:think>{reasoning}</seed:think>" in str(e.value)


def test_a_teachers_own_seed_think_block_inside_content_is_its_reasoning(tok):
    """A Seed-OSS teacher served without a reasoning parser writes "<seed:think>R</seed:think>A" in content: the
    reasoning, placed by the template as a reasoning field is, or dropped (before: special_token_in_content)."""
    field = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Sure.", "reasoning_content": "Again."},
    ]
    inline = [field[0], {"role": "assistant", "content": "<seed:think>Again.</seed:think>\nSure."}]

    def ids(r, msgs):
        samples, rejections = r.build(msgs, None, sample_id="s")
        assert rejections == []
        return [(s.prompt_ids, s.completion_ids, s.completion_mask) for s in samples]

    assert ids(recon(tok=tok), inline) == ids(recon(tok=tok), field)
    plain = [field[0], {"role": "assistant", "content": "Sure."}]
    assert ids(recon(tok=tok, reasoning="drop"), inline) == ids(recon(tok=tok), plain)
