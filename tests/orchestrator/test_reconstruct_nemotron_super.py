"""NVIDIA Llama-3.3-Nemotron-Super-49B v1.5 (tests/templates/nemotron_super_v1_5.jinja, its real
template, with Llama 3.2's real tokenizer: the model keeps Llama 3's vocabulary), and the two shapes
it brought:

- the model thinks in "<think>...</think>" and the template renders every assistant turn, the last one
  too, as what follows the content's last "</think>", stripped of leading whitespace: reasoning is
  never rendered. With reasoning = "think_tags" the block is trained right after the turn's header,
  where the model writes it (dropped_blocks.py), whether it came as a reasoning field or - a server
  without a reasoning parser - inside the content (before, the latter was `template_alters_content`
  under every policy; under the default policy the rejection now names the switch);
- "/no_think" in the system prompt makes the generation prompt end with the empty block
  "<think>\\n\\n</think>\\n\\n", which no rendered turn shows: the student writes the answer after it
  (open_reasoning.py; before, every such conversation was `template_mismatch`, because the template
  strips the newlines after the closing tag).
"""

from __future__ import annotations

import pytest
from support.reconstruct_helpers import recon, reference, runs
from support.tokenizer_builds import load_or_skip

HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.fixture(scope="module")
def tok():
    return load_or_skip("llama3", "nemotron_super_v1_5")


def two_answers(first: dict, second: dict, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", **first},
        {"role": "user", "content": "More"},
        {"role": "assistant", **second},
    ]


def prompt_text(tok, messages) -> str:
    return reference(tok, messages, add_generation_prompt=True)


@pytest.mark.parametrize("inline", [False, True])
def test_reasoning_is_trained_after_the_header_where_the_template_strips_it(tok, inline):
    """Reasoning as a field, or as the teacher's block inside the content (kept as written): each answer
    is its own sample (the history drops the reasoning), trained as block + answer + end token."""

    def turn(r: str, a: str) -> dict:
        return {"content": f"<think>\n{r}\n</think>\n\n{a}"} if inline else {"content": a, "reasoning_content": r}

    msgs = two_answers(turn("Let me see.", "Hello!"), turn("Again.", "Sure."))
    r = recon(tok=tok, reasoning="think_tags")
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and [s.sample_id for s in samples] == ["s/turn1", "s/turn2"]
    for s, k, text in [
        (samples[0], 2, "Let me see.\n</think>\n\nHello!"),
        (samples[1], 4, "Again.\n</think>\n\nSure."),
    ]:
        (_, prompt), trained = runs(tok, s)[0], runs(tok, s)[1:]
        assert prompt == prompt_text(tok, msgs[: k - 1]) and prompt.endswith(HEADER)
        assert trained == [(1, f"<think>\n{text}<|eot_id|>")]
        # the history the second prompt holds is the template's: the first answer without its block
    assert runs(tok, samples[1])[0][1].endswith(
        f"{HEADER}Hello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nMore<|eot_id|>{HEADER}"
    )
    assert r.stats["dropped_reasoning_turns"] >= 2


def test_the_teachers_inline_block_as_written(tok):
    """think_tags keeps the teacher's own block exactly (its newlines too), where the template strips it."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>R</think>\n\n\nA"}]
    samples, rejections = recon(tok=tok, reasoning="think_tags").build(msgs, None, sample_id="s")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "<think>R</think>\n\n\nA<|eot_id|>")]


def test_the_default_policy_names_the_switch_for_an_inline_block(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]
    samples, rejections = recon(tok=tok).build(msgs, None, sample_id="s")
    assert samples == [] and [x.reason for x in rejections] == ["template_alters_content"]
    assert 'reasoning = "think_tags"' in rejections[0].detail and "thinking block" in rejections[0].detail
    # reasoning = "drop" trains the answer alone
    samples, rejections = recon(tok=tok, reasoning="drop").build(msgs, None, sample_id="s")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "A<|eot_id|>")]


@pytest.mark.parametrize("policy", ["template", "think_tags"])
def test_no_think_prompts_end_with_the_empty_block_and_train_the_answer(tok, policy):
    msgs = two_answers({"content": "Hello!"}, {"content": "Sure."}, system="Be brief. /no_think")
    r = recon(tok=tok, reasoning=policy)
    samples, rejections = r.build(msgs, None, sample_id="s")
    assert rejections == [] and len(samples) == 2  # the history drops the block the prompt shows
    for s, k, answer in [(samples[0], 3, "Hello!"), (samples[1], 5, "Sure.")]:
        prompt = prompt_text(tok, msgs[: k - 1])
        assert prompt.endswith(HEADER + "<think>\n\n</think>\n\n") and "/no_think" not in prompt
        assert runs(tok, s) == [(None, prompt), (1, f"{answer}<|eot_id|>")]


def test_no_think_with_reasoning_is_refused(tok):
    msgs = two_answers({"content": "Hello!", "reasoning_content": "R"}, {"content": "Sure."}, system="/no_think")
    samples, rejections = recon(tok=tok, reasoning="think_tags").build(msgs[:3], None, sample_id="s")
    assert samples == [] and [x.reason for x in rejections] == ["template_mismatch"]


def test_tool_calls_and_results(tok):
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    samples, rejections = recon(tok=tok).build(msgs, tools, sample_id="t")
    assert rejections == [] and len(samples) == 1
    assert runs(tok, samples[0])[1:] == [
        (1, '<TOOLCALL>[{"name": "f", "arguments": {"a": 1}}]</TOOLCALL><|eot_id|>'),
        (0, "<|start_header_id|>tool<|end_header_id|>\n\n<TOOL_RESPONSE>[42]</TOOL_RESPONSE><|eot_id|>" + HEADER),
        (1, "It is 42.<|eot_id|>"),
    ]


def test_think_tags_names_the_template_policy_where_the_template_lays_the_block_out_itself():
    """The other way round, on Qwen3's real template: it re-lays out an inline block (newlines around the
    reasoning), so think_tags, which keeps it as written, is refused naming reasoning = "template", which
    trains it as Qwen3 writes it."""
    qwen = load_or_skip("qwen", "qwen3")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>R</think>A"}]
    samples, rejections = recon(tok=qwen, reasoning="think_tags").build(msgs, None, sample_id="s")
    assert samples == [] and [x.reason for x in rejections] == ["template_alters_content"]
    assert 'reasoning = "template"' in rejections[0].detail
    samples, rejections = recon(tok=qwen).build(msgs, None, sample_id="s")
    assert rejections == [] and runs(qwen, samples[0])[1:] == [(1, "<think>\nR\n</think>\n\nA<|im_end|>")]
