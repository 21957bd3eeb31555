"""NVIDIA Nemotron Nano 2 (tests/templates/nemotron_nano_2.jinja, on the stand-in of
tests/support/family_standins.py), and the two template shapes it brought:

- text between a turn's content and its end token other than spaces: every turn ends
  "\\n<SPECIAL_12>" (before, the student was refused: no end-of-turn token found);
- a generation prompt that opens the thinking block ("<SPECIAL_11>Assistant\\n<think>\\n") and a
  last turn rendered as that prompt + the content verbatim: the plain cut would train an answer
  inside a block nothing closes, or a second "<think>". The turn is the rest of the block, the
  closing tag, the answer and the end token (orchestrator/open_reasoning.py, second shape),
  each sample checked here against the template's render of a turn with exactly that content.
"""

from __future__ import annotations

import copy

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import CALL_TURNS, TWO_TURNS, decode, full_text, recon, reference, runs, tokenizer_with

from distill.core.config import Reconstruction

HEAD = "<SPECIAL_10>System\n\n"
PLAIN = TWO_TURNS


@pytest.fixture(scope="module")
def tok():
    return standin("nemotron_nano_2")


def checked(tok, r, messages, turn_text, **build):
    """The one sample of `messages` (its last turn trained), checked against the template: the prompt
    is the render of the history with the generation prompt, and prompt + completion is the render of
    the history + a last turn whose content is `turn_text` (the trained text less the end)."""
    samples, rejections = r.build(messages, None, sample_id="n", **build)
    assert rejections == [] and len(samples) == 1, rejections
    s = samples[0]
    history = messages[:-1]
    assert s.prompt_ids == tok.encode(reference(tok, history, add_generation_prompt=True), add_special_tokens=False)
    full = reference(tok, [*history, {"role": "assistant", "content": turn_text}])
    assert full_text(tok, s) == full[: len(full) - len(r.final_tail)]
    return s


def test_end_token_after_a_newline_and_the_answer_closes_the_opened_block(tok):
    r = recon(tok=tok)
    assert (r.eot, r.eot_spaces, r.final_tail) == ("<SPECIAL_12>", "\n", "\n")
    samples, rejections = r.build(PLAIN, None, sample_id="p")
    # the history drops the opened block that the last turn shows: one sample per turn
    assert rejections == [] and [s.sample_id for s in samples] == ["p/turn1", "p/turn2"]
    assert runs(tok, samples[0]) == [
        (None, HEAD + "<SPECIAL_11>User\nHi\n<SPECIAL_11>Assistant\n<think>\n"),
        (1, "</think>\n\nHello!\n<SPECIAL_12>"),
    ]
    assert runs(tok, samples[1])[0][1].endswith(
        "<SPECIAL_11>Assistant\nHello!\n<SPECIAL_12>\n<SPECIAL_11>User\nFine\n<SPECIAL_11>Assistant\n<think>\n"
    )
    assert runs(tok, samples[1])[1:] == [(1, "</think>\n\nGood.\n<SPECIAL_12>")]
    checked(tok, r, PLAIN[:2], "</think>\n\nHello!")


@pytest.mark.parametrize("policy", ["template", "think_tags"])
def test_reasoning_is_written_once_after_the_opened_block(tok, policy):
    r = recon(tok=tok, reasoning=policy)
    msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"}]
    s = checked(tok, r, msgs, "R1\n</think>\n\nA1")
    assert runs(tok, s)[1:] == [(1, "R1\n</think>\n\nA1\n<SPECIAL_12>")]
    dropped = checked(tok, recon(tok=tok, reasoning="drop"), msgs, "</think>\n\nA1")
    assert runs(tok, dropped)[1:] == [(1, "</think>\n\nA1\n<SPECIAL_12>")]


@pytest.mark.parametrize("content", ["<think>\nR1\n</think>\nA1", "R1\n</think>\nA1"])
def test_the_teachers_own_block_in_content_is_not_opened_twice(tok, content):
    """With or without its opening tag (a teacher that was itself prompted with "<think>\\n")."""
    msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": content}]
    s = checked(tok, recon(tok=tok), msgs, "R1\n</think>\nA1")
    assert runs(tok, s)[1:] == [(1, "R1\n</think>\nA1\n<SPECIAL_12>")]


def test_no_think_mode_answers_after_the_closed_block(tok):
    msgs = [{"role": "system", "content": "Be brief /no_think"}, *PLAIN[:2]]
    s = checked(tok, recon(tok=tok), msgs, "Hello!")
    assert runs(tok, s) == [
        (None, "<SPECIAL_10>System\nBe brief\n<SPECIAL_11>User\nHi\n<SPECIAL_11>Assistant\n<think></think>"),
        (1, "Hello!\n<SPECIAL_12>"),
    ]


def test_cut_off_answer_ends_before_the_newline_and_the_end_token(tok):
    r = recon(tok=tok, truncated="keep")
    samples, rejections = r.build(PLAIN[:2], None, sample_id="t", finish_reason="length")
    assert rejections == [] and runs(tok, samples[0])[1:] == [(1, "</think>\n\nHello!")]


def test_a_tool_call_turn_is_rejected_the_last_turn_renders_no_calls(tok):
    """The template renders a final assistant turn's content only: its calls never show."""
    samples, rejections = recon(tok=tok).build(CALL_TURNS, None, sample_id="c")
    assert samples == [] and [x.reason for x in rejections] == ["template_mismatch"]
    assert "messages[1]" in rejections[0].detail


def test_newline_before_the_end_token_on_a_plain_template():
    """Any template that writes text of newlines and spaces between the content and its end token:
    that text is trained with the end token, and left out of a turn that was cut off."""
    from orchestrator.reconstruct import Reconstructor

    tok = copy.deepcopy(tokenizer_with(None))  # SmolLM2's, with the template below
    tok.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content }}"
        "{%- if m.role == 'assistant' %}{{- ' \\n<|im_end|>\\n' }}{%- else %}{{- '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    r = Reconstructor(tok, Reconstruction())
    assert (r.eot, r.eot_spaces) == ("<|im_end|>", " \n")
    samples, rejections = r.build(PLAIN, None, sample_id="x")
    assert rejections == [] and [m for m, _ in runs(tok, samples[0])[1:]] == [1, 0, 1]
    assert [t for m, t in runs(tok, samples[0])[1:] if m] == ["Hello! \n<|im_end|>", "Good. \n<|im_end|>"]
    cut, _ = Reconstructor(tok, Reconstruction(truncated="keep")).build(
        PLAIN[:2], None, sample_id="y", finish_reason="length"
    )
    assert runs(tok, cut[0])[1:] == [(1, "Hello!")]
    assert decode(tok, cut[0].completion_ids) == "Hello!"
