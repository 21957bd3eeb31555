"""GLM-4 (GLM-4.6's real template, GLM-4.5's has the same layout; GLM-4-9B-Chat's at the end): nothing ends an assistant turn in a
render; the model stops at the next message's role token, `<|user|>` after an answer and `<|observation|>`
after tool calls (both eos ids in GLM's generation config), which the template writes only when a message
follows (orchestrator/reconstruction/next_role.py). Each trained turn is checked against the template's own
render of the conversation with that next message, through its role token."""

from __future__ import annotations

import copy
import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import decode, full_text, recon, reference, tokenizer_with, trained

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
USER = {"role": "user", "content": "Next?"}
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def call_turn(content=None) -> dict:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return {"role": "assistant", "content": content, "tool_calls": [call]}


RESULT = {"role": "tool", "content": "sunny, 21", "tool_call_id": "c1"}


def through_next_role(tok, msgs, following, tools=None) -> str:
    """The template's render of `msgs` then `following`, through the first special token after `msgs`."""
    alone, more = reference(tok, msgs, tools), reference(tok, msgs + [following], tools)
    assert more.startswith(alone)
    rest = more[len(alone) :]
    token = next(t for t in sorted(tok.all_special_tokens, key=len, reverse=True) if rest.startswith(t))
    return alone + token


@pytest.fixture(scope="module")
def tok():
    return standin("glm4_6")


def one_sample(r, msgs, tools=None, **kw):
    samples, rejections = r.build(msgs, tools, sample_id="g", **kw)
    assert rejections == [] and len(samples) == 1, rejections
    return samples[0]


def test_an_answer_ends_with_the_user_role_token(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert reference(tok, msgs) == "[gMASK]<sop><|user|>\nHi<|assistant|>\n<think></think>\nHello!"  # nothing after
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|user|>", "")
    s = one_sample(r, msgs)
    assert s.prompt_ids == tok.encode(reference(tok, msgs[:1], add_generation_prompt=True), add_special_tokens=False)
    assert trained(tok, s) == ["\n<think></think>\nHello!<|user|>"]
    assert s.completion_ids[-1] == tok.convert_tokens_to_ids("<|user|>") and s.completion_mask[-1] == 1
    assert full_text(tok, s) == through_next_role(tok, msgs, USER)


def test_turns_chain_each_ending_at_the_next_role_token(tok):
    msgs = TWO_TURNS
    r = recon(tok=tok)
    s = one_sample(r, msgs)
    assert trained(tok, s) == ["\n<think></think>\nHello!<|user|>", "\n<think></think>\n4<|user|>"]
    assert full_text(tok, s) == through_next_role(tok, msgs, USER)
    # the next prompt shows the first turn's token once: trained as its end, context for the next turn
    assert decode(tok, s.completion_ids).count("<|user|>") == 2


def test_a_tool_call_turn_ends_with_the_observation_token(tok):
    msgs = [{"role": "user", "content": "Weather in Paris?"}, call_turn(), RESULT]
    msgs.append({"role": "assistant", "content": "It is sunny."})
    r = recon(tok=tok)
    s = one_sample(r, msgs, TOOLS)
    runs = trained(tok, s)
    assert len(runs) == 2 and runs[0].endswith("</tool_call><|observation|>") and "<arg_value>Paris" in runs[0]
    assert runs[1] == "\n<think></think>\nIt is sunny.<|user|>"
    assert full_text(tok, s) == through_next_role(tok, msgs, USER, TOOLS)


def test_a_conversation_that_ends_with_calls_ends_with_the_observation_token(tok):
    msgs = [{"role": "user", "content": "Weather in Paris?"}, call_turn("Let me check.")]
    r = recon(tok=tok)
    s = one_sample(r, msgs, TOOLS, finish_reason="tool_calls")
    (run,) = trained(tok, s)
    assert run.startswith("\n<think></think>\nLet me check.\n<tool_call>get_weather") and run.endswith(
        "<|observation|>"
    )
    args = {**RESULT}
    assert full_text(tok, s) == through_next_role(tok, msgs, args, TOOLS)


def test_reasoning_shown_only_after_the_last_user_message_splits_per_turn(tok):
    r = recon(tok=tok)
    reasoned = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
    ]
    samples, rejections = r.build(reasoned, sample_id="g")
    assert rejections == [] and len(samples) == 2  # the history drops R1: each turn its own sample
    assert [trained(tok, s) for s in samples] == [
        ["\n<think>R1</think>\nA1<|user|>"],
        ["\n<think>R2</think>\nA2<|user|>"],
    ]
    assert decode(tok, samples[1].prompt_ids).endswith("\n<think></think>\nA1<|user|>\nQ2<|assistant|>")


def test_a_cut_off_answer_is_trained_without_the_token(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, this is a long"}]
    s = one_sample(recon(tok=tok, truncated="keep"), msgs, finish_reason="length")
    assert trained(tok, s) == ["\n<think></think>\nHello, this is a long"]


def test_the_on_policy_prompt_is_the_sft_prompt(tok):
    r = recon(tok=tok)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, USER]
    context = [dict(m, weight=0) if m["role"] == "assistant" else m for m in msgs]  # only the last turn trained
    s = one_sample(r, [*context, {"role": "assistant", "content": "Fine."}])
    assert r.prompt_ids(msgs) == s.prompt_ids
    assert decode(tok, r.prompt_ids(msgs)).endswith("Hello!<|user|>\nNext?<|assistant|>")


def test_a_template_with_no_token_before_the_next_message_is_still_refused():
    """Nothing after an answer, and the next message starts with plain text: no token the student could stop
    at. Refused when the reconstructor is made, naming why and the fix."""
    tok = copy.deepcopy(tokenizer_with(None))
    tok.chat_template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ValueError, match="cannot work out the end-of-turn token") as e:
        recon(tok=tok)
    assert "the next message's render does not start with a special token" in str(e.value)
    assert "student.chat_template" in str(e.value)


def test_arguments_reach_the_template_as_a_dict(tok):
    r = recon(tok=tok)
    assert not r.tool_shape.arguments_as_string
    msgs = [{"role": "user", "content": "Weather?"}, call_turn(), RESULT, {"role": "assistant", "content": "Sunny."}]
    s = one_sample(r, msgs, TOOLS)
    assert "<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>" in trained(tok, s)[0]
    assert json.loads(msgs[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}  # the input untouched


def test_glm4_9b_chat_turns_end_with_the_user_role_token():
    """GLM-4-9B-Chat's template (`<|{{ role }}|>{{ metadata }}\\n{{ content }}` per message with content) has the
    same layout without the thinking block."""
    tok = standin("glm4_9b_chat")
    msgs = TWO_TURNS
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|user|>", "")
    s = one_sample(r, msgs)
    assert decode(tok, s.prompt_ids) == "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>"
    assert trained(tok, s) == ["\nHello!<|user|>", "\n4<|user|>"]
    assert full_text(tok, s) == through_next_role(tok, msgs, USER)


def test_a_student_that_would_not_stop_at_the_role_token_is_warned(tok, tmp_path, capsys):
    """Trained as each turn's end, the role tokens must be eos ids in the student's generation_config.json
    (GLM-4's lists <|user|> and <|observation|>): `distill tokenize` (and `distill run`) warn where they are
    not, and still write the samples."""
    from orchestrator.reconstruction.tokenize_jsonl import tokenize_file

    folder, data, out = tmp_path / "student", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    tok.save_pretrained(folder)
    data.write_text(json.dumps({"messages": TWO_TURNS}) + "\n", encoding="utf-8")
    user, observation = tok.convert_tokens_to_ids(["<|user|>", "<|observation|>"])
    for eos, expected in (
        (None, "generation_config.json does not exist"),
        ([tok.eos_token_id, user], "does not list <|observation|> in eos_token_id"),
        ([tok.eos_token_id, user, observation], None),
    ):
        if eos is not None:
            (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}), encoding="utf-8")
        summary = tokenize_file(str(folder), str(data), str(out))
        err = capsys.readouterr().err
        assert summary["samples"] == 1 and json.loads(out.read_text())["completion_ids"][-1] == user
        if expected is None:
            assert "warning" not in err
        else:
            assert expected in err and "(<|user|>, <|observation|>)" in err and err.count("\n") == 1
