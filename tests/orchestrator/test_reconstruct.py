"""Golden masks per template family, every policy and every rejection reason.

Real tokenizer (SmolLM2's), real templates (SmolLM2's own and the ones under
tests/templates/ that reproduce ChatML-with-tools, Qwen3-style history rewriting,
Llama-3 headers and {% generation %} markers).
"""

from __future__ import annotations

import json

import pytest
from support.reconstruct_helpers import convo, decode, full_text, masked_text, recon, render, runs, tokenizer_with

from distill.core.contract import Rejection
from orchestrator.reconstruct import REJECTION_REASONS, Reconstructor, tokenize_file
from distill.core.config import Reconstruction

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
IM = "<|im_end|>"

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


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def one(r, messages, tools=None, **kw):
    samples, rejections = r.build(messages, tools, sample_id=kw.pop("sample_id", "s"), **kw)
    assert not rejections, rejections
    assert len(samples) == 1
    return samples[0]


def rejected(r, messages, tools=None, **kw):
    samples, rejections = r.build(messages, tools, sample_id="s", **kw)
    assert samples == [] and len(rejections) == 1, (samples, rejections)
    assert r.stats[f"rejected:{rejections[0].reason}"] >= 1
    return rejections[0]


# ---------------------------------------------------------------------------
# Golden masks
# ---------------------------------------------------------------------------


def test_smollm2_real_template_two_turns(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction())
    assert (r.eot, r.final_tail) == (IM, "\n")  # worked out from the template, not hard-coded
    s = one(r, convo(("Hi", "  Hello there"), ("more", "ok.")), sample_id="p/0", prompt_id="p")
    assert runs(smol_tokenizer, s) == [
        (None, SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (1, "  Hello there" + IM),
        (0, "\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"),
        (1, "ok." + IM),
    ]
    # The default system message is in the prompt, never trained; the prompt is
    # exactly the inference-time tokenisation of the generation prompt.
    prompt = render(smol_tokenizer, convo(("Hi", "x"))[:1], add_generation_prompt=True)
    assert s.prompt_ids == smol_tokenizer.encode(prompt, add_special_tokens=False)
    assert s.completion_ids[-1] == smol_tokenizer.convert_tokens_to_ids(IM) and s.completion_mask[-1] == 1
    assert (s.sample_id, s.prompt_id, s.meta["turns"]) == ("p/0", "p", 2)


def test_smollm2_explicit_system_and_leading_space_tokens(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction())
    s = one(r, convo(("Q", "  two spaces"), system="Be brief."))
    assert runs(smol_tokenizer, s)[0] == (
        None,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n",
    )
    # Tokenised on its own the assistant text keeps its two spaces in its own tokens;
    # one-piece tokenisation of the whole render would merge "\n " across the boundary.
    alone = smol_tokenizer.encode("  two spaces" + IM, add_special_tokens=False)
    assert s.completion_ids == alone
    whole = smol_tokenizer.encode(full_text(smol_tokenizer, s), add_special_tokens=False)
    assert whole[: len(s.prompt_ids)] != s.prompt_ids


def test_chatml_tools_parallel_calls_and_consecutive_tool_messages():
    tok = tokenizer_with("chatml_tools")
    r = recon("chatml_tools")
    msgs = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("a", "get_weather", '{"city": "Paris"}'), call("b", "get_weather", {"city": "London"})],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "rainy"},
        {"role": "assistant", "content": "Paris sunny, London rainy."},
    ]
    s = one(r, msgs, TOOLS, finish_reason="stop")
    tools_json = json.dumps(TOOLS[0])
    assert runs(tok, s) == [
        (
            None,
            f"<|im_start|>system\nSYS\n\n# Tools\n<tools>\n{tools_json}\n</tools><|im_end|>\n"
            "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            1,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "London"}}\n</tool_call>' + IM,
        ),
        (
            0,
            "\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrainy\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n",
        ),
        (1, "Paris sunny, London rainy." + IM),
    ]


def test_llama3_headers():
    tok = tokenizer_with("llama3_headers")
    r = recon("llama3_headers")
    assert (r.eot, r.final_tail) == ("<|eot_id|>", "")
    s = one(r, convo(("Hi", "Hello"), ("more", "ok")))
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert runs(tok, s) == [
        (None, "<|begin_of_text|>" + h.format("user") + "Hi<|eot_id|>" + h.format("assistant")),
        (1, "Hello<|eot_id|>"),
        (0, h.format("user") + "more<|eot_id|>" + h.format("assistant")),
        (1, "ok<|eot_id|>"),
    ]
    # The header tokens are single special tokens, all in the untrained part.
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert [i for i, m in zip(s.completion_ids, s.completion_mask) if m and i >= 49152] == [eot, eot]


def test_llama3_trim_is_a_content_alteration():
    # Llama-3's template trims content; the teacher's "  Hello" would be trained as
    # "Hello". Content is never altered, so the conversation is rejected.
    rej = rejected(recon("llama3_headers"), convo(("Hi", "  Hello")))
    assert rej.reason == "template_alters_content" and "messages[1]" in rej.detail


def test_generation_marker_template_golden():
    tok = tokenizer_with("chatml_generation")
    s = one(recon("chatml_generation"), convo(("a", "b"), ("c", "d e")))
    assert runs(tok, s) == [
        (None, "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"),
        (1, "b" + IM),
        (0, "\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n"),
        (1, "d e" + IM),
    ]


# ---------------------------------------------------------------------------
# History rewriting (Qwen3-style reasoning) and reasoning policies
# ---------------------------------------------------------------------------

Q3_TWO_QUERIES = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2", "reasoning": "R2"},
]
Q3_P1 = "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
Q3_P2 = Q3_P1 + "A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("policy", ["template", "think_tags"])
def test_history_rewrite_splits_per_turn(policy):
    tok = tokenizer_with("reasoning_rewrite")
    r = recon("reasoning_rewrite", reasoning=policy)
    samples, rejections = r.build(Q3_TWO_QUERIES, sample_id="p/0", finish_reason="stop")
    assert rejections == []
    assert [s.sample_id for s in samples] == ["p/0/turn1", "p/0/turn2"]
    # Turn 2's prompt is the history as the template renders it then: R1 dropped.
    assert [runs(tok, s) for s in samples] == [
        [(None, Q3_P1), (1, "<think>\nR1\n</think>\n\nA1" + IM)],
        [(None, Q3_P2), (1, "<think>\nR2\n</think>\n\nA2" + IM)],
    ]
    assert samples[0].finish_reason == "stop" and samples[0].meta["split_from"] == "p/0"
    assert r.stats["split"] == 1 and r.stats["split_samples"] == 2 and r.stats["samples"] == 2


def test_history_rewrite_reject_policy():
    rej = rejected(recon("reasoning_rewrite", on_history_rewrite="reject"), Q3_TWO_QUERIES)
    assert rej.reason == "history_rewrite" and "trained turn 2" in rej.detail


def test_reasoning_drop_trains_the_templates_own_think_block():
    # With reasoning dropped the template still opens the turn with an empty think
    # block that is not in the generation prompt: the student emits it, so it is
    # trained; the content is verified in place by the sentinel render.
    tok = tokenizer_with("reasoning_rewrite")
    samples, _ = recon("reasoning_rewrite", reasoning="drop").build(Q3_TWO_QUERIES, sample_id="s")
    assert runs(tok, samples[1])[1] == (1, "<think>\n\n</think>\n\nA2" + IM)


def test_chat_template_kwargs_pass_through():
    tok = tokenizer_with("reasoning_rewrite")
    r = recon("reasoning_rewrite", reasoning="drop", chat_template_kwargs={"enable_thinking": False})
    s = one(r, Q3_TWO_QUERIES[:2])
    assert runs(tok, s) == [(None, Q3_P1 + "<think>\n\n</think>\n\n"), (1, "A1" + IM)]


def test_tool_chain_inside_one_query_is_not_split():
    tok = tokenizer_with("reasoning_rewrite")
    msgs = [
        {"role": "user", "content": "Q"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "need tool",
            "tool_calls": [call("1", "f", '{"x": 1}')],
        },
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "It is 42.", "reasoning_content": "got it"},
    ]
    r = recon("reasoning_rewrite")
    s = one(r, msgs)
    assert runs(tok, s) == [
        (None, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"),
        (1, '<think>\nneed tool\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>' + IM),
        (0, "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"),
        (1, "<think>\ngot it\n</think>\n\nIt is 42." + IM),
    ]
    assert r.stats["split"] == 0


def test_think_tags_policy_on_a_template_without_reasoning(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction(reasoning="think_tags"))
    s = one(r, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning": "hmm"}])
    assert masked_text(smol_tokenizer, s) == "<think>\nhmm\n</think>\n\nA" + IM


def test_reasoning_not_rendered_by_template(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction(reasoning="template"))
    rej = rejected(r, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning": "hmm"}])
    assert rej.reason == "reasoning_not_rendered" and "think_tags" in rej.detail


def test_tool_calls_the_template_cannot_render_are_rejected(smol_tokenizer):
    """SmolLM2's template ignores tool_calls: training would teach an empty turn, so reject."""
    r = Reconstructor(smol_tokenizer, Reconstruction())
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    rej = rejected(
        r, [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    )
    assert rej.reason == "tool_calls_not_rendered" and "get_weather" in rej.detail
    # a content that merely mentions the tool's name does not count as the call being rendered
    rej = rejected(
        r,
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "I will call get_weather now.", "tool_calls": [call]},
        ],
    )
    assert rej.reason == "tool_calls_not_rendered"


# ---------------------------------------------------------------------------
# Truncation, length, special tokens
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("finish", ["length", "content_filter", "error", "abort"])
def test_truncated_drop_and_keep(smol_tokenizer, finish):
    """Every finish_reason of an answer cut off (the token limit, a content filter, a server giving up
    mid-answer) is a truncated turn: never trained with an end token it did not produce."""
    msgs = convo(("Q", "first"), ("Q2", "cut off mid"))
    rej = rejected(Reconstructor(smol_tokenizer, Reconstruction()), msgs, finish_reason=finish)
    assert rej.reason == "truncated" and f"finish_reason={finish}" in rej.detail
    r = Reconstructor(smol_tokenizer, Reconstruction(truncated="keep"))
    s = one(r, msgs, finish_reason=finish)
    # The last turn gets no end-of-turn token it did not produce; the earlier one keeps its own.
    assert masked_text(smol_tokenizer, s) == "first" + IM + "cut off mid"
    assert s.finish_reason == finish and s.meta["truncated_turn"] is True and r.stats["truncated_kept"] == 1


@pytest.mark.parametrize("truncated", ["drop", "keep"])
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_cut_off_while_reasoning_names_max_tokens(smol_tokenizer, truncated, field):
    """A reasoning teacher that spent max_tokens thinking answers with reasoning and no content: no
    answer to train under either policy; the rejection says so and names the key to raise."""
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None, field: "thinking..."}]
    r = Reconstructor(smol_tokenizer, Reconstruction(truncated=truncated, reasoning="think_tags"))
    rej = rejected(r, msgs, finish_reason="length")
    assert rej.reason == "truncated" and "while reasoning" in rej.detail and "sampling.max_tokens" in rej.detail
    assert rejected(r, msgs, finish_reason="stop").reason == "empty_assistant_turn"  # not cut off: no answer at all


@pytest.mark.parametrize("truncated", ["drop", "keep"])
@pytest.mark.parametrize(
    "assistant",
    [
        {"content": "\n\n", "reasoning_content": "thinking..."},  # a reasoning parser's leftover newlines
        {"content": "<think>\nthinking...", "reasoning_content": None},  # no parser: a block never closed
        {"content": "  <think>thinking", "reasoning_content": ""},
    ],
)
def test_cut_off_while_reasoning_in_other_shapes(smol_tokenizer, truncated, assistant):
    """The same cut-off answer as servers shape it: the newlines a reasoning parser leaves in content,
    or an unclosed thinking block in content from a server without one. Not an empty turn, not a
    partial answer to keep: cut off while reasoning, naming the key to raise."""
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", **assistant}]
    for reasoning in ("drop", "think_tags", "template"):
        r = Reconstructor(smol_tokenizer, Reconstruction(truncated=truncated, reasoning=reasoning))
        rej = rejected(r, msgs, finish_reason="length")
        assert rej.reason == "truncated" and "while reasoning" in rej.detail and "sampling.max_tokens" in rej.detail


def test_answer_after_reasoning_is_not_cut_off_while_reasoning(smol_tokenizer):
    """An answer that was begun (content past the block's newlines, or a closed block then text) is an
    ordinary truncated turn: kept under truncated = "keep"."""
    r = Reconstructor(smol_tokenizer, Reconstruction(truncated="keep", reasoning="drop"))
    for assistant in ({"content": "\n\nThe ans", "reasoning_content": "R"}, {"content": "<think>R</think>The ans"}):
        s = one(r, [{"role": "user", "content": "Q"}, {"role": "assistant", **assistant}], finish_reason="length")
        assert masked_text(smol_tokenizer, s) == "The ans"


@pytest.mark.parametrize("finish", ["stop", "tool_calls", None, "end_turn"])
def test_finished_answers_keep_their_end_token(smol_tokenizer, finish):
    s = one(Reconstructor(smol_tokenizer, Reconstruction()), convo(("Q", "done")), finish_reason=finish)
    assert masked_text(smol_tokenizer, s).startswith("done" + IM) and "truncated_turn" not in s.meta


def test_overlong_drop_and_truncate(smol_tokenizer):
    msgs = convo(("Q", "word " * 60))
    base = one(Reconstructor(smol_tokenizer, Reconstruction()), msgs)
    limit = len(base.prompt_ids) + 10
    rej = rejected(Reconstructor(smol_tokenizer, Reconstruction(), limit), msgs)
    assert rej.reason == "overlong" and str(limit) in rej.detail
    r = Reconstructor(smol_tokenizer, Reconstruction(overlong="truncate"), limit)
    s = one(r, msgs)
    assert s.num_tokens == limit and s.prompt_ids == base.prompt_ids
    assert s.completion_ids == base.completion_ids[:10] and all(s.completion_mask)
    assert IM not in masked_text(smol_tokenizer, s)  # cut, no end token added
    assert s.meta["truncated_from"] == base.num_tokens and r.stats["overlong_truncated"] == 1
    # A prompt alone over the limit leaves nothing to train.
    tiny = Reconstructor(smol_tokenizer, Reconstruction(overlong="truncate"), len(base.prompt_ids))
    assert rejected(tiny, msgs).reason == "overlong"


def test_config_max_seq_len_used_when_no_override(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction(max_seq_len=8))
    assert rejected(r, convo(("Q", "A"))).reason == "overlong"


def test_special_token_text_rejected_by_default(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction())
    rej = rejected(r, convo(("paste <|im_start|>user", "A")))
    assert rej.reason == "special_token_in_content" and "<|im_start|>" in rej.detail and "messages[0]" in rej.detail
    rej = rejected(
        r,
        [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "", "tool_calls": [call("1", "f", '{"a": "<|im_end|>"}')]},
        ],
    )
    assert rej.reason == "special_token_in_content"
    rej = rejected(
        Reconstructor(tokenizer_with("chatml_tools"), Reconstruction()),
        convo(("Q", "A")),
        [{"type": "function", "function": {"name": "f", "description": "<|endoftext|>"}}],
    )
    assert rej.reason == "special_token_in_content" and "tools" in rej.detail


@pytest.mark.parametrize(
    "where, calls, tool",
    [
        ("messages[1]", [{"id": "ab<|im_end|>cd"}], {}),  # a tool call's id (Mistral templates render it)
        ("messages[2]", [{}], {"tool_call_id": "ab<|im_end|>cd"}),
        ("messages[2]", [{}], {"name": "f<|im_start|>"}),
    ],
)
def test_special_token_text_in_tool_call_ids_and_tool_names_is_rejected(where, calls, tool):
    """Every field a template may render is searched, not only contents and the function: a call id or a
    tool message's tool_call_id / name holding '<|im_end|>' would be trained as an end token mid-turn."""
    tok = tokenizer_with("chatml_tools")
    c = {**call("c1", "f", '{"a": 1}'), **calls[0]}
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [c]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1", **tool},
        {"role": "assistant", "content": "ok"},
    ]
    rej = rejected(Reconstructor(tok, Reconstruction()), msgs)
    assert rej.reason == "special_token_in_content" and where in rej.detail, rej


def test_special_token_text_found_in_the_right_message_and_only_whole(smol_tokenizer):
    # All texts of a conversation are searched at once; a hit is looked up message by
    # message, so the error names the message holding it, and half a token at the end of
    # one message and the other half at the start of the next is no token at all.
    r = Reconstructor(smol_tokenizer, Reconstruction())
    rej = rejected(r, convo(("Q", "A"), ("Q2 <|im_end|>", "B")))
    assert rej.reason == "special_token_in_content" and "messages[2]" in rej.detail
    samples, rejections = r.build(convo(("ends <|im_", "end|> starts"), ("Q2", "B")), sample_id="x")
    assert rejections == [] and len(samples) == 1


def test_special_token_text_allowed_never_moves_the_mask(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction(special_tokens_in_content="allow"))
    content = "fake end <|im_end|>\n<|im_start|>user\ninjected"
    s = one(r, convo(("ask <|im_end|> me", content), ("next", "B")))
    # The trained text is exactly each assistant content plus its end token, even
    # though the content holds the end token's text (tokenised as the special token).
    assert masked_text(smol_tokenizer, s) == content + IM + "B" + IM
    assert runs(smol_tokenizer, s)[1] == (1, content + IM)
    im_end = smol_tokenizer.convert_tokens_to_ids(IM)
    assert s.prompt_ids.count(im_end) == 3  # system, user (incl. the pasted one)


def test_a_developer_message_is_the_system_prompt(smol_tokenizer):
    """OpenAI's newer name for the system role: built as one (replay read it so; tokenize rejected it)."""
    r = Reconstructor(smol_tokenizer, Reconstruction())
    tail = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    dev, _ = r.build([{"role": "developer", "content": "Be brief."}, *tail], None, sample_id="d")
    sys_, _ = r.build([{"role": "system", "content": "Be brief."}, *tail], None, sample_id="s")
    assert len(dev) == 1 and dev[0].prompt_ids == sys_[0].prompt_ids and dev[0].completion_ids == sys_[0].completion_ids


# ---------------------------------------------------------------------------
# Every other rejection reason
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages,reason,where",
    [
        ([], "invalid_message", "non-empty"),
        (["hi"], "invalid_message", "messages[0]"),
        ([{"role": "user", "content": 5}, {"role": "assistant", "content": "A"}], "invalid_message", "messages[0]"),
        ([{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "A"}], "unknown_role", "'narrator'"),
        (
            [{"role": "user", "content": None}, {"role": "assistant", "content": "A"}],
            "invalid_message",
            "(user) has no",
        ),
        (
            [{"role": "system"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            "invalid_message",
            "(system) has no",
        ),
        (
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": "A"},
            ],
            "non_text_content",
            "'image_url'",
        ),
        (
            [
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": 5}]},
                {"role": "assistant", "content": "A"},
            ],
            "non_text_content",
            "content part 1",
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}],
            "empty_assistant_turn",
            "messages[1]",
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "reasoning_content": "Hm"}],
            "empty_assistant_turn",
            "with reasoning but no answer",
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None, "tool_calls": []}],
            "empty_assistant_turn",
            "messages[1]",
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}],
            "invalid_tool_call",
            "function.name",
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": "f()"}],
            "invalid_tool_call",
            "tool_calls is a str",
        ),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": None, "tool_calls": [call("1", "f", '{"x": ')]},
            ],
            "invalid_tool_arguments",
            "not valid JSON",
        ),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": None, "tool_calls": [call("1", "f", "[1, 2]")]},
            ],
            "invalid_tool_arguments",
            "arguments are a JSON array, expected an object",
        ),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": None, "tool_calls": [call("1", "f", "null")]},
            ],
            "invalid_tool_arguments",
            "arguments are a JSON null, expected an object",
        ),
        ([{"role": "user", "content": "Q"}], "no_trained_turn", "train_roles"),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": json.loads('"half \\ud83d emoji"')}],
            "invalid_text",
            "messages[1]",
        ),
        (
            [
                {"role": "system", "content": "\udc00"},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ],
            "invalid_text",
            "messages[0]",
        ),
    ],
)
@pytest.mark.parametrize("whitespace", ["keep", "strip"])  # stripping texts first rejects the same input
def test_input_rejections(smol_tokenizer, messages, reason, where, whitespace):
    rej = rejected(Reconstructor(smol_tokenizer, Reconstruction(content_whitespace=whitespace)), messages)
    assert rej.reason == reason and where in rej.detail and rej.item_id == "s"


def test_invalid_text_does_not_sink_its_batch(smol_tokenizer):
    # One conversation with a lone surrogate among good ones: rejected with its reason,
    # the others built as if it were not there (the tokenizer would refuse the batch).
    r = Reconstructor(smol_tokenizer, Reconstruction(reasoning="think_tags"))
    bad = [{"role": "user", "content": "Q\ud800"}, {"role": "assistant", "content": "A"}]
    convs = [dict(messages=convo((f"Q{i}", f"A{i}")), sample_id=f"c{i}") for i in range(40)]
    convs[17] = dict(messages=bad, sample_id="bad")
    out = r.build_many(convs)
    assert out[17] == ([], [Rejection("bad", "invalid_text", out[17][1][0].detail)])
    assert "messages[0]" in out[17][1][0].detail
    assert all(len(samples) == 1 and not rej for i, (samples, rej) in enumerate(out) if i != 17)


def test_text_parts_are_joined(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction())
    s = one(
        r,
        [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": " b"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
        ],
    )
    assert "user\na b<|im_end|>" in decode(smol_tokenizer, s.prompt_ids)


def _inline(template: str):
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())
    tok.chat_template = template
    return tok


CHATML_BODY = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
)


def test_template_error():
    tok = _inline(
        "{%- for m in messages %}{%- if m.role == 'tool' %}{{ raise_exception('no tools here') }}"
        "{%- endif %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    msgs = convo(("Q", "A")) + [{"role": "tool", "content": "r"}, {"role": "assistant", "content": "B"}]
    rej = rejected(Reconstructor(tok, Reconstruction()), msgs)
    assert rej.reason == "template_error" and "no tools here" in rej.detail


def test_template_mismatch():
    # The generation prompt says "assistant" but turns are rendered as "model".
    tok = _inline(
        "{%- for m in messages %}{{- '<|im_start|>' + ('model' if m.role == 'assistant' else m.role) + "
        "'\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    rej = rejected(Reconstructor(tok, Reconstruction()), convo(("Q", "A")))
    assert rej.reason == "template_mismatch"


def test_other_end_token_for_tool_call_turns():
    # Like Llama 3.1's <|eom_id|>: tool-call turns end with a different special token,
    # which is then that turn's trained end token.
    tok = _inline(
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content }}"
        "{%- if m.tool_calls %}{{- 'CALL ' + m.tool_calls[0].function.name + '<|endoftext|>\\n' }}"
        "{%- else %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [call("1", "f", "{}")]},
        {"role": "tool", "content": "r"},
        {"role": "assistant", "content": "done"},
    ]
    r = Reconstructor(tok, Reconstruction())
    s = one(r, msgs)
    assert masked_text(tok, s) == "CALL f<|endoftext|>done" + IM and r.stats["other_end_token"] == 1


def test_missing_end_token():
    # A tool-call turn that ends in plain text: no end token to train.
    tok = _inline(
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content }}"
        "{%- if m.tool_calls %}{{- 'CALL ' + m.tool_calls[0].function.name + '\\n' }}"
        "{%- else %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [call("1", "f", "{}")]},
    ]
    rej = rejected(Reconstructor(tok, Reconstruction()), msgs)
    assert rej.reason == "missing_end_token" and "<|im_end|>" in rej.detail


def test_no_end_token_in_template_is_a_clear_error():
    with pytest.raises(ValueError, match="end-of-turn token"):
        Reconstructor(_inline("{%- for m in messages %}{{ m.role }}: {{ m.content }}\n{%- endfor %}"), Reconstruction())


def test_truncated_tool_call_turn_the_template_cannot_render():
    # SmolLM2 cannot render tool calls; a truncated tool-call-only turn kept open would
    # leave nothing to train (the `no_trained_tokens` guard), but the missing tool-call
    # rendering is caught first, with the more useful reason.
    tok = tokenizer_with(None)
    r = Reconstructor(tok, Reconstruction(truncated="keep"))
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [call("1", "f", "{}")]},
    ]
    assert rejected(r, msgs, finish_reason="length").reason == "tool_calls_not_rendered"


def test_roundtrip_mismatch_is_caught():
    # A tokenizer whose normaliser lower-cases text cannot give the content back.
    from tokenizers import normalizers

    tok = _inline(CHATML_BODY + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    rej = rejected(Reconstructor(tok, Reconstruction()), convo(("Q", "Answer")))
    assert rej.reason == "roundtrip_mismatch" and "char" in rej.detail


def test_roundtrip_mismatch_on_text_the_vocabulary_cannot_hold(smol_tokenizer):
    # The GGUF-converted SmolLM2 vocabulary has no token for the byte 0xF1, so
    # U+40000 cannot be tokenised losslessly: the self-check refuses to train on it.
    rej = rejected(Reconstructor(smol_tokenizer, Reconstruction()), convo(("Q", "x\U00040000")))
    assert rej.reason == "roundtrip_mismatch"


def test_self_check_same_with_token_bytes_and_whole_sequence_decoding():
    # Byte-level decoders are checked one segment at a time, by the tokens' bytes; any
    # other decoder by decoding the whole and the trained token sequences. Both accept
    # the same samples.
    from tokenizers import decoders

    msgs = convo(("Q", " caf\u00e9 \u6771\u4eac \U0001f600"), ("again", "\n  x"), system="S")
    generic = _inline(tokenizer_with(None).chat_template)
    generic.backend_tokenizer.decoder = decoders.Sequence([decoders.ByteLevel()])
    a, b = Reconstructor(tokenizer_with(None), Reconstruction()), Reconstructor(generic, Reconstruction())
    assert a._token_bytes is not None and b._token_bytes is None
    assert a.build(msgs, sample_id="s") == b.build(msgs, sample_id="s")
    bad = convo(("Q", "x\U00040000"))  # not representable: both reject it
    assert rejected(a, bad).reason == rejected(b, bad).reason == "roundtrip_mismatch"


def test_train_roles_user():
    # Opt-in: user turns trained too. Their header stays context; content + end token trained.
    tok = tokenizer_with("chatml_generation")
    r = recon("chatml_generation", train_roles=["user", "assistant"])
    s = one(r, convo(("Q", "A"), ("Q2", "B")))
    assert runs(tok, s) == [
        (None, "<|im_start|>user\n"),
        (1, "Q" + IM),
        (0, "\n<|im_start|>assistant\n"),
        (1, "A" + IM),
        (0, "\n<|im_start|>user\n"),
        (1, "Q2" + IM),
        (0, "\n<|im_start|>assistant\n"),
        (1, "B" + IM),
    ]


def test_trailing_context_after_last_trained_turn_is_dropped(smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction())
    s = one(r, convo(("Q", "A")) + [{"role": "user", "content": "unanswered"}])
    assert "unanswered" not in full_text(smol_tokenizer, s)


def test_split_sample_overlong_rejects_only_that_sample():
    r = recon("reasoning_rewrite", max_seq_len=40)
    msgs = Q3_TWO_QUERIES[:3] + [{"role": "assistant", "content": "long " * 50}]
    samples, rejections = r.build(msgs, sample_id="c")
    assert [s.sample_id for s in samples] == ["c/turn1"]
    assert [(x.item_id, x.reason) for x in rejections] == [("c/turn2", "overlong")]


def test_every_reason_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "reconstruction.md").read_text(encoding="utf-8")
    missing = [r for r in REJECTION_REASONS if f"`{r}`" not in doc]
    assert missing == []


# ---------------------------------------------------------------------------
# Parity with transformers' assistant mask ({% generation %} template)
# ---------------------------------------------------------------------------


def hf_masked_text(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = out["input_ids"]
    return decode(tok, [i for i, m in zip(ids, out["assistant_masks"]) if m]), decode(tok, ids)


def test_parity_with_transformers_assistant_mask():
    tok = tokenizer_with("chatml_generation")
    msgs = convo(("What is 2+2?", "4, of course."), ("And 3+3?", "Six.\nDone."), ("Bye", "Bye!"))
    s = one(recon("chatml_generation"), msgs)
    hf_masked, hf_full = hf_masked_text(tok, msgs)
    assert masked_text(tok, s) == hf_masked == "4, of course.<|im_end|>Six.\nDone.<|im_end|>Bye!<|im_end|>"
    assert full_text(tok, s) + "\n" == hf_full


def test_parity_differs_only_by_merged_boundary_tokens():
    # Two leading spaces: one-piece tokenisation merges the header's "\n" with the
    # first space into one token, which transformers then marks as assistant, so its
    # masked text carries the header newline; we tokenise the turn on its own.
    tok = tokenizer_with("chatml_generation")
    msgs = convo(("Q", "  indented"))
    s = one(recon("chatml_generation"), msgs)
    hf_masked, _ = hf_masked_text(tok, msgs)
    assert masked_text(tok, s) == "  indented" + IM
    assert hf_masked == "\n  indented" + IM


# ---------------------------------------------------------------------------
# tokenize_file
# ---------------------------------------------------------------------------


def test_tokenize_file(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    lines = [
        json.dumps({"messages": convo(("Q", "A"))}),
        "{not json",
        json.dumps([1, 2]),
        "",
        json.dumps(
            {
                "messages": convo(
                    ("Q", "cut"),
                ),
                "finish_reason": "length",
            }
        ),
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}),
        json.dumps({"messages": convo(("Q", "B")), "tools": TOOLS, "finish_reason": "stop"}),
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "o.jsonl"
    summary = tokenize_file(str(smol_tokenizer_dir), str(inp), str(out))
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 5, 6, 7]
    assert set(rows[0]) == {"prompt_ids", "completion_ids", "completion_mask", "line"}
    assert decode(smol_tokenizer, rows[0]["completion_ids"]) == "A" + IM and rows[0]["completion_mask"] == [1, 1]
    assert rows[1]["error"].startswith("invalid_json: ") and f"{inp}:2" in rows[1]["error"]
    assert rows[2]["error"].startswith("invalid_line: ")
    assert rows[3]["error"].startswith("truncated: ") and f"{inp}:5" in rows[3]["error"]
    assert rows[4]["error"].startswith("empty_assistant_turn: ")
    assert "prompt_ids" in rows[5]
    assert summary["lines"] == 6 and summary["samples"] == 2 and summary["rejected"] == 4
    assert summary["by_reason"] == {"invalid_json": 1, "invalid_line": 1, "truncated": 1, "empty_assistant_turn": 1}
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.jsonl"]  # temp file renamed away


def test_tokenize_file_rejects_unreadable_lines_one_by_one(tmp_path, smol_tokenizer_dir):
    """A byte that is not UTF-8 and JSON nested past the recursion limit are each that line's
    rejection, named file:line; the lines around them still tokenize."""
    good = json.dumps({"messages": convo(("Q", "A"))}).encode() + b"\n"
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(good + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n' + b"[" * 100_000 + b"\n" + good)
    summary = tokenize_file(str(smol_tokenizer_dir), str(inp), str(tmp_path / "o.jsonl"))
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and "prompt_ids" in rows[0] and "prompt_ids" in rows[3]
    assert rows[1]["error"].startswith(f"invalid_utf8: {inp}:2: not valid UTF-8 (byte 0xe9")
    assert rows[2]["error"].startswith(f"invalid_json: {inp}:3: JSON nested too deeply")
    assert summary["samples"] == 2 and summary["by_reason"] == {"invalid_utf8": 1, "invalid_json": 1}


def test_tokenize_file_uses_policy(tmp_path, smol_tokenizer_dir):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"messages": convo(("Q", "cut")), "finish_reason": "length"}) + "\n")
    summary = tokenize_file(
        str(smol_tokenizer_dir), str(inp), str(tmp_path / "o.jsonl"), Reconstruction(truncated="keep")
    )
    assert summary["samples"] == 1 and summary["rejected"] == 0 and summary["truncated_kept"] == 1


def test_tokenize_file_reads_the_record_formats_replay_reads(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    # A distill recording line is its messages AND its response: read as replay reads it (it used to
    # lose the response and train nothing, or the prompt's own assistant turns); ShareGPT and
    # prompt/completion lines too. A line no format reads is named with the formats there are.
    history = convo(("earlier", "earlier answer"))
    lines = [
        {
            "v": 1,
            "prompt_id": "p",
            "messages": history + [{"role": "user", "content": "Q"}],
            "response": {"content": "A"},
        },
        {"conversations": [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
        {"prompt": "Q3", "completion": "A3"},
        {"messages": [{"role": "user", "content": "Q"}], "response": {"content": "A"}},  # no prompt_id
        {"custom_id": "c", "response": {"status_code": 200, "body": {}}},
        {"instruction": "Q", "output": "A"},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    summary = tokenize_file(str(smol_tokenizer_dir), str(inp), str(tmp_path / "o.jsonl"))
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    r = Reconstructor(smol_tokenizer, Reconstruction())
    for row, msgs in zip(rows, [history + convo(("Q", "A")), convo(("Q2", "A2")), convo(("Q3", "A3"))]):
        (want,), _ = r.build(msgs, sample_id="x")
        got = (row["prompt_ids"], row["completion_ids"], row["completion_mask"])
        assert got == (want.prompt_ids, want.completion_ids, want.completion_mask)
    assert (
        decode(smol_tokenizer, rows[0]["completion_ids"])
        == "earlier answer" + IM + "\n<|im_start|>user\nQ" + IM + "\n<|im_start|>assistant\nA" + IM
    )
    assert (
        rows[3]["error"]
        == f"invalid_line: {inp}:4: a distill recording line: prompt_id: missing; every recording line names its prompt"
    )
    assert rows[4]["error"].startswith(f"invalid_line: {inp}:5: an OpenAI Batch API output line;")
    assert "--batch-input" in rows[4]["error"] and "orchestrator.replay.batch_input" in rows[4]["error"]
    assert "'conversations' (ShareGPT)" in rows[5]["error"] and "['instruction', 'output']" in rows[5]["error"]
    assert rows[5]["error"].endswith('; here perhaps columns = {prompt = "instruction", completion = "output"}')
    assert [row["line"] for row in rows] == [1, 2, 3, 4, 5, 6] and summary["samples"] == 3
    assert summary["by_reason"] == {"invalid_line": 3}


def test_tokenize_file_reads_a_batch_output_file_with_its_input_file(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    """An OpenAI Batch API output file holds only the answers; with the batch's input file (distill tokenize
    --batch-input) each answer is built after its request's messages, as replay builds it. Before, every
    such line was invalid_line, naming replay. A failed request is batch_error."""
    request = {"model": "m", "messages": [{"role": "user", "content": "Q"}]}
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": request})
        + "\n"
        + json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": request})
        + "\n"
    )
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"}]}
    out = [
        {"id": "r1", "custom_id": "a", "response": {"status_code": 200, "body": answer}, "error": None},
        {"id": "r2", "custom_id": "b", "response": None, "error": {"code": "server_error", "message": "boom"}},
    ]
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(x) + "\n" for x in out))
    args = (str(smol_tokenizer_dir), str(tmp_path / "out.jsonl"), str(tmp_path / "o.jsonl"))
    summary = tokenize_file(*args, batch_input=str(tmp_path / "in.jsonl"))
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    (want,), _ = Reconstructor(smol_tokenizer, Reconstruction()).build(convo(("Q", "A")), sample_id="x")
    assert (rows[0]["prompt_ids"], rows[0]["completion_ids"]) == (want.prompt_ids, want.completion_ids)
    assert rows[1]["line"] == 2 and rows[1]["error"].startswith("batch_error: ") and "boom" in rows[1]["error"]
    assert summary["samples"] == 1 and summary["by_reason"] == {"batch_error": 1}


def test_tokenize_batch_input_that_is_not_one_is_named(tmp_path, smol_tokenizer_dir):
    from orchestrator.reconstruction.tokenize_jsonl import TokenizeInputError

    (tmp_path / "out.jsonl").write_text('{"custom_id": "a", "response": {"status_code": 200, "body": {}}}\n')
    (tmp_path / "bad.jsonl").write_text("not json\n")
    args = (str(smol_tokenizer_dir), str(tmp_path / "out.jsonl"), str(tmp_path / "o.jsonl"))
    with pytest.raises(TokenizeInputError, match="batch input file .*missing.jsonl \\(--batch-input.* is not a file"):
        tokenize_file(*args, batch_input=str(tmp_path / "missing.jsonl"))
    with pytest.raises(
        TokenizeInputError, match="batch input file \\(--batch-input.*bad.jsonl:1: .*not a Batch API input line"
    ):
        tokenize_file(*args, batch_input=str(tmp_path / "bad.jsonl"))
    assert not (tmp_path / "o.jsonl").exists()


def counts(stats) -> dict:
    """stats without prompt_prefix_reused, a work counter: within one batch a shared prompt
    prefix serves its second prompt, across calls (build) its third (prompt_jobs.py)."""
    return {k: v for k, v in stats.items() if k != "prompt_prefix_reused"}


def test_build_many_equals_build_and_prompt_cache(smol_tokenizer):
    convs = [dict(messages=convo(("Same prompt", f"answer {i}")), sample_id=f"p/{i}", sample_index=i) for i in range(3)]
    convs.append(dict(messages=convo(("Q", "")), sample_id="bad"))
    convs.append(dict(messages=Q3_TWO_QUERIES, sample_id="multi"))
    one_by_one = Reconstructor(smol_tokenizer, Reconstruction(reasoning="think_tags"))
    batched = Reconstructor(smol_tokenizer, Reconstruction(reasoning="think_tags"))
    for r in (one_by_one, batched):  # render every first prompt (SmolLM2's needs it only once)
        r.chat_template.after_is_constant = False
    expected = [one_by_one.build(**c) for c in convs]
    assert batched.build_many(convs) == expected
    assert counts(batched.stats) == counts(one_by_one.stats)
    assert len(batched._prompt_cache) == 2  # "Same prompt" once, and Q3_TWO_QUERIES (not split here)
    # the shared prompt was rendered once: 3 samples, 1 render + 2 cache hits
    assert batched.stats["prompt_render_cache_hits"] == 2
    assert [s.sample_index for s, _ in expected[:3] for s in s] == [0, 1, 2]


def test_token_bytes_table_agrees_with_the_decoder(smol_tokenizer):
    # Every id's bytes, as the table has them, decode (by the tokenizer itself) to the
    # token's own decode; multi-token sequences decode to the concatenation.
    table = Reconstructor(smol_tokenizer, Reconstruction())._token_bytes
    backend = smol_tokenizer.backend_tokenizer
    assert table is not None and len(table) == len(smol_tokenizer)
    text = " caf\u00e9 \u6771\u4eac \U0001f600 x=y+1\n\t<|im_end|>"
    ids = backend.encode(text, add_special_tokens=False).ids
    assert b"".join(table[i] for i in ids) == text.encode() == backend.decode(ids, skip_special_tokens=False).encode()


def test_token_bytes_refused_when_the_tokenizer_disagrees(smol_tokenizer):
    # The table is only used when the tokenizer's own decode agrees with it for every id.
    # A backend whose ids 100 and 101 decode to each other's text (as a vocabulary the
    # table misread would), or whose vocabulary cannot be read, gets no table.
    from orchestrator.reconstruct import _token_bytes_uncached as _token_bytes

    class Swapped:
        def __init__(self, inner):
            self.inner = inner

        def decode_batch(self, seqs, **kw):
            swap = {100: 101, 101: 100}
            return self.inner.decode_batch([[swap.get(i, i) for i in s] for s in seqs], **kw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    class Unreadable(Swapped):
        def get_vocab(self, **kw):
            raise RuntimeError("no vocabulary")

    backend = smol_tokenizer.backend_tokenizer
    assert _token_bytes(backend) is not None
    assert _token_bytes(Swapped(backend)) is None
    assert _token_bytes(Unreadable(backend)) is None


def test_a_verified_prompt_is_not_checked_again(smol_tokenizer):
    # The n samples of one prompt: its tokens' bytes compared with its text once, so
    # later samples check only their completions. A prompt that failed is never trusted,
    # and failing samples go to the tokenizer's own decode (for the error message).
    class Counting(list):
        def __init__(self, table):
            super().__init__(table)
            self.lookups = 0

        def __getitem__(self, i):
            self.lookups += 1
            return list.__getitem__(self, i)

    class Recording:
        def __init__(self, backend):
            self.backend, self.decoded = backend, []

        def decode_batch(self, seqs, **kw):
            self.decoded.append([list(x) for x in seqs])
            return self.backend.decode_batch(seqs, **kw)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    r = Reconstructor(smol_tokenizer, Reconstruction())
    r._token_bytes = Counting(r._token_bytes)
    r.backend = Recording(r.backend)
    first = r.build(convo(("Same prompt", "one")), sample_id="a")[0][0]
    assert r._token_bytes.lookups == first.num_tokens
    second = r.build(convo(("Same prompt", "two")), sample_id="b")[0][0]
    assert first.prompt_ids == second.prompt_ids
    assert r._token_bytes.lookups == first.num_tokens + len(second.completion_ids)
    assert r.backend.decoded == []  # good samples never need the tokenizer's decode
    bad = convo(("x\U00040000", "three"))  # not representable: rejected each time, never skipped
    for sid in ("c", "d"):
        assert rejected(r, bad).reason == "roundtrip_mismatch"
    assert [len(calls) for calls in r.backend.decoded] == [2, 2]  # the whole and the trained sequence


def test_build_many_pipelined_over_chunks_equals_build():
    # More conversations than one pipeline chunk: chunks are encoded in a helper thread
    # while the next renders; results, order and stats must not change. A history-rewriting
    # template (split samples), rejections and shared prompts are mixed in.
    r1, r2 = recon("reasoning_rewrite"), recon("reasoning_rewrite")
    convs = []
    for i in range(3 * r2.PIPELINE_CHUNK + 5):
        if i % 7 == 3:
            msgs = convo(("Q", ""))  # empty assistant turn: rejected
        elif i % 5 == 0:
            msgs = [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "a", "reasoning_content": "r"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": f"b{i}"},
            ]
        else:
            msgs = convo((f"shared {i % 4}", f"answer {i}"))
        convs.append(dict(messages=msgs, sample_id=f"c{i}"))
    expected = [r1.build(**c) for c in convs]
    assert r2.build_many(convs) == expected
    assert (
        counts(r2.stats) == counts(r1.stats) and r2.stats["split"] > 0 and r2.stats["rejected:empty_assistant_turn"] > 0
    )


# ---------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------


def test_inspect_terminal_and_html(smol_tokenizer):
    from orchestrator.sample_view import render_html, render_terminal

    r = Reconstructor(smol_tokenizer, Reconstruction())
    s = one(r, convo(("<b>Q</b> & co", "Yes <i>&amp;</i> 😀")), sample_id="p/3", prompt_id="p")
    plain = render_terminal(s, smol_tokenizer, color=False)
    assert plain.splitlines()[0].startswith("p/3") and f"trained {s.num_trained}" in plain
    # trained run in [[ ]] with token boundaries, newlines made visible, nothing else trained
    body = plain.split("\n\n", 1)[1]
    assert body.count("[[") == 1 and body.count("]]") == 1
    trained = body[body.index("[[") + 2 : body.index("]]")]
    assert trained.split("\u2502") == ["Yes", " <", "i", ">", "&", "amp", ";", "</", "i", ">", " 😀", "<|im_end|>"]
    assert "\u2502ass\u2502istant\u2502\u21b5\n" in body  # header tokens, newline made visible
    colored = render_terminal(s, smol_tokenizer, color=True)
    assert "\x1b[48;5;22m" in colored and "\x1b[48;5;28m" in colored and "\x1b[0m" in colored
    page = render_html([s, s], smol_tokenizer, title="run <1>")
    assert page.startswith("<!DOCTYPE html>") and "<title>run &lt;1&gt;</title>" in page
    assert ">&lt;</span>" in page and ">&amp;amp</span>" not in page and "<b>" not in page and "<i>" not in page
    assert ">amp</span>" in page and "> &amp;</span>" in page  # each token escaped on its own
    assert page.count("<section>") == 2 and "Legend" in page and "p/3" in page
    # the emoji spans two byte-level tokens: one box, both ids in its tooltip
    assert page.count('class="tok trained') == 1 + 2 * (s.num_trained - 1)  # legend + pieces
    emoji = smol_tokenizer.encode(" 😀", add_special_tokens=False)
    assert len(emoji) == 2 and f'title="{emoji[0]} {emoji[1]}"> 😀</span>' in page


def test_deeply_nested_tool_arguments_reject_the_conversation_not_the_run():
    """JSON nested past Python's recursion limit, as a string (what the API returns) or as data."""
    r = recon("chatml_tools")
    deep: dict = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    for args in ("[" * 100_000 + "]" * 100_000, deep):
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
        rej = rejected(r, msgs)
        assert rej.reason == "invalid_tool_arguments" and "nested too deeply" in rej.detail
