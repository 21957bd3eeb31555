"""A prompt the student samples from (on-policy mode: distill.on_policy_parts.Renderer) is rendered from the
messages reconstruction hands the template under the same policies (orchestrator/prompt_policies.py), so its
prompt ids are the SFT sample's. Before, it was rendered as given: Gemma 2's template raised on the system
message its SFT samples had merged, and a DeepSeek student sampled without the tool definitions."""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon
from support.tokenizer_builds import load_or_skip

from distill.core.config import Reconstruction
from distill.on_policy_parts import Renderer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": {}}}]


def sft_prompt_ids(tok, messages, tools, **policy) -> list[int]:
    samples, rejections = recon(tok=tok, **policy).build(
        [*messages, {"role": "assistant", "content": "Fine."}], tools, sample_id="t"
    )
    assert not rejections and len(samples) == 1, rejections
    return samples[0].prompt_ids


def rendered(tok, messages, tools, **policy) -> list[int]:
    return Renderer(tok, Reconstruction(**policy))([{"prompt_id": "p", "messages": messages, "tools": tools}])[0][1]


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_tool_definitions_written_into_the_system_prompt(system):
    tok = load_or_skip("deepseek", "deepseek_v3")
    policy = {"tools_in_system_prompt": "## Tools\n{tools}"}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Weather?"}]
    ids = rendered(tok, messages, TOOLS, **policy)
    assert ids == sft_prompt_ids(tok, messages, TOOLS, **policy)
    assert "## Tools\n" + json.dumps(TOOLS[0]) in tok.decode(ids)
    assert rendered(tok, messages, None, **policy) == rendered(tok, messages, None)  # no tools: as given


def test_a_system_prompt_merged_into_the_first_user_message():
    tok = standin("gemma2")  # its template raises on a system message
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(Exception, match="System role not supported"):
        rendered(tok, messages, None)
    policy = {"system_prompt": "merge_into_first_user"}
    ids = rendered(tok, messages, None, **policy)
    assert ids == sft_prompt_ids(tok, messages, None, **policy)
    assert "Be brief.\n\nHi" in tok.decode(ids)


def test_contents_stripped():
    tok = load_or_skip("qwen", "qwen2_5")  # its template writes content as given
    messages = [{"role": "user", "content": "  Hi \n"}]
    policy = {"content_whitespace": "strip"}
    ids = rendered(tok, messages, None, **policy)
    assert ids == sft_prompt_ids(tok, messages, None, **policy)
    assert ids == rendered(tok, [{"role": "user", "content": "Hi"}], None) != rendered(tok, messages, None)


def test_a_developer_message_and_text_parts_as_reconstruction_reads_them():
    """OpenAI's developer role is the system message and text parts are their text, in SFT samples; before,
    the on-policy prompt passed them as given: Qwen2.5's template dropped the developer message (the student
    sampled with its default system prompt instead) and raised on the parts."""
    tok = load_or_skip("qwen", "qwen2_5")
    messages = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "input_text", "text": "there"}]},
    ]
    ids = rendered(tok, messages, None)
    assert ids == sft_prompt_ids(tok, messages, None)
    assert tok.decode(ids).startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi there")
