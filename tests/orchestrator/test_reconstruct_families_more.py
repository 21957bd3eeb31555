"""Reconstruction against more real chat templates: Phi-4, Phi-4-mini, Gemma 3, SmolLM3,
Granite 3.3, Hermes 3 (tool_use), Mistral Small 3.1, Llama 4, OLMo 2 / Tulu 3, Qwen3-Coder,
gpt-oss, LFM2, LFM2.5, ERNIE 4.5 (tests/templates/, source in each file's first line). Tokenizers: the real ones tests/support/tokenizer_builds.py builds, with the
family's turn tokens added where the family's own vocabulary is not shipped by a package
(tests/support/family_standins.py says which).

Every accepted conversation is checked against the template's own render (transformers'
apply_chat_template, the reference): the prompt ids are the tokenisation of the rendered
generation prompt, prompt + completion decode to the full render (less the template's
text after the last end token), and the trained tokens decode to exactly the assistant
texts plus the end token the template puts after them.
"""

from __future__ import annotations

import json

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import TWO_TURNS, decode, full_text, masked_text, recon, reference, runs, trained

from orchestrator.tool_args import ToolCallShape, short_call_id

CALL_ARGS = {"city": "Paris", "unit": "C"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}}},
        },
    }
]
PLAIN = TWO_TURNS
SYSTEM = [{"role": "system", "content": "Be brief."}, *PLAIN[:2]]
OUTER_WS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello \n"}]
REASONED = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
]


def tool_conversation(call_id="c1", system=True):
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(CALL_ARGS)}}
    return [
        *([{"role": "system", "content": "Sys"}] if system else []),
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny, 21", "tool_call_id": call_id},
        {"role": "assistant", "content": "It is sunny."},
    ]


def check_against_template(tok, r, messages, tools=None, as_rendered=None, **kw):
    """Build one unsplit sample and check it against the template's own renders of
    `as_rendered` (default: the messages themselves); returns it."""
    samples, rejections = r.build(messages, tools, sample_id="f")
    assert rejections == [] and len(samples) == 1, rejections
    s = samples[0]
    messages = as_rendered or messages
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = reference(tok, messages[:first], tools, add_generation_prompt=True, **kw)
    assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False)
    full = reference(tok, messages, tools, **kw)
    assert full.endswith(r.final_tail)
    assert full_text(tok, s) == full[: len(full) - len(r.final_tail)]
    return s


def reasons(rejections) -> list[str]:
    return [x.reason for x in rejections]


# -- Phi-4 and Phi-4-mini: no default system prompt, no tool-call rendering -------------------


def test_phi4_golden():
    tok = standin("phi4")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|im_end|>", "")
    s = check_against_template(tok, r, PLAIN)
    assert runs(tok, s) == [
        (None, "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>"),
        (1, "Hello!<|im_end|>"),
        (0, "<|im_start|>user<|im_sep|>Fine<|im_end|><|im_start|>assistant<|im_sep|>"),
        (1, "Good.<|im_end|>"),
    ]
    s = check_against_template(tok, r, SYSTEM)
    assert decode(tok, s.prompt_ids).startswith("<|im_start|>system<|im_sep|>Be brief.<|im_end|>")
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n<|im_end|>"


def test_phi4_mini_golden():
    tok = standin("phi4_mini")
    r = recon(tok=tok)
    # without a generation prompt the template ends with eos: the tail after the last turn
    assert (r.eot, r.final_tail) == ("<|end|>", "<|endoftext|>")
    s = check_against_template(tok, r, [{"role": "system", "content": "Sys"}, *PLAIN])
    assert runs(tok, s) == [
        (None, "<|system|>Sys<|end|><|user|>Hi<|end|><|assistant|>"),
        (1, "Hello!<|end|>"),
        (0, "<|user|>Fine<|end|><|assistant|>"),
        (1, "Good.<|end|>"),
    ]
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n<|end|>"


@pytest.mark.parametrize("family", ["phi4", "phi4_mini", "gemma3", "granite3_3", "smollm3", "olmo2_tulu", "lfm2"])
def test_templates_without_tool_calls_or_reasoning_say_so(family):
    """None of these templates renders `tool_calls` or `reasoning_content` (Phi-4-mini lists
    tools in the system turn and expects calls as text; SmolLM3 and Granite list them in the
    system prompt): a tool-call turn would be trained as an empty turn, so it is rejected;
    reasoning goes inline with reasoning = "think_tags"."""
    tok = standin(family)
    r = recon(tok=tok)
    assert not r.tool_shape.probed
    _, rejections = r.build(tool_conversation(system=family != "gemma3"), None, sample_id="t")
    # Phi-4's and OLMo 2's templates drop tool messages too: the answer after the result is refused first
    drops = family in ("phi4", "olmo2_tulu")
    assert reasons(rejections) == ["tool_results_not_rendered" if drops else "tool_calls_not_rendered"]
    assert r.renders_tool_results is not drops
    _, rejections = r.build(REASONED, None, sample_id="t")
    assert reasons(rejections) == ["reasoning_not_rendered"] and "think_tags" in rejections[0].detail
    r = recon(tok=tok, reasoning="think_tags")
    inline = [
        dict(m, content=f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content']}")
        if m["role"] == "assistant"
        else m
        for m in REASONED
    ]
    s = check_against_template(tok, r, REASONED, as_rendered=inline)
    assert trained(tok, s) == ["<think>\nR1\n</think>\n\nA1" + r.eot, "<think>\nR2\n</think>\n\nA2" + r.eot]


# -- LFM2: ChatML after a bos, tools listed in the system turn, calls written as text in the content ----


def test_lfm2_golden_and_its_calls_as_text():
    tok = standin("lfm2")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|im_end|>", "\n")
    s = check_against_template(tok, r, PLAIN)
    assert runs(tok, s) == [
        (None, "<|startoftext|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Hello!<|im_end|>"),
        (0, "\n<|im_start|>user\nFine<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Good.<|im_end|>"),
    ]
    s = check_against_template(tok, r, SYSTEM, TOOLS)
    assert decode(tok, s.prompt_ids).startswith(
        "<|startoftext|><|im_start|>system\nBe brief.\nList of tools: <|tool_list_start|>[{"
    )
    # its calls are text in the content (LFM2's own tokens): trained as written where such text is allowed
    call = '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>'
    texts = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": call},
        {"role": "tool", "content": "sunny, 21"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    _, rejections = r.build(texts, TOOLS, sample_id="t")
    assert reasons(rejections) == ["special_token_in_content"]
    allow = recon(tok=tok, special_tokens_in_content="allow")
    s = check_against_template(tok, allow, texts, TOOLS)
    assert trained(tok, s) == [call + "<|im_end|>", "It is sunny.<|im_end|>"]
    assert "<|tool_response_start|>sunny, 21<|tool_response_end|>" in decode(tok, s.completion_ids)


def test_lfm2_5_renders_its_calls_after_the_text_and_thinking_on_the_last_turns():
    """LFM2.5's template renders tool calls itself (Pythonic, after the content; arguments as a dict) and
    `thinking` as "<think>R</think>" only after the last user message: earlier answers lose it."""
    tok = standin("lfm2_5")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail, r.places_reasoning) == ("<|im_end|>", "\n", True)
    msgs = tool_conversation(system=False)
    msgs[1] = dict(msgs[1], content="Let me check.")
    s = check_against_template(tok, r, msgs, TOOLS, as_rendered=msgs)
    call = "<|tool_call_start|>[get_weather(city='Paris', unit='C')]<|tool_call_end|>"
    assert trained(tok, s) == ["Let me check." + call + "<|im_end|>", "It is sunny.<|im_end|>"]
    samples, rejections = r.build(REASONED, None, sample_id="r")
    assert rejections == [] and [trained(tok, x) for x in samples] == [
        ["<think>R1</think>A1<|im_end|>"],
        ["<think>R2</think>A2<|im_end|>"],
    ]
    samples, _ = recon(tok=tok, reasoning="drop").build(REASONED, None, sample_id="r")
    assert len(samples) == 1 and trained(tok, samples[0]) == ["A1<|im_end|>", "A2<|im_end|>"]


# -- Gemma 3: the template itself folds the system message into the first user turn, trims content


def test_gemma3_golden_and_system_folded_by_the_template():
    tok = standin("gemma3")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<end_of_turn>", "\n")
    s = check_against_template(tok, r, PLAIN)
    assert runs(tok, s) == [
        (None, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
        (1, "Hello!<end_of_turn>"),
        (0, "\n<start_of_turn>user\nFine<end_of_turn>\n<start_of_turn>model\n"),
        (1, "Good.<end_of_turn>"),
    ]
    # unlike Gemma 2's, Gemma 3's template accepts a system message (it prefixes the first
    # user turn): no switch needed
    s = check_against_template(tok, r, SYSTEM)
    assert decode(tok, s.prompt_ids) == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_gemma3_trims_content_and_rejects_tool_messages():
    r = recon(tok=standin("gemma3"))
    _, rejections = r.build(OUTER_WS, None, sample_id="g")
    assert reasons(rejections) == ["template_alters_content"] and "trims" in rejections[0].detail
    tok = standin("gemma3")
    samples, rejections = recon(tok=tok, content_whitespace="strip").build(OUTER_WS, None, sample_id="g")
    assert rejections == [] and masked_text(tok, samples[0]).startswith("Hello<end_of_turn>")  # opted in
    # a tool message breaks the template's user/model alternation: the template raises
    _, rejections = r.build(
        [*PLAIN[:2], {"role": "tool", "content": "t"}, {"role": "assistant", "content": "B"}], None, sample_id="g"
    )
    assert reasons(rejections) == ["template_error"] and "alternate" in rejections[0].detail


# -- SmolLM3: a default system prompt (dated), /think and /no_think modes ----------------------

SMOL_HEADER = "<|im_start|>assistant\n"


def test_smollm3_thinking_mode_golden():
    tok = standin("smollm3")
    r = recon(tok=tok, reasoning="think_tags")
    assert (r.eot, r.final_tail) == ("<|im_end|>", "\n")
    s = check_against_template(tok, r, PLAIN)
    prompt = decode(tok, s.prompt_ids)
    # the template's own system turn (metadata, today's date, default instructions) is context
    assert prompt.startswith("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: ")
    assert "Reasoning Mode: /think" in prompt and prompt.endswith("<|im_start|>user\nHi<|im_end|>\n" + SMOL_HEADER)
    assert runs(tok, s)[1:] == [
        (1, "Hello!<|im_end|>"),
        (0, "\n<|im_start|>user\nFine<|im_end|>\n" + SMOL_HEADER),
        (1, "Good.<|im_end|>"),
    ]
    # reasoning goes inline, where the thinking model emits it
    inline = [
        dict(m, content=f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content']}")
        if m["role"] == "assistant"
        else m
        for m in REASONED
    ]
    s = check_against_template(tok, r, REASONED, as_rendered=inline)
    assert trained(tok, s) == ["<think>\nR1\n</think>\n\nA1<|im_end|>", "<think>\nR2\n</think>\n\nA2<|im_end|>"]
    # a custom system prompt replaces the default instructions
    s = check_against_template(tok, r, SYSTEM)
    assert "## Custom Instructions\n\nBe brief.\n\n" in decode(tok, s.prompt_ids)


@pytest.mark.parametrize(
    "kwargs,system",
    [({"enable_thinking": False}, []), ({}, [{"role": "system", "content": "Be brief. /no_think"}])],
)
def test_smollm3_no_think_mode(kwargs, system):
    """In /no_think mode (the kwarg, or "/no_think" in the system prompt) the generation
    prompt already holds the empty thinking block: the student emits only the answer."""
    tok = standin("smollm3")
    r = recon(tok=tok, reasoning="drop", chat_template_kwargs=kwargs)
    msgs = [*system, *PLAIN]
    s = check_against_template(tok, r, msgs, **kwargs)
    assert decode(tok, s.prompt_ids).endswith(SMOL_HEADER + "<think>\n\n</think>\n")
    assert trained(tok, s) == ["Hello!<|im_end|>", "Good.<|im_end|>"]
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS, **kwargs)) == "  Hello \n<|im_end|>"


def test_smollm3_strips_leading_newlines():
    """The template renders content.lstrip("\\n"): such content is not what the student would learn."""
    r = recon(tok=standin("smollm3"))
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello"}]
    _, rejections = r.build(msgs, None, sample_id="s")
    assert reasons(rejections) == ["template_alters_content"]
    assert "SmolLM3's `.lstrip(" in rejections[0].detail


# -- Granite 3.3: a default (dated) system prompt, the generation prompt inside the loop ---------


def test_granite3_3_golden():
    tok = standin("granite3_3")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|end_of_text|>", "\n")
    s = check_against_template(tok, r, PLAIN)
    prompt = decode(tok, s.prompt_ids)
    assert prompt.startswith("<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024.\nToday's Date: ")
    assert prompt.endswith(
        "<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"
    )
    assert runs(tok, s)[1:] == [
        (1, "Hello!<|end_of_text|>"),
        (0, "\n<|start_of_role|>user<|end_of_role|>Fine<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"),
        (1, "Good.<|end_of_text|>"),
    ]
    s = check_against_template(tok, r, SYSTEM)
    assert decode(tok, s.prompt_ids).startswith("<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n")
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n<|end_of_text|>"


# -- Mistral Small 3.1 (tekken, [SYSTEM_PROMPT]) -----------------------------------------------


def test_mistral_small_3_1_golden():
    tok = standin("mistral_small_3_1")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("</s>", "")
    s = check_against_template(tok, r, SYSTEM)
    assert runs(tok, s) == [(None, "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hi[/INST]"), (1, "Hello!</s>")]
    # without a system message the template's default one (dated) is context
    s = check_against_template(tok, r, PLAIN)
    assert decode(tok, s.prompt_ids).startswith("<s>[SYSTEM_PROMPT]You are Mistral Small 3")
    assert runs(tok, s)[1:] == [(1, "Hello!</s>"), (0, "[INST]Fine[/INST]"), (1, "Good.</s>")]
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n</s>"


def test_mistral_small_3_1_tool_call():
    tok = standin("mistral_small_3_1")
    r = recon(tok=tok)
    assert r.tool_shape == ToolCallShape(
        arguments_as_string=False, null_content=False, probed=True, short_ids=True, drops_text=True
    )
    msgs = tool_conversation(call_id="call_abc123def")  # the template keeps the last 9 characters, as we do
    s = check_against_template(tok, r, msgs, TOOLS)
    assert runs(tok, s)[1:] == [
        (
            1,
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}, "id": "abc123def"}]</s>',
        ),
        (0, '[TOOL_RESULTS] {"content": sunny, 21, "call_id": "abc123def"}[/TOOL_RESULTS]'),
        (1, "It is sunny.</s>"),
    ]
    # a call id shorter than 9 characters, on which the template raises, is passed as 9 drawn from it
    short = short_call_id("c1")
    s = check_against_template(tok, r, tool_conversation("c1"), TOOLS, as_rendered=tool_conversation(short))
    assert len(short) == 9 and short.isalnum() and f'"id": "{short}"' in trained(tok, s)[0]


# -- Hermes 3, tool_use template: needs a tools list; a last tool message renders differently ---


def test_hermes3_tool_use_golden():
    """The tool_use template renders a tool message that ends the prompt as
    "...</tool_response><|im_end|>", but as "...</tool_response>\\n<|im_end|>" once a turn
    follows (`loop.last`): the prompt the student sees is not a prefix of the turn's render.
    The turn is trained after the prompt exactly as the student sees it at inference."""
    tok = standin("hermes3_tool_use")
    r = recon(tok=tok)
    assert r.probe_tools is not None  # nothing renders without a tools list
    assert r.tool_shape == ToolCallShape(arguments_as_string=False, null_content=False, probed=True, drops_text=True)
    msgs = tool_conversation()
    samples, rejections = r.build(msgs, TOOLS, sample_id="h")
    assert rejections == [] and len(samples) == 1
    s = samples[0]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call><|im_end|>'
    assert trained(tok, s) == [call, "It is sunny.<|im_end|>"]
    assert r.stats["rewritten_history_turns"] == 1
    # each turn follows exactly the generation prompt the template renders for it
    for turn, k in enumerate((2, 4)):
        prompt = reference(tok, msgs[:k], TOOLS, add_generation_prompt=True)
        upto = s.completion_mask.index(1) if turn == 0 else s.completion_mask.index(1, s.completion_mask.index(0))
        assert s.prompt_ids + s.completion_ids[:upto] == tok.encode(prompt, add_special_tokens=False)
    assert prompt.endswith("</tool_response><|im_end|><|im_start|>assistant\n")
    full = reference(tok, msgs, TOOLS)
    assert "</tool_response>\n<|im_end|>" in full  # the turn's render: the other form
    assert full_text(tok, s) == prompt + "It is sunny.<|im_end|>"


def test_hermes3_tool_use_without_tools_names_the_template():
    r = recon(tok=standin("hermes3_tool_use"))
    _, rejections = r.build(PLAIN, None, sample_id="h")
    assert reasons(rejections) == ["template_error"]
    assert "renders nothing without a tools list" in rejections[0].detail


# -- Llama 4: header tokens, <|eot|>, tool calls after <|python_start|><|python_end|> -------------


def test_llama4_golden():
    tok = standin("llama4")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|eot|>", "")
    s = check_against_template(tok, r, SYSTEM)
    assert runs(tok, s) == [
        (
            None,
            "<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|>"
            "<|header_start|>user<|header_end|>\n\nHi<|eot|><|header_start|>assistant<|header_end|>\n\n",
        ),
        (1, "Hello!<|eot|>"),
    ]
    s = check_against_template(tok, r, PLAIN)
    assert trained(tok, s) == ["Hello!<|eot|>", "Good.<|eot|>"]
    # unlike Llama 3's, Llama 4's template keeps assistant content as it is
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n<|eot|>"


def test_llama4_tool_call():
    tok = standin("llama4")
    r = recon(tok=tok)
    assert r.tool_shape == ToolCallShape(arguments_as_string=False, null_content=False, probed=True)
    s = check_against_template(tok, r, tool_conversation(), TOOLS)
    assert runs(tok, s)[1:] == [
        (
            1,
            '<|python_start|><|python_end|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}<|eot|>',
        ),
        (0, '<|header_start|>ipython<|header_end|>\n\n"sunny, 21"<|eot|><|header_start|>assistant<|header_end|>\n\n'),
        (1, "It is sunny.<|eot|>"),
    ]


# -- OLMo 2 / Tulu 3: the last assistant turn has no newline after eos, earlier ones do ----------


def test_olmo2_tulu_golden():
    tok = standin("olmo2_tulu")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|endoftext|>", "")
    s = check_against_template(tok, r, [{"role": "system", "content": "Sys"}, *PLAIN])
    assert runs(tok, s) == [
        (None, "<|system|>\nSys\n<|user|>\nHi\n<|assistant|>\n"),
        (1, "Hello!<|endoftext|>"),
        (0, "\n<|user|>\nFine\n<|assistant|>\n"),
        (1, "Good.<|endoftext|>"),
    ]
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n<|endoftext|>"


def test_ernie4_5_generation_prompt_ending_with_a_space():
    """ERNIE 4.5's generation prompt is `Assistant: `, its space included: the student is prompted with a lone
    space token and emits its answer after it (`Hello`, not `▁Hello`), so that is what is trained, and the
    sample's prompt is the tokenisation of the template's generation prompt. A sample cut from the whole render's tokens
    would train `▁Hello` after `:`, a token sequence the student never continues at inference."""
    tok = standin("ernie4_5")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|end_of_sentence|>", "")
    msgs = [{"role": "system", "content": "Be brief."}, *PLAIN[:3], {"role": "assistant", "content": " Good."}]
    s = check_against_template(tok, r, msgs)
    assert runs(tok, s) == [
        (None, "<|begin_of_sentence|>Be brief.\nUser: Hi\nAssistant: "),
        (1, "Hello!<|end_of_sentence|>"),
        (0, "User: Fine\nAssistant: "),
        (1, "Good.<|end_of_sentence|>"),  # "▁Good" (its own leading space): a run decoded alone drops it
    ]
    pieces = tok.convert_ids_to_tokens
    assert pieces(s.prompt_ids)[-4:] == ["Ass", "istant", ":", "▁"]
    assert pieces([i for i, m in zip(s.completion_ids, s.completion_mask) if m]) == [
        "Hello",
        "!",
        "<|end_of_sentence|>",
        "▁Good",
        ".",
        "<|end_of_sentence|>",
    ]
    whole = pieces(tok.encode(reference(tok, msgs), add_special_tokens=False))
    assert whole[whole.index("istant") + 2] == "▁Hello"  # what the whole render's tokens would have trained
    # the second answer's context is the first as emitted, then "User: Fine\nAssistant: " tokenised on its own: a
    # chat server tokenising the rendered history whole merges the first answer's start into "▁Hello" there
    # (docs/reconstruction.md, step 5; untrained context only)
    upto = s.completion_mask.index(1, s.completion_mask.index(0))
    served = tok.encode(reference(tok, msgs[:4], add_generation_prompt=True), add_special_tokens=False)
    ours = s.prompt_ids + s.completion_ids[:upto]
    at = pieces(served).index("▁Hello")
    assert pieces(ours) == [*pieces(served)[:at], "▁", "Hello", *pieces(served)[at + 1 :]]
    # accented, CJK and emoji text, outer and inner whitespace (decoded whole: a SentencePiece decode drops the
    # space at the start of a run decoded alone)
    for conv in VARIED:
        check_against_template(tok, r, conv)


# -- Qwen3-Coder (real Qwen tokenizer): tool calls as <function=...><parameter=...> XML ----------


def qwen3_coder():
    from support import tokenizer_builds

    return tokenizer_builds.load_or_skip("qwen", "qwen3_coder")


def test_qwen3_coder_golden():
    tok = qwen3_coder()
    r = recon(tok=tok)
    # the probe call's argument shows as <parameter=key>value</parameter>: dict arguments
    assert r.tool_shape == ToolCallShape(arguments_as_string=False, null_content=False, probed=True)
    s = check_against_template(tok, r, PLAIN)
    assert runs(tok, s) == [
        (None, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Hello!<|im_end|>"),
        (0, "\n<|im_start|>user\nFine<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Good.<|im_end|>"),
    ]
    msgs = tool_conversation()
    msgs[2]["content"] = "Let me check."
    s = check_against_template(tok, r, msgs, TOOLS)
    assert runs(tok, s)[1:] == [
        (
            1,
            "Let me check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
            "<parameter=unit>\nC\n</parameter>\n</function>\n</tool_call><|im_end|>",
        ),
        (0, "\n<|im_start|>user\n<tool_response>\nsunny, 21\n</tool_response>\n<|im_end|>\n<|im_start|>assistant\n"),
        (1, "It is sunny.<|im_end|>"),
    ]
    # the content of a tool-call turn is trimmed by the template (plain turns are not)
    msgs[2]["content"] = "  Let me check."
    _, rejections = r.build(msgs, TOOLS, sample_id="q")
    assert reasons(rejections) == ["template_alters_content"] and "trims" in rejections[0].detail
    assert masked_text(tok, check_against_template(tok, r, OUTER_WS)) == "  Hello \n<|im_end|>"


# -- gpt-oss (harmony): <|return|> ends the final answer, <|end|> in the history; analysis channel


def test_gpt_oss_final_answers_split_per_turn():
    """The last final message ends with <|return|> (what the model emits), earlier ones with
    <|end|> (how the history shows them): a history rewrite, so one exact sample per turn,
    each after its own prompt."""
    tok = standin("gpt_oss")
    r = recon(tok=tok)
    assert (r.eot, r.final_tail) == ("<|return|>", "")
    for msgs, reasoning in ((PLAIN, False), (REASONED, True)):
        samples, rejections = r.build(msgs, None, sample_id="o")
        assert rejections == [] and [s.sample_id for s in samples] == ["o/turn1", "o/turn2"]
        for s, k in zip(samples, (1, 3)):
            # the template takes reasoning as `thinking` (transformers' alias of reasoning_content)
            ref = [dict(m, thinking=m["reasoning_content"]) if "reasoning_content" in m else m for m in msgs]
            prompt = reference(tok, ref[:k], add_generation_prompt=True)
            assert s.prompt_ids == tok.encode(prompt, add_special_tokens=False) and prompt.endswith(
                "<|start|>assistant"
            )
            assert full_text(tok, s) == reference(tok, ref[: k + 1])
            m = msgs[k]
            analysis = (
                f"<|channel|>analysis<|message|>{m['reasoning_content']}<|end|><|start|>assistant" if reasoning else ""
            )
            assert trained(tok, s) == [analysis + f"<|channel|>final<|message|>{m['content']}<|return|>"]
    assert "<|start|>assistant<|channel|>final<|message|>A1<|end|>" in decode(tok, samples[1].prompt_ids)


def test_gpt_oss_a_thinking_block_inside_content_goes_to_the_analysis_channel():
    """A teacher that wrote its thinking inside content: gpt-oss's template places reasoning, so the
    block moves there and the student learns it in its analysis channel, not as "<think>" text."""
    tok = standin("gpt_oss")
    r = recon(tok=tok)
    assert r.places_reasoning
    msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nR1\n</think>\n\nA1"}]
    samples, rejections = r.build(msgs, None, sample_id="o")
    assert rejections == [] and trained(tok, samples[0]) == [
        "<|channel|>analysis<|message|>R1<|end|><|start|>assistant<|channel|>final<|message|>A1<|return|>"
    ]


def test_gpt_oss_tool_call_and_developer_message():
    tok = standin("gpt_oss")
    r = recon(tok=tok)
    s = check_against_template(tok, r, tool_conversation(), TOOLS)
    assert decode(tok, s.prompt_ids).endswith(
        "<|start|>developer<|message|># Instructions\n\nSys\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Weather in a city\ntype get_weather = (_: {\n// the city\ncity?: string,\n}) => any;\n\n"
        "} // namespace functions<|end|><|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant"
    )
    assert runs(tok, s)[1:] == [
        (1, ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris", "unit": "C"}<|call|>'),
        (
            0,
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny, 21"<|end|><|start|>assistant',
        ),
        (1, "<|channel|>final<|message|>It is sunny.<|return|>"),
    ]
    assert r.stats["other_end_token"] == 1  # a call ends with <|call|>, the student's own end of turn


def each_turn_follows_its_prompt(tok, s, msgs, tools, turns):
    """Every trained run of `s` starts right after the generation prompt the template renders for
    its turn (messages[:k] for k in `turns`): the context before it is what the student sees."""
    starts = [i for i, m in enumerate(s.completion_mask) if m and (i == 0 or not s.completion_mask[i - 1])]
    assert len(starts) == len(turns), (starts, turns)
    for at, k in zip(starts, turns):
        prompt = reference(tok, msgs[:k], tools, add_generation_prompt=True)
        assert s.prompt_ids + s.completion_ids[:at] == tok.encode(prompt, add_special_tokens=False), k


def test_gpt_oss_the_answer_after_a_tool_result_follows_the_prompt_with_the_calls_analysis():
    """The agent shape: reasoning and a call, the tool's result, the final answer. The template shows the
    call's analysis while the call ends the prompt and drops it once a final answer follows (a rewritten
    history); the answer is trained after the prompt the student sees, from the template's own opening
    of a turn ("<|channel|>final<|message|>")."""
    tok = standin("gpt_oss")
    r = recon(tok=tok)
    assert r.turn_opening == "<|channel|>final<|message|>"
    msgs = tool_conversation(system=False)
    msgs[1] = dict(msgs[1], reasoning_content="I should call.")
    samples, rejections = r.build(msgs, TOOLS, sample_id="o")
    assert rejections == [] and len(samples) == 1 and r.stats["rewritten_history_turns"] == 1
    s = samples[0]
    assert trained(tok, s)[-1] == "<|channel|>final<|message|>It is sunny.<|return|>"
    assert "I should call." in decode(tok, s.completion_ids)  # in the prompt of the answer, as the student sees it
    ref = [dict(m, thinking=m["reasoning_content"]) if "reasoning_content" in m else m for m in msgs]
    each_turn_follows_its_prompt(tok, s, ref, TOOLS, (1, 3))


# -- every family: varied text, build_many == build, accepted samples equal the template's render --

VARIED = [
    [{"role": "user", "content": "Héllo wörld 🌍"}, {"role": "assistant", "content": "Ça va? 👍\n\nYes."}],
    [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "  spaced  "},
        {"role": "assistant", "content": "trailing space "},
    ],
    [
        {"role": "user", "content": "code?"},
        {"role": "assistant", "content": "```python\nprint('x')\n```"},
        {"role": "user", "content": "你好\tworld"},
        {"role": "assistant", "content": "你好!"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "  indented\n\n\nlines"},
    ],
]


STRIPS = ("gemma3", "command_r7b", "gemma4")  # templates that strip the content (`| trim`, `.strip()`)


@pytest.mark.parametrize(
    "family",
    [
        "phi4",
        "phi4_mini",
        "gemma3",
        "smollm3",
        "granite3_3",
        "hermes3_tool_use",
        "mistral_small_3_1",
        "llama4",
        "olmo2_tulu",
        "gpt_oss",
        "lfm2",
        "command_r7b",
        "gemma4",
        "lfm2_5",
    ],
)
def test_varied_text_against_the_template(family):
    tok = standin(family)
    tools = TOOLS if family == "hermes3_tool_use" else None
    convs = [dict(messages=m, tools=tools, sample_id=f"v{i}") for i, m in enumerate(VARIED)]
    many = recon(tok=tok).build_many(convs)
    one = recon(tok=tok)
    alone = [one.build(**c) for c in convs]
    assert [([(s.prompt_ids, s.completion_ids, s.completion_mask) for s in ss], rr) for ss, rr in many] == [
        ([(s.prompt_ids, s.completion_ids, s.completion_mask) for s in ss], rr) for ss, rr in alone
    ]
    accepted = 0
    for conv, (samples, rejections) in zip(VARIED, alone):
        if rejections:  # only what the family's template cannot express
            assert family in STRIPS and [x.reason for x in rejections] == ["template_alters_content"]
            continue
        assistant = [m["content"] for m in conv if m["role"] == "assistant"]
        # each assistant turn trained exactly once, in order: its content verbatim, then an end token
        runs_ = [t for s in samples for t in trained(tok, s)]
        assert len(runs_) == len(assistant)
        for text, content in zip(runs_, assistant):
            assert content in text and any(text.endswith(t) for t in tok.all_special_tokens)
        if len(samples) == 1 and family != "hermes3_tool_use":
            first = next(i for i, m in enumerate(conv) if m["role"] == "assistant")
            prompt = reference(tok, conv[:first], tools, add_generation_prompt=True)
            assert samples[0].prompt_ids == tok.encode(prompt, add_special_tokens=False)
            full = reference(tok, conv, tools)
            if family == "gemma4":  # the sample shows the thought channel its prompt ends with; no render does
                full = prompt + full[len(reference(tok, conv[:first], tools)) + len("<|turn>model\n") :]
            assert full_text(tok, samples[0]) == full[: len(full) - len(one.final_tail)]
        accepted += 1
    assert accepted >= (1 if family in STRIPS else 3)


def test_hermes3_tool_use_two_results_then_more_turns():
    """Two calls, two tool results, then more turns: the answer after the results follows the
    prompt as the student sees it; the later turn's history shows the results the other way
    (a history rewrite), so it gets its own sample and prompt."""
    tok = standin("hermes3_tool_use")
    r = recon(tok=tok)

    def call(i, city):
        return {
            "id": i,
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }

    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call("a", "Paris"), call("b", "Rome")]},
        {"role": "tool", "content": "sunny", "tool_call_id": "a"},
        {"role": "tool", "content": "rainy", "tool_call_id": "b"},
        {"role": "assistant", "content": "Mixed."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Welcome."},
    ]
    samples, rejections = r.build(msgs, TOOLS, sample_id="h")
    assert rejections == [] and [s.sample_id for s in samples] == ["h/turn1", "h/turn3"]
    assert runs(tok, samples[0])[2] == (
        0,
        "\n<|im_start|>tool\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrainy\n</tool_response>"
        "<|im_end|><|im_start|>assistant\n",
    )
    for s, k in zip(samples, (4, 6)):  # each trained answer follows exactly its generation prompt
        prompt = reference(tok, msgs[:k], TOOLS, add_generation_prompt=True)
        # the last answer's start (the whole completion when it is the only turn)
        upto = len(s.completion_mask) - s.completion_mask[::-1].index(0) if 0 in s.completion_mask else 0
        assert s.prompt_ids + s.completion_ids[:upto] == tok.encode(prompt, add_special_tokens=False)
        assert trained(tok, s)[-1] == msgs[k]["content"] + "<|im_end|>"


# the proof's guard: text between the generation header and the content -> not proven, rejected
LAST_TOOL_DIFFERS = (
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}{{ '<|im_start|>tool\\n' + m.content + ('' if loop.last else '\\n') + '<|im_end|>' }}"
    "{% elif m.role == 'assistant' %}{{ '<|im_start|>assistant\\n' + LEAD + m.content + '<|im_end|>' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("after_tool", [True, False])
def test_rewritten_history_needs_the_header_right_before_the_content(after_tool):
    """A (made-up) template whose last tool message renders without the newline it has
    when a turn follows: the answer is trained after the prompt when the generation header
    is right before the content, or before the template's own turn opening (what it writes
    there in the simplest conversation, as Qwen3's empty thinking block); other template
    text in between (here only after a tool message) is not proven: rejected."""
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    head = [{"role": "user", "content": "Q"}, {"role": "tool", "content": "T"}] if after_tool else [PLAIN[0]]
    msgs = [*head, {"role": "assistant", "content": "A"}]
    only_after_tool = "('Noted. ' if loop.previtem is defined and loop.previtem.role == 'tool' else '')"
    for lead, expected in (
        ("''", ["A<|im_end|>"]),
        ("'P: '", ["P: A<|im_end|>"]),
        (only_after_tool, None if after_tool else ["A<|im_end|>"]),
    ):
        tok = load_tokenizer(tokenizer_only_dir())
        tok.chat_template = LAST_TOOL_DIFFERS.replace("LEAD", lead)
        r = recon(tok=tok)
        samples, rejections = r.build(msgs, None, sample_id="x")
        if expected is None:
            assert [x.reason for x in rejections] == ["template_mismatch"]
        else:
            assert rejections == [] and trained(tok, samples[0]) == expected
            assert r.stats["rewritten_history_turns"] == (1 if after_tool else 0)
