"""Tool calls for students whose template renders no `tool_calls` (they write calls as text):
`tool_calls_as_text` writes each turn's calls after its content in the student's own form, checked
against the template's render of that text; and templates that drop tool messages refuse conversations
whose answers would be trained without the results they read (`tool_results_not_rendered`)."""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import full_text, recon, reference, trained

from distill.core.config import ConfigError, load_config

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ONE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def call(city="Paris"):
    args = json.dumps({"city": city})
    return {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": args}}


def conversation(content="", calls=1, city="Paris"):
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": content, "tool_calls": [call(city)] * calls},
        {"role": "tool", "content": "sunny, 21", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]


# SmolLM3's template shows tool definitions passed as xml_tools, not as tools (test_tool_definitions_... below)
KWARGS = {"smollm3": {"xml_tools": TOOLS}}
FORMS = [
    ("smollm3", "<tool_call>\n{call}\n</tool_call>", f"<tool_call>\n{ONE}\n</tool_call>"),
    ("granite3_3", "<|tool_call|>{calls}", f"<|tool_call|>[{ONE}]"),
    ("lfm2", "<|tool_call_start|>{calls}<|tool_call_end|>", f"<|tool_call_start|>[{ONE}]<|tool_call_end|>"),
]


@pytest.mark.parametrize("family, form, written", FORMS)
def test_calls_are_trained_as_the_text_the_student_writes(family, form, written):
    tok = standin(family)
    plain = recon(tok=tok)
    assert reasons(plain.build(conversation(), TOOLS, sample_id="t")) == ["tool_calls_not_rendered"]
    kw = KWARGS.get(family, {})
    r = recon(tok=tok, tool_calls_as_text=form, chat_template_kwargs=kw)
    samples, rejections = r.build(conversation(), TOOLS, sample_id="t")
    assert not rejections and len(samples) == 1, rejections
    s = samples[0]
    as_text = [{"role": m["role"], "content": written if m.get("tool_calls") else m["content"]} for m in conversation()]
    full = reference(tok, as_text, TOOLS, **kw)  # the template's own render of the calls written as text
    assert full_text(tok, s) == full[: len(full) - len(r.final_tail)]
    prompt = reference(tok, as_text[:1], TOOLS, add_generation_prompt=True, **kw)
    assert "get_weather" in prompt  # the definitions, where the student reads them
    assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
    assert trained(tok, s) == [written + r.eot, "It is sunny." + r.eot]


@pytest.mark.parametrize("family, form, written", FORMS)
def test_content_and_two_calls(family, form, written):
    tok = standin(family)
    r = recon(tok=tok, tool_calls_as_text=form, chat_template_kwargs=KWARGS.get(family, {}))
    samples, rejections = r.build(conversation("Let me check.", calls=2)[:2], TOOLS, sample_id="t")
    assert not rejections
    both = written.replace(ONE, f"{ONE}, {ONE}") if "{calls}" in form else f"{written}\n{written}"
    assert trained(tok, samples[0]) == [f"Let me check.\n{both}{r.eot}"]


LFM2_FIRST = "<|tool_call_start|>{calls}<|tool_call_end|>{content}"  # LFM2's turns open with their call


@pytest.mark.parametrize(
    "form, text",
    [
        (LFM2_FIRST, f"<|tool_call_start|>[{ONE}]<|tool_call_end|>Let me check."),
        (
            "{content} <|tool_call_start|>{calls}<|tool_call_end|>",
            f"Let me check. <|tool_call_start|>[{ONE}]<|tool_call_end|>",
        ),
    ],
)
def test_content_placed_where_the_form_says(form, text):
    """ "{content}" at the form's end puts the calls first, at its start the text first with only what the form
    writes between; either way the template's render of that text is what is trained, and the student's call
    tokens beside the teacher's text are not taken for special-token text in it."""
    tok = standin("lfm2")
    r = recon(tok=tok, tool_calls_as_text=form)
    msgs = conversation("Let me check.")
    samples, rejections = r.build(msgs, TOOLS, sample_id="t")
    assert not rejections and len(samples) == 1, rejections
    assert trained(tok, samples[0]) == [text + r.eot, "It is sunny." + r.eot]
    as_text = [{"role": m["role"], "content": text if m.get("tool_calls") else m["content"]} for m in msgs]
    full = reference(tok, as_text, TOOLS)
    assert full_text(tok, samples[0]) == full[: len(full) - len(r.final_tail)]
    # the teacher's own text is still checked for special-token text, and so are the calls
    for bad in (conversation("<|im_end|> Let me check."), conversation("Let me check.", city="<|im_end|>")):
        _, rejections = r.build(bad, TOOLS, sample_id="b")
        assert reasons(rejections) == ["special_token_in_content"] and "messages[1]" in rejections[0].detail


def test_content_first_form_and_a_turn_without_text():
    tok = standin("lfm2")
    r = recon(tok=tok, tool_calls_as_text=LFM2_FIRST)
    samples, _ = r.build(conversation(), TOOLS, sample_id="t")
    assert trained(tok, samples[0])[0] == f"<|tool_call_start|>[{ONE}]<|tool_call_end|>" + r.eot


def test_special_token_text_in_the_calls_is_the_teachers_and_is_checked():
    tok = standin("lfm2")
    r = recon(tok=tok, tool_calls_as_text="<|tool_call_start|>{calls}<|tool_call_end|>")
    _, rejections = r.build(conversation(city="<|im_end|>"), TOOLS, sample_id="t")
    assert reasons(rejections) == ["special_token_in_content"] and "<|im_end|>" in rejections[0].detail


def test_refused_for_a_template_that_renders_calls_itself():
    with pytest.raises(ValueError, match="renders tool calls itself.*Fix: unset tool_calls_as_text"):
        recon(tok=standin("hermes3_tool_use"), tool_calls_as_text="<tool_call>\n{call}\n</tool_call>")


@pytest.mark.parametrize(
    "form", ["<tool_call>", "{call}{calls}", "<a>{content}{calls}</a>", "{content}<a>{calls}</a>{content}"]
)
def test_the_form_needs_one_placeholder(form):
    with pytest.raises(ConfigError, match="tool_calls_as_text"):
        load_config(None, {"orchestrator": {"reconstruction": {"tool_calls_as_text": form}}})


def test_the_rejection_names_the_switch():
    _, rejections = recon(tok=standin("lfm2")).build(conversation(), TOOLS, sample_id="t")
    assert "tool_calls_as_text" in rejections[0].detail


@pytest.mark.parametrize("family", ["olmo2_tulu", "phi4"])
def test_templates_that_drop_tool_messages_refuse_answers_after_a_result(family):
    """OLMo 2's and Phi-4's templates write nothing for a tool message: "It is sunny." would be trained
    after a prompt without the result. A tool message after the last trained turn trains nothing: kept."""
    tok = standin(family)
    r = recon(tok=tok, tool_calls_as_text="<tool_call>\n{call}\n</tool_call>")
    assert not r.renders_tool_results
    _, rejections = r.build(conversation(), TOOLS, sample_id="t")
    assert reasons(rejections) == ["tool_results_not_rendered"] and "messages[2]" in rejections[0].detail
    samples, rejections = r.build(conversation()[:3], None, sample_id="t")  # no definitions to show
    assert not rejections and len(samples) == 1
    assert recon(tok=standin("lfm2")).renders_tool_results


@pytest.mark.parametrize(
    "family, named", [("smollm3", "it reads them from python_tools, xml_tools"), ("phi4_mini", "")]
)
def test_tool_definitions_the_template_does_not_show_refuse_calls_written_as_text(family, named):
    """SmolLM3's template reads tool definitions from xml_tools, Phi-4-mini's from a system message's `tools`
    field: passed as `tools`, none reaches the prompt, and the calls written as text would teach the student to
    call tools it was never shown (before: trained so). A conversation given no definitions keeps its calls."""
    tok = standin(family)
    r = recon(tok=tok, tool_calls_as_text="<tool_call>\n{call}\n</tool_call>")
    assert not r.renders_tools
    _, rejections = r.build(conversation()[:2], TOOLS, sample_id="t")
    assert reasons(rejections) == ["tools_not_rendered"] and "messages[1] calls a tool" in rejections[0].detail
    assert named in rejections[0].detail and "chat_template_kwargs" in rejections[0].detail
    samples, rejections = r.build(conversation()[:2], None, sample_id="t")
    assert not rejections and len(samples) == 1
    # the calls not written as text: the switch that writes them is named first, as before
    assert reasons(recon(tok=tok).build(conversation()[:2], TOOLS, sample_id="t")) == ["tool_calls_not_rendered"]
    for shows in ("lfm2", "granite3_3"):  # templates that render `tools`
        assert recon(tok=standin(shows), tool_calls_as_text="<tool_call>\n{call}\n</tool_call>").renders_tools


def reasons(result) -> list[str]:
    return [x.reason for x in (result[1] if isinstance(result, tuple) else result)]


def test_results_written_only_after_a_call_count_as_rendered():
    """A template may write a tool message only after a turn with calls (not after plain text): the probe
    tries both, so such a template keeps its tool conversations."""
    from orchestrator.tool_args import ToolCallShape, probe_renders_tool_results

    def render(msgs):  # results only after a turn that made calls
        out, calls = "", False
        for m in msgs:
            if m["role"] == "tool":
                out += f"<result>{m['content']}</result>" if calls else ""
            else:
                calls = bool(m.get("tool_calls"))
                out += f"<{m['role']}>{m['content'] or ''}</{m['role']}>"
        return out

    assert probe_renders_tool_results(render, ToolCallShape(probed=True))
    assert not probe_renders_tool_results(render, ToolCallShape())  # no call form known: only the text turn

    def refuses(msgs):
        raise ValueError("no tool role")

    assert probe_renders_tool_results(refuses, ToolCallShape(probed=True))  # its own template_error says so
