"""A conversation that opens with an assistant message (a greeting, as some chat datasets start).

That turn's prompt is the template's render of no messages with the generation prompt. Templates
that write the generation prompt only after a message (OLMo 2's and GigaChat 3's inside the loop at
`loop.last`, OLMo 3 Think's too, DeepSeek V3.1's only after a user message) write none there: the
turn was trained from its own role header (or from no header), which no student is ever prompted
to write. Where a later turn is trained, the opening stays in the conversation as context and the
later answers are trained, as with "weight": 0 on it (before, the whole conversation was rejected, the
teacher's answer after the greeting included); an opening answer that is the only turn to train is
rejected, naming messages[0] and the fix. Likewise for templates that cannot render no messages at
all (Qwen2.5, Qwen3, Llama 3.1, SmolLM3: test_reconstruct_families.py). A template that does write a
generation prompt for no messages (SmolLM2's) keeps training the opening answer.
"""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip
from support.reconstruct_helpers import decode, masked_text, recon, tokenizer_with

OPENING = [
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]


def _tokenizer(family: str):
    if family == "deepseek_v3_1":
        from support import tokenizer_builds

        return tokenizer_builds.load_or_skip("deepseek", "deepseek_v3_1")
    return standin_or_skip(family)


@pytest.mark.parametrize("family", ["olmo2_tulu", "gigachat3", "olmo3_think", "deepseek_v3_1"])
def test_an_opening_answer_without_a_generation_prompt_is_context_and_alone_is_rejected(family):
    tok = _tokenizer(family)
    r = recon(tok=tok)
    # what the test is about: no generation prompt for no messages, one after a user message
    empty = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert empty != tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    samples, rejections = r.build(OPENING[:1], None, sample_id="o")
    assert samples == [] and [x.reason for x in rejections] == ["template_mismatch"]
    detail = rejections[0].detail
    assert "messages[0] is a turn to train with nothing before it" in detail and "kept as context" in detail

    before = r.stats["opening_turns_as_context"]
    samples, rejections = r.build(OPENING, None, sample_id="o")
    assert rejections == [] and len(samples) == 1
    assert r.stats["opening_turns_as_context"] == before + 1
    prompt = decode(tok, samples[0].prompt_ids)
    # the prompt is the template's own, generation prompt included; the opening answer is in it as context
    assert prompt == tok.apply_chat_template(OPENING[:2], tokenize=False, add_generation_prompt=True)
    assert "Hi! How can I help?" in prompt
    trained = masked_text(tok, samples[0])
    assert "It is 4." in trained and "Hi!" not in trained and "assistant" not in trained
    # the same sample as with "weight": 0 on the opening, which is not counted
    weighed, rejections = r.build([dict(OPENING[0], weight=0), *OPENING[1:]], None, sample_id="o")
    assert rejections == [] and [s.to_json() for s in weighed] == [s.to_json() for s in samples]
    assert r.stats["opening_turns_as_context"] == before + 1


def test_an_opening_answer_after_the_templates_generation_prompt_is_still_trained():
    """SmolLM2's template writes "<|im_start|>assistant\\n" for no messages too: that is the prompt
    the opening answer is trained after (its render of no messages has no default system prompt,
    so the answer after the user's message is a sample of its own)."""
    tok = tokenizer_with(None)
    samples, rejections = recon(tok=tok).build(OPENING, None, sample_id="s")
    assert rejections == [] and len(samples) == 2
    assert decode(tok, samples[0].prompt_ids) == "<|im_start|>assistant\n"
    assert masked_text(tok, samples[0]) == "Hi! How can I help?<|im_end|>"
    assert masked_text(tok, samples[1]) == "It is 4.<|im_end|>"


def test_an_opening_kept_as_context_is_counted_once_per_conversation_that_gives_a_sample():
    """The count the run summaries print (orchestrator/sink.py, NOTED) says how many conversations were trained
    without their opening answer: one rejected after planning (overlong here) gave no sample and is not counted;
    one split into two samples (Qwen3 drops earlier reasoning) is counted once."""
    r = recon(tok=_tokenizer("olmo2_tulu"), max_seq_len=24)
    samples, rejections = r.build(OPENING, None, sample_id="long")
    assert samples == [] and [x.reason for x in rejections] == ["overlong"]
    assert r.stats["opening_turns_as_context"] == 0

    from support import tokenizer_builds

    r = recon(tok=tokenizer_builds.load_or_skip("qwen", "qwen3"))
    thought = [OPENING[0], OPENING[1], dict(OPENING[2], reasoning_content="Add them.")]
    more = [
        *thought,
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6.", "reasoning_content": "Again."},
    ]
    samples, rejections = r.build(more, None, sample_id="two")
    assert rejections == [] and len(samples) == 2 and r.stats["opening_turns_as_context"] == 1
    samples, rejections = r.build(OPENING, None, sample_id="one")
    assert rejections == [] and len(samples) == 1 and r.stats["opening_turns_as_context"] == 2
