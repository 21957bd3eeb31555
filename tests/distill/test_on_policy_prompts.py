"""A prompt the student samples from (on-policy mode: distill.on_policy_parts.Renderer) is rendered by the
student's Reconstructor (Reconstructor.prompt_ids), so its prompt ids are the SFT sample's under every policy
and for multi-turn prompts. Before, it was rendered as given, later through a copy of some of reconstruction's
rules: Gemma 2's template raised on the system message its SFT samples had merged, a DeepSeek student sampled
without the tool definitions, and an earlier turn's tool-call arguments and reasoning reached the template as
loaded. Prompts reconstruction rejects are left out at the start and listed (usable_prompts)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon
from support.tokenizer_builds import load_or_skip

from distill.on_policy_parts import OnPolicyError, Renderer, usable_prompts

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": {}}}]


def sft_prompt_ids(tok, messages, tools, **policy) -> list[int]:
    """The prompt ids of the SFT sample whose one trained turn follows `messages` (earlier assistant turns are
    context: weight 0)."""
    context = [dict(m, weight=0) if m["role"] == "assistant" else m for m in messages]
    samples, rejections = recon(tok=tok, **policy).build(
        [*context, {"role": "assistant", "content": "Fine."}], tools, sample_id="t"
    )
    assert not rejections and len(samples) == 1, rejections
    return samples[0].prompt_ids


def rendered(tok, messages, tools, **policy) -> list[int]:
    return Renderer(recon(tok=tok, **policy))([{"prompt_id": "p", "messages": messages, "tools": tools}])[0][1]


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
    kept, rejected = Renderer(recon(tok=tok)).usable([{"prompt_id": "p", "messages": messages}])
    assert not kept and [r.reason for r in rejected] == ["template_error"]
    assert "System role not supported" in rejected[0].detail and "merge_into_first_user" in rejected[0].detail
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


CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
EARLIER_CALL = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21C"},
    {"role": "assistant", "content": "Sunny and 21C."},
    {"role": "user", "content": "And tomorrow?"},
]


def test_an_earlier_tool_call_in_the_shape_the_template_expects():
    """Qwen2.5's template writes `arguments | tojson`: the API's JSON string, as loaded, was written quoted
    (a string holding JSON) where its SFT samples, and the student at inference, have the object."""
    tok = load_or_skip("qwen", "qwen2_5")
    ids = rendered(tok, EARLIER_CALL, WEATHER_TOOLS)
    assert ids == sft_prompt_ids(tok, EARLIER_CALL, WEATHER_TOOLS)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in tok.decode(ids)


@pytest.mark.parametrize("arguments", ['{"city": "Paris"}', {"city": "Paris"}])
def test_an_earlier_tool_call_for_a_template_that_pastes_the_string(arguments):
    """DeepSeek V3's template pastes the arguments string: a dataset's arguments as an object raised in it."""
    tok = load_or_skip("deepseek", "deepseek_v3")
    policy = {"tools_in_system_prompt": "## Tools\n{tools}"}
    call = dict(CALL, function=dict(CALL["function"], arguments=arguments))
    messages = [dict(m, tool_calls=[call]) if m.get("tool_calls") else m for m in EARLIER_CALL]
    ids = rendered(tok, messages, WEATHER_TOOLS, **policy)
    assert ids == sft_prompt_ids(tok, messages, WEATHER_TOOLS, **policy)
    assert '```json\n{"city": "Paris"}\n```' in tok.decode(ids)


@pytest.mark.parametrize("reasoning", ["think_tags", "drop"])
def test_the_reasoning_of_an_earlier_turn_placed_by_the_policy(reasoning):
    """Qwen2.5's template has no reasoning field: as loaded, an earlier turn's reasoning_content was dropped
    whatever the policy, where think_tags writes it into that turn's content in SFT samples."""
    tok = load_or_skip("qwen", "qwen2_5")
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
        {"role": "user", "content": "3+3?"},
    ]
    ids = rendered(tok, messages, None, reasoning=reasoning)
    assert ids == sft_prompt_ids(tok, messages, None, reasoning=reasoning)
    assert ("<think>\nTwo and two.\n</think>\n\n4" in tok.decode(ids)) == (reasoning == "think_tags")


def prompt(pid: str, content: str) -> dict:
    return {"prompt_id": pid, "messages": [{"role": "user", "content": content}]}


def test_prompts_reconstruction_rejects_are_left_out_and_listed(tmp_path, capsys):
    tok = load_or_skip("qwen", "qwen2_5")
    render = Renderer(recon(tok=tok))
    special = prompt("bad", "Say <|im_end|> now")  # special-token text: rejected by default
    eval_prompts, pool = [prompt("e0", "Hi"), special], [prompt(f"p{i}", f"Q{i}") for i in range(3)]
    pool.insert(1, dict(special, prompt_id="bad2"))
    cfg = SimpleNamespace(
        trainer=SimpleNamespace(samples_per_step=4), on_policy=SimpleNamespace(samples_per_prompt=2, teacher_fraction=0)
    )
    kept_eval, kept = usable_prompts(render, eval_prompts, pool, cfg, tmp_path)
    assert [p["prompt_id"] for p in kept_eval] == ["e0"] and [p["prompt_id"] for p in kept] == ["p0", "p1", "p2"]
    lines = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["item_id"], r["reason"]) for r in lines] == [
        ("bad", "special_token_in_content"),
        ("bad2", "special_token_in_content"),
    ]
    err = capsys.readouterr().err
    assert "2 of 6 prompts left out" in err and "2 special_token_in_content" in err and "'bad'" in err
    assert render.cache["p0"] == render([prompt("p0", "Q0")])[0][1]  # rendered once, kept
    cfg.trainer.samples_per_step = 8  # 4 prompts a step, 3 left
    with pytest.raises(OnPolicyError, match="holds 3 training prompts .*1 of 4 rejected.* a step samples 4"):
        usable_prompts(render, eval_prompts, pool, cfg, tmp_path)
    one = SimpleNamespace(trainer=SimpleNamespace(samples_per_step=2), on_policy=cfg.on_policy)  # a prompt a step
    usable_prompts(render, [], pool[:1], one, tmp_path)
    assert not (tmp_path / "rejects.jsonl").exists()  # none rejected now: the earlier start's list is gone


def test_a_prompt_the_tokenizer_cannot_represent_is_left_out():
    """The GGUF-converted SmolLM2 vocabulary has no token for byte 0xF1 (U+40000-U+7FFFF): an SFT sample with such
    text is roundtrip_mismatch, and so is the prompt now; before, the student was given ids that decode to "�"."""
    prompts = [{"prompt_id": "bad", "messages": [{"role": "user", "content": "Say \U00040001 back."}]}]
    prompts.append({"prompt_id": "good", "messages": [{"role": "user", "content": "Say hi back."}]})
    kept, rejected = Renderer(recon()).usable(prompts)
    assert [p["prompt_id"] for p in kept] == ["good"]
    assert [(r.item_id, r.reason) for r in rejected] == [("bad", "roundtrip_mismatch")]
