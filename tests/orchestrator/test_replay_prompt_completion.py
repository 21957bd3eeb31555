"""Format prompt_completion (orchestrator/replay/formats/prompt_completion.py): TRL's
prompt-completion rows, conversational and text, only the completion trained (the prompt's
messages get weight 0, also in a multi-turn prompt), and the rows it refuses with the reason."""

from __future__ import annotations

import json

import pytest

from distill.core.config import load_config
from distill.core.contract import iter_samples
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import BadRecord, iter_conversations, replay

Q = [{"role": "user", "content": "What is 2+2?"}]
A = [{"role": "assistant", "content": "4"}]


def context(msgs):
    return [dict(m, weight=0) for m in msgs]


def read(tmp_path, *rows):
    p = tmp_path / "pc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return list(iter_conversations([str(p)]))


def test_text_and_conversational_rows_are_the_same_conversation(tmp_path):
    text, conv, with_system = read(
        tmp_path,
        {"prompt": "What is 2+2?", "completion": "4"},
        {"prompt": Q, "completion": A},
        {"prompt": "What is 2+2?", "completion": "4", "system": "Be brief."},
    )
    assert text.format == conv.format == "prompt_completion"
    assert text.messages == conv.messages == context(Q) + A
    assert text.sample_id == conv.sample_id  # the content hash: same messages, same id
    assert with_system.messages == context([{"role": "system", "content": "Be brief."}] + Q) + A


def test_a_completion_with_tool_calls_keeps_them(tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    completion = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "4", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is 4."},
    ]
    (c,) = read(tmp_path, {"prompt": Q, "completion": completion})
    assert [m["role"] for m in c.messages] == ["user", "assistant", "tool", "assistant"]
    assert c.messages[1]["tool_calls"][0]["function"]["name"] == "add"


@pytest.mark.parametrize(
    "row,field,words",
    [
        ({"prompt": Q, "completion": [{"role": "user", "content": "x"}]}, "completion", "no assistant message"),
        ({"prompt": 3, "completion": "4"}, "prompt", "got number"),
        ({"prompt": "q", "completion": None}, "completion", "got null"),
        ({"prompt": [], "completion": A}, "prompt", "non-empty list"),
        ({"prompt": [{"role": "system", "content": "s"}] + Q, "completion": A, "system": "t"}, "system", "which one"),
        ({"prompt": "q", "completion": [{"role": "assistant", "content": None}]}, "completion[0].content", ""),
    ],
)
def test_rows_it_cannot_train_as_meant_are_bad_records_naming_the_field(tmp_path, row, field, words):
    (bad,) = read(tmp_path, row)
    assert isinstance(bad, BadRecord) and bad.field == field and words in bad.error, bad


def test_replayed_only_the_completion_is_trained(tmp_path, smol_tokenizer):
    rows = [
        {"id": "p1", "prompt": "Name a colour.", "completion": "Blue."},
        {"id": "p2", "prompt": [{"role": "system", "content": "Terse."}] + Q, "completion": A},
        {"id": "p3", "prompt": Q + [{"role": "assistant", "content": "Four."}] + Q, "completion": A},
        {"id": "p4", "prompt": Q, "completion": [{"role": "user", "content": "no answer"}]},  # a bad record
    ]
    src = tmp_path / "pc.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        {"orchestrator": {"source": {"type": "replay", "path": str(src)}, "replay": {"on_error": "skip"}}},
    )
    summary = replay(cfg, tmp_path / "run", Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction, 1024))
    assert summary["samples"] == 3 and summary["bad_records"] == 1 and summary["formats"] == {"prompt_completion": 3}
    got = {s.sample_id: s for s in iter_samples(tmp_path / "run" / "samples")}
    trained = {
        k: smol_tokenizer.decode([t for t, m in zip(s.completion_ids, s.completion_mask) if m]) for k, s in got.items()
    }
    assert trained == {"p1/0": "Blue.<|im_end|>", "p2/0": "4<|im_end|>", "p3/0": "4<|im_end|>"}
    assert "Four.<|im_end|>" in smol_tokenizer.decode(got["p3/0"].prompt_ids)  # the prompt's answer: context
    assert "Name a colour." in smol_tokenizer.decode(got["p1/0"].prompt_ids)
