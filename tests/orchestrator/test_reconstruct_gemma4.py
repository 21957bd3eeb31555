"""Gemma 4 (tests/templates/gemma4.jinja, on the stand-in of tests/support/family_standins.py) and
the template shape it brought: with thinking off, the generation prompt is the turn's header then an
empty thought channel, "<|turn>model\\n<|channel>thought\\n<channel|>", which no rendered turn shows
(the template strips thought channels from every model turn's content). Before, every conversation
was a template_mismatch: no Gemma 4 student could be trained. The student answers right after the
channel; the turn is what the template renders after the header, proven from renders
(turns.TurnLocator.dropped_opening, _after_dropped_block).
"""

from __future__ import annotations

import copy
import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import TWO_TURNS, full_text, recon, reference, runs, tokenizer_with

from distill.core.config import Reconstruction

CHANNEL = "<|channel>thought\n<channel|>"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
CALL_TEXT = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'


@pytest.fixture(scope="module", params=["gemma4", "gemma4_interleaved"])
def tok(request):
    """Gemma 4's template, and the 31B's interleaved one (test_reconstruct_gemma4_interleaved.py): the same here."""
    return standin(request.param)


def checked(tok, r, messages, tools=None):
    """The samples of `messages`, each checked against the template: its prompt is the render of the
    history before its turn with the generation prompt, and its trained text (the end token included)
    is what the template renders for the turn after the turn's header "<|turn>model\\n"."""
    samples, rejections = r.build(messages, tools, sample_id="g")
    assert rejections == [], rejections
    answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(samples) == len(answers)  # the history never shows the channel: one sample per turn
    for s, k in zip(samples, answers):
        prompt = reference(tok, messages[:k], tools, add_generation_prompt=True)
        assert prompt.endswith("<|turn>model\n" + CHANNEL)
        assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
        trained = full_text(tok, s)[len(prompt) :]
        assert reference(tok, messages[: k + 1], tools) == reference(tok, messages[:k], tools) + (
            "<|turn>model\n" + trained + "\n"
        )
    return samples


def test_each_answer_after_the_empty_thought_channel(tok):
    r = recon(tok=tok)
    assert r.dropped_opening == CHANNEL
    msgs = [{"role": "system", "content": "Be brief."}, *TWO_TURNS]
    samples = checked(tok, r, msgs)
    assert [runs(tok, s)[1:] for s in samples] == [[(1, "Hello!<turn|>")], [(1, "Good.<turn|>")]]
    assert r.stats["dropped_opening_turns"] == 2


def test_tool_call_turn_text_beside_it_and_the_answer_after_the_result(tok):
    r = recon(tok=tok)
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    samples = checked(tok, r, msgs, TOOLS)
    assert [runs(tok, s)[1:] for s in samples] == [
        [(1, CALL_TEXT + "Let me check.<turn|>")],
        [(1, "It is sunny.<turn|>")],
    ]


def test_reasoning_and_whitespace_name_their_switches(tok):
    reasoned = [TWO_TURNS[0], {"role": "assistant", "content": "Hello!", "reasoning_content": "R"}]
    _, rejections = recon(tok=tok).build(reasoned, None, sample_id="r")
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"] and 'reasoning = "' in rejections[0].detail
    samples, rejections = recon(tok=tok, reasoning="drop").build(reasoned, None, sample_id="r")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "Hello!<turn|>")]
    spaced = [TWO_TURNS[0], {"role": "assistant", "content": " Hello!\n"}]
    _, rejections = recon(tok=tok).build(spaced, None, sample_id="w")
    assert [x.reason for x in rejections] == ["template_alters_content"]
    assert 'content_whitespace = "strip"' in rejections[0].detail
    samples, _ = recon(tok=tok, content_whitespace="strip").build(spaced, None, sample_id="w")
    assert runs(tok, samples[0])[1:] == [(1, "Hello!<turn|>")]


def test_thinking_on_the_prompt_is_the_header_and_turns_chain(tok):
    """enable_thinking: no channel in the prompt, so nothing is dropped and the plain cut holds."""
    r = recon(tok=tok, chat_template_kwargs={"enable_thinking": True})
    assert r.dropped_opening == ""
    samples, rejections = r.build(TWO_TURNS, None, sample_id="t")
    assert rejections == [] and len(samples) == 1
    assert [m for m, _ in runs(tok, samples[0])[1:]] == [1, 0, 1]
    assert runs(tok, samples[0])[0][1].startswith("<bos><|turn>system\n<|think|>")  # (the interleaved: + "\n")


def test_text_after_the_header_that_the_template_keeps_is_not_dropped():
    """A generation prompt that adds text after the header which a turn's render keeps when its content
    starts with it: no proof that the student continues after it, so still a template_mismatch, now
    saying so."""
    from orchestrator.reconstruct import Reconstructor

    t = copy.deepcopy(tokenizer_with(None))  # SmolLM2's, with the template below
    t.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\nSure: ' }}{%- endif %}"
    )
    r = Reconstructor(t, Reconstruction())
    assert r.dropped_opening == ""
    _, rejections = r.build(TWO_TURNS[:2], None, sample_id="k")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert "'Sure: '" in rejections[0].detail and "nothing proves" in rejections[0].detail


FORM = "<|channel>thought\n{reasoning}<channel|>"
THINKING = {"enable_thinking": True}


def thinking(tok, **policy):
    return recon(tok=tok, reasoning="think_tags", reasoning_form=FORM, chat_template_kwargs=THINKING, **policy)


def test_thinking_on_reasoning_is_trained_in_the_thought_channel(tok):
    """With thinking on the prompt ends with the turn's header and the model writes its thought channel
    first; the template strips the channel from every model turn, the last one too, so no render shows
    it. With reasoning_form set to the channel, each answer is trained as the channel holding the
    teacher's reasoning, then the turn as rendered: proven by the template rendering the turn with
    that content exactly as without the channel. Before, the reasoning could only be trained in <think>
    tags, which a Gemma 4 student does not write. The history never shows the channel: one sample per
    answer. A thinking block the teacher wrote inside content goes in the channel too."""
    r = thinking(tok)
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
        {"role": "user", "content": "Fine"},
        {"role": "assistant", "content": "<think>\nBe kind.\n</think>\n\nGood."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="t")
    assert rejections == [] and [s.sample_id for s in samples] == ["t/turn1", "t/turn2"]
    for s, k, reasoning, answer in zip(samples, (1, 3), ("Greet back.", "Be kind."), ("Hello!", "Good.")):
        prompt = reference(tok, TWO_TURNS[:k], add_generation_prompt=True, **THINKING)
        assert prompt.endswith("<turn|>\n<|turn>model\n") and "<|think|>" in prompt
        assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
        block = FORM.replace("{reasoning}", reasoning)
        assert runs(tok, s)[1:] == [(1, block + answer + "<turn|>")]
        with_block = dict(TWO_TURNS[k], content=block + answer)
        assert reference(tok, [*TWO_TURNS[:k], with_block], **THINKING) == prompt + answer + "<turn|>\n"
    assert r.stats["dropped_reasoning_turns"] == 2


def test_thinking_on_a_teachers_thought_channel_inside_content_is_its_reasoning(tok):
    """A Gemma 4 teacher served without a reasoning parser writes its thought channel in content: read as the
    reasoning, trained as a reasoning field is (before: special_token_in_content)."""
    field = [TWO_TURNS[0], {"role": "assistant", "content": "Good.", "reasoning_content": "Be kind."}]
    inline = [TWO_TURNS[0], {"role": "assistant", "content": "<|channel>thought\nBe kind.<channel|>Good."}]
    got = [thinking(tok).build(m, None, sample_id="t") for m in (field, inline)]
    assert got[1][1] == [] and [s.completion_ids for s in got[1][0]] == [s.completion_ids for s in got[0][0]]
    assert runs(tok, got[1][0][0])[1:] == [(1, "<|channel>thought\nBe kind.<channel|>Good.<turn|>")]


def test_thinking_on_a_tool_call_turn_thinks_before_its_call(tok):
    r = thinking(tok)
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL], "reasoning_content": "Need a tool."},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    samples, rejections = r.build(msgs, TOOLS, sample_id="c")
    assert rejections == []
    assert [runs(tok, s)[1:] for s in samples] == [
        [(1, "<|channel>thought\nNeed a tool.<channel|>" + CALL_TEXT + "Let me check.<turn|>")],
        [(1, "It is sunny.<turn|>")],
    ]


def test_reasoning_form_after_the_empty_channel_of_thinking_off_names_the_fixes(tok):
    """Thinking off: the prompt already holds the empty thought channel, so the reasoning has nowhere
    to go; the rejection says to drop it or turn thinking on."""
    r = recon(tok=tok, reasoning="think_tags", reasoning_form=FORM)
    reasoned = [TWO_TURNS[0], dict(TWO_TURNS[1], reasoning_content="R")]
    _, rejections = r.build(reasoned, None, sample_id="o")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert 'reasoning = "drop"' in rejections[0].detail and "chat_template_kwargs" in rejections[0].detail
    samples, rejections = r.build(TWO_TURNS[:2], None, sample_id="o")  # no reasoning: as before
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "Hello!<turn|>")]


def test_without_the_form_the_reasoning_not_rendered_fix_names_it(tok):
    reasoned = [TWO_TURNS[0], dict(TWO_TURNS[1], reasoning_content="R")]
    _, rejections = recon(tok=tok, chat_template_kwargs=THINKING).build(reasoned, None, sample_id="n")
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"]
    assert "reasoning_form" in rejections[0].detail and "<|channel>thought" in rejections[0].detail


def test_think_tags_without_a_form_names_the_templates_own_syntax(tok):
    """reasoning = "think_tags" with reasoning_form unset writes <think> tags, which Gemma 4 never writes: a
    config error at construction naming the thought channel as the form; an explicit form is the user's choice.
    The reasoning_not_rendered fix names the template's own form, with the newline it writes."""
    with pytest.raises(ValueError, match="never <think>") as e:
        recon(tok=tok, reasoning="think_tags")
    assert f"reasoning_form = {FORM!r}" in str(e.value) and 'reasoning = "template"' not in str(e.value)
    from orchestrator.open_reasoning import THINK_FORM

    samples, rejections = recon(tok=tok, reasoning="think_tags", reasoning_form=THINK_FORM).build(
        TWO_TURNS[:2], None, sample_id="t"
    )
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "Hello!<turn|>")]
    reasoned = [TWO_TURNS[0], dict(TWO_TURNS[1], reasoning_content="R")]
    _, rejections = recon(tok=tok).build(reasoned, None, sample_id="n")
    assert f"reasoning_form = {FORM!r}, the template's own thinking syntax" in rejections[0].detail


@pytest.mark.parametrize(
    "template,form",
    [
        ("{{ '[THINK]' + m + '[/THINK]' }}", "[THINK]{reasoning}[/THINK]"),  # Magistral, Ministral 3
        ("{{ '<seed:think>' }}{{ r }}{{ '</seed:think>' }}", "<seed:think>{reasoning}</seed:think>"),
        ("{{ '<|START_THINKING|>' + r + '<|END_THINKING|>' }}", "<|START_THINKING|>{reasoning}<|END_THINKING|>"),
        ("{{ '[THINK]' }} and {{ '<think>' }}", None),  # writes <think> too: nothing to say
        ("{{ '[THINK]' }} alone", None),  # one tag is no syntax
        ("{{ '[THINK][/THINK]<seed:think></seed:think>' }}", None),  # two syntaxes: not one to name
    ],
)
def test_template_thinking_form(template, form):
    from orchestrator.thinking_syntax import template_thinking_form

    assert template_thinking_form(template) == form
