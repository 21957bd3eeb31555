"""A message's "weight" (OpenAI's chat fine-tuning format): 0 keeps the turn as context, not
trained; the tokens are those of the same conversation without weights, only the mask differs.
SmolLM2's tokenizer with its own template (one sample) and a Qwen3-style template that
splits per trained turn (reasoning_rewrite: one sample less per weight-0 turn)."""

from __future__ import annotations

import json

import pytest
from support.reconstruct_helpers import masked_text, recon, tokenizer_with

U1, A1 = {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}
U2, A2 = {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}


def build(r, messages):
    return r.build(messages, sample_id="s")


def test_a_weight_0_turn_is_context_with_the_same_tokens():
    r = recon()
    tok = tokenizer_with(None)
    (plain,), _ = build(r, [U1, A1, U2, A2])
    (weighed,), rejected = build(r, [U1, {**A1, "weight": 0}, U2, {**A2, "weight": 1}])
    assert not rejected
    assert list(weighed.prompt_ids) + list(weighed.completion_ids) == list(plain.prompt_ids) + list(
        plain.completion_ids
    )
    assert masked_text(tok, plain) == "Blue.<|im_end|>Green.<|im_end|>"
    assert masked_text(tok, weighed) == "Green.<|im_end|>"


def test_a_split_template_makes_no_sample_for_a_weight_0_turn():
    r = recon("reasoning_rewrite")
    think = {"reasoning_content": "thinking"}
    samples, rejected = build(r, [U1, {**A1, **think, "weight": 0}, U2, {**A2, **think}])
    assert not rejected and len(samples) == 1
    assert masked_text(tokenizer_with("reasoning_rewrite"), samples[0]).endswith("Green.<|im_end|>")


@pytest.mark.parametrize("weight", [2, -1, 0.5, "0", True, None])
def test_a_weight_other_than_0_or_1_is_rejected(weight):
    if weight is None:  # JSON null: no weight given, trained
        assert build(recon(), [U1, {**A1, "weight": None}])[0]
        return
    samples, (rej,) = build(recon(), [U1, {**A1, "weight": weight}])
    assert not samples and rej.reason == "invalid_message" and "messages[1]: weight is" in rej.detail


def test_every_trained_role_at_weight_0_names_the_weight():
    samples, (rej,) = build(recon(), [U1, {**A1, "weight": 0}])
    assert not samples and rej.reason == "no_trained_turn" and "weight 0" in rej.detail


def test_replay_chat_rows_keep_weight_0_and_refuse_other_weights(tmp_path):
    from orchestrator.replay import BadRecord, iter_conversations

    p = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [U1, {**A1, "weight": 0}, U2, A2]},
        {"messages": [U1, {**A1, "weight": 1}, U2, A2]},
        {"messages": [U1, A1, U2, A2]},
        {"messages": [U1, {**A1, "weight": 3}, U2, A2]},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    zero, one, none, bad = iter_conversations([str(p)])
    assert zero.messages[1] == {**A1, "weight": 0}
    assert one.messages == none.messages and one.sample_id == none.sample_id  # 1 is the default
    assert zero.sample_id != none.sample_id
    assert isinstance(bad, BadRecord) and bad.field == "messages[1].weight"
