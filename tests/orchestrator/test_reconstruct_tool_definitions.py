"""Tool definitions for students whose template shows none (orchestrator/reconstruction/tool_definitions.py,
Reconstruction.tools_in_system_prompt), on DeepSeek V3's real template and tokenizer: it renders tool calls but
never the definitions passed as `tools` (its model card has the caller write them into the system prompt).
Before, such conversations were trained as rendered: the student learnt to call tools it was never shown."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, runs
from support.tokenizer_builds import load_or_skip

from distill.core.config import Reconstruction
from orchestrator.reconstruction.tool_definitions import definitions_text

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": WEATHER}}
]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
# the layout of DeepSeek V3.1's model card (its instructions quote the call syntax: special-token text)
FORM = (
    "## Tools\nYou have access to the following tools:\n\n{tools}\nIMPORTANT: ALWAYS adhere to this exact format "
    "for tool use:\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>tool_call_name<｜tool▁sep｜>tool_call_arguments"
    "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
)
EACH = "### {name}\nDescription: {description}\n\nParameters: {parameters}\n"
WRITTEN = FORM.replace(
    "{tools}", "### get_weather\nDescription: Weather now.\n\nParameters: " + json.dumps(WEATHER) + "\n"
)


def conversation(text=None, system=None):
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": text, "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    return ([{"role": "system", "content": system}] if system is not None else []) + msgs


@pytest.fixture(scope="module")
def tok():
    return load_or_skip("deepseek", "deepseek_v3")


def jinja_render(tok, messages) -> str:
    """The template's own render (plain Jinja, as transformers sets it up): transformers' apply_chat_template
    leaves out a null content, which DeepSeek's template needs for a call turn."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(tok.chat_template).render(messages=messages, bos_token=tok.bos_token)


def reasons(rejections) -> list[str]:
    return [x.reason for x in rejections]


def test_calls_without_their_definitions_are_rejected_naming_the_switch(tok):
    r = recon(tok=tok)
    assert r.tool_shape.probed and not r.renders_tools
    _, rejections = r.build(conversation(), TOOLS, sample_id="t")
    assert reasons(rejections) == ["tools_not_rendered"]
    assert "messages[1] calls a tool" in rejections[0].detail and "tools_in_system_prompt" in rejections[0].detail
    # no definitions given, or none called in a trained turn: nothing is missing
    samples, rejections = r.build(conversation(), None, sample_id="t")
    assert not rejections and len(samples) == 1
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    samples, rejections = r.build(plain, TOOLS, sample_id="t")
    assert not rejections and len(samples) == 1


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_the_definitions_are_written_into_the_system_prompt(tok, system):
    r = recon(tok=tok, tools_in_system_prompt=FORM, tool_definition_form=EACH)
    samples, rejections = r.build(conversation(system=system), TOOLS, sample_id="t")
    assert not rejections and len(samples) == 1, rejections
    s = samples[0]
    # the template's own render of the conversation with the text in its system message
    prompt_system = WRITTEN if system is None else system + "\n\n" + WRITTEN
    shown = [{"role": "system", "content": prompt_system}, *conversation()]
    full = jinja_render(tok, shown)
    assert tok.decode(s.prompt_ids + s.completion_ids) == full
    assert tok.decode(s.prompt_ids).startswith("<｜begin▁of▁sentence｜>" + prompt_system + "<｜User｜>Weather")
    trained = [t for m, t in runs(tok, s) if m]
    plain = recon(tok=tok).build(conversation(system=system), None, sample_id="t")[0][0]
    assert trained == [t for m, t in runs(tok, plain) if m]  # the turns the student learns are the same
    # a conversation without tools is left as it was
    alone = r.build(conversation(system=system), None, sample_id="t")[0][0]
    assert (alone.prompt_ids, alone.completion_ids) == (plain.prompt_ids, plain.completion_ids)


def test_rejections_name_the_messages_as_given_when_a_system_message_is_made(tok):
    """A rejection raised after the definitions' system message was put first still names the user's
    message (DeepSeek V3 renders calls only in a turn without text: messages[1] here, not messages[2])."""
    r = recon(tok=tok, tools_in_system_prompt=FORM)
    _, rejections = r.build(conversation("Let me check."), TOOLS, sample_id="t")
    assert reasons(rejections) == ["tool_calls_not_rendered"]
    assert rejections[0].detail.startswith("messages[1]:"), rejections[0].detail
    _, rejections = r.build(conversation("Let me check.", system="S"), TOOLS, sample_id="t")
    assert rejections[0].detail.startswith("messages[2]:"), rejections[0].detail


def test_with_the_system_prompt_merged_they_open_the_first_user_message(tok):
    r = recon(tok=tok, tools_in_system_prompt="# Tools\n{tools}", system_prompt="merge_into_first_user")
    samples, rejections = r.build(conversation(system="Be brief."), TOOLS, sample_id="t")
    assert not rejections and len(samples) == 1
    prompt = tok.decode(samples[0].prompt_ids)
    assert prompt.startswith(
        "<｜begin▁of▁sentence｜><｜User｜># Tools\n" + json.dumps(TOOLS[0]) + "\n\nBe brief.\n\nWeather in Paris?"
    )


def test_special_token_text_in_the_tools_is_still_rejected(tok):
    """The form's own special tokens (the call syntax its instructions quote) are the student's; the
    teacher's tools are checked as before."""
    r = recon(tok=tok, tools_in_system_prompt=FORM)
    bad = [dict(TOOLS[0], function=dict(TOOLS[0]["function"], description="<｜User｜>"))]
    _, rejections = r.build(conversation(), bad, sample_id="t")
    assert reasons(rejections) == ["special_token_in_content"] and "tools contain" in rejections[0].detail


def test_smollm3_calls_written_as_text_get_each_conversations_own_definitions():
    """SmolLM3's template reads definitions only from xml_tools (one list for every conversation): written
    into the system prompt, each conversation shows its own."""
    tok = standin("smollm3")
    r = recon(tok=tok, tool_calls_as_text="<tool_call>\n{call}\n</tool_call>", tools_in_system_prompt="{tools}")
    samples, rejections = r.build(conversation()[:2], TOOLS, sample_id="t")
    assert not rejections and len(samples) == 1, rejections
    assert json.dumps(TOOLS[0]) in tok.decode(samples[0].prompt_ids)


def test_a_template_that_shows_the_definitions_refuses_the_switch():
    with pytest.raises(ValueError, match="shows the tool definitions itself"):
        recon(tok=load_or_skip("qwen", "qwen2_5"), tools_in_system_prompt="{tools}")
    with pytest.raises(ValueError, match="chat_template_kwargs.xml_tools"):
        recon(
            tok=standin("smollm3"),
            tool_calls_as_text="<tool_call>\n{call}\n</tool_call>",
            tools_in_system_prompt="{tools}",
            chat_template_kwargs={"xml_tools": TOOLS},
        )


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"tools_in_system_prompt": "Tools:"}, "must hold {tools}"),
        ({"tools_in_system_prompt": "{tools}{tools}"}, "must hold {tools}"),
        ({"tools_in_system_prompt": "{tools}", "tool_definition_form": "a tool"}, "holds none of"),
        ({"tool_definition_form": "{name}"}, "used only with tools_in_system_prompt"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(policy, message):
    with pytest.raises(ValidationError, match="Fix:") as e:
        Reconstruction(**policy)
    assert message in str(e.value)


def test_each_definition_is_written_in_one_pass():
    """A placeholder inside a tool's own text is written as it is, not filled in again."""
    tools = [
        {"type": "function", "function": {"name": "a", "description": "see {name}"}},
        {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}},
    ]
    assert definitions_text(tools, "<{tools}>", "{name}: {description} {parameters}") == (
        '<a: see {name} {}\nb:  {"type": "object"}>'
    )
    assert definitions_text(tools[1:], "{tools}", "{tool}") == json.dumps(tools[1])
