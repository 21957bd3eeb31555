"""Text beside tool calls, for students whose template cannot show both (orchestrator/tool_args.py
`drops_text` and `null_content`; Reconstruction.text_with_tool_calls), on real templates and
tokenizers: Llama 3.2's (tests/templates/llama3_2.jinja, which renders a tool-call turn as its call
alone), DeepSeek V3's (calls only in a turn without text), Qwen2.5's (both). Teachers such as
Claude and GPT-4o often write a sentence before a call; before the switch, every such turn was
rejected for these students, the Llama one under a reason that did not say why."""

from __future__ import annotations

import json

import pytest
from support.reconstruct_helpers import full_text, recon, reference, runs
from support.tokenizer_builds import load_or_skip

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
DEFINITIONS = "## Tools\n{tools}"  # DeepSeek's template shows no definitions: they go into the system prompt
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}


def conversation(text):
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": text, "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]


def one_sample(r, messages, tools=TOOLS):
    samples, rejections = r.build(messages, tools, sample_id="t")
    assert rejections == [] and len(samples) == 1, rejections
    return samples[0]


def test_llama3_2_golden():
    tok = load_or_skip("llama3", "llama3_2")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|eot_id|>", "")
    assert r.tool_shape.probed and r.tool_shape.drops_text and not r.tool_shape.null_content
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    s = one_sample(r, [*plain, {"role": "assistant", "content": "Hello!"}], None)
    prompt = reference(tok, plain, add_generation_prompt=True)
    assert "Today Date: " in prompt and prompt.endswith(
        "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
    assert runs(tok, s)[1:] == [(1, "Hello!<|eot_id|>")]


def test_text_beside_a_call_is_rejected_naming_the_switch_where_the_template_drops_it():
    r = recon(tok=load_or_skip("llama3", "llama3_2"))
    _, rejections = r.build(conversation("Let me check."), TOOLS, sample_id="t")
    assert [x.reason for x in rejections] == ["template_alters_content"]
    assert "without its text" in rejections[0].detail and 'text_with_tool_calls = "drop"' in rejections[0].detail


def test_drop_trains_the_call_alone_as_the_template_renders_it():
    tok = load_or_skip("llama3", "llama3_2")
    r = recon(tok=tok, text_with_tool_calls="drop")
    messages = conversation("Let me check.")
    s = one_sample(r, messages)
    assert full_text(tok, s) == reference(tok, messages, TOOLS)  # the template's own render leaves the text out
    assert [t for m, t in runs(tok, s)[1:] if m] == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is sunny.<|eot_id|>",
    ]
    assert r.stats["tool_call_text_dropped"] == 1
    one_sample(r, conversation(None))  # a call without text: nothing to drop
    assert r.stats["tool_call_text_dropped"] == 1


def test_null_content_template_names_the_switch_and_drop_renders_the_calls():
    tok = load_or_skip("deepseek", "deepseek_v3")
    _, rejections = recon(tok=tok).build(conversation("Let me check."), TOOLS, sample_id="t")
    assert [x.reason for x in rejections] == ["tool_calls_not_rendered"]
    assert 'text_with_tool_calls = "drop"' in rejections[0].detail
    r = recon(tok=tok, text_with_tool_calls="drop", tools_in_system_prompt=DEFINITIONS)
    s = one_sample(r, conversation("Let me check."))
    assert (
        s.completion_ids
        == one_sample(recon(tok=tok, tools_in_system_prompt=DEFINITIONS), conversation(None)).completion_ids
    )
    assert r.stats["tool_call_text_dropped"] == 1


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_a_template_that_renders_both_keeps_the_text(policy):
    tok = load_or_skip("qwen", "qwen2_5")
    r = recon(tok=tok, text_with_tool_calls=policy)
    assert not r.tool_shape.drops_text
    s = one_sample(r, conversation("Let me check."))
    assert [t for m, t in runs(tok, s)[1:] if m][0].startswith("Let me check.\n<tool_call>")
    assert r.stats["tool_call_text_dropped"] == 0
