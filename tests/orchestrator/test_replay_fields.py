"""Record fields that used to be read wrong without a word: a non-finite reward (NaN passed
min_reward and reached a shard as bare `NaN`), a ShareGPT turn's `weight`, and a record or turn
holding the same thing twice (`messages` and `conversations`, `value` and `content`) that differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.config import load_config
from distill.core.contract import iter_samples, list_shards
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import ReplayError, replay


def run(tmp_path: Path, tok, lines: list[str], on_error: str = "skip", fmt: str = "auto", **replay_keys) -> dict:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "run"),
            "orchestrator": {
                "source": {"type": "replay", "path": str(p), "format": fmt},
                "replay": {"on_error": on_error, **replay_keys},
            },
        },
    )
    recon = Reconstructor(tok, cfg.orchestrator.reconstruction, 1024)
    return replay(cfg, tmp_path / "run", recon, progress=False)


def bad_records(tmp_path: Path) -> list[tuple[int, str | None, str]]:
    return [(b["line"], b["field"], b["reason"]) for b in read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")]


USER = {"role": "user", "content": "q"}


def chat(rid: str, answer: str = "5", **extra) -> str:
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": answer}]
    return json.dumps({"id": rid, "messages": msgs, **extra})


# --- reward ------------------------------------------------------------------------------------


def test_a_non_finite_reward_is_a_bad_record_and_no_shard_holds_nan(tmp_path, smol_tokenizer):
    recording = {
        "v": 1,
        "prompt_id": "rec",
        "messages": [{"role": "user", "content": "q"}],
        "response": {"role": "assistant", "content": "a"},
        "finish_reason": "stop",
    }
    # the reward written as the bare JSON extensions Python's json reads
    lines = [chat("ok", reward=0.9)] + [
        row[:-1] + f', "reward": {bare}}}'
        for row, bare in (
            (chat("nan"), "NaN"),
            (chat("inf"), "Infinity"),
            (chat("-inf"), "-Infinity"),
            (json.dumps(recording), "NaN"),
        )
    ]
    summary = run(tmp_path, smol_tokenizer, lines, min_reward=0.5)
    assert bad_records(tmp_path) == [(n, "reward", "bad_field") for n in (2, 3, 4, 5)]
    errors = [b["error"] for b in read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")]
    assert all("expected a finite number" in e for e in errors)
    assert summary["outcomes"]["trained"] == 1 and summary["bad_records"] == 4
    assert [s.sample_id for s in iter_samples(tmp_path / "run" / "samples")] == ["ok/0"]
    shard_text = "".join(p.read_text() for p in list_shards(tmp_path / "run" / "samples"))
    assert "NaN" not in shard_text and "Infinity" not in shard_text


def test_on_error_fail_stops_at_a_nan_reward_naming_the_field(tmp_path, smol_tokenizer):
    with pytest.raises(ReplayError) as ei:
        run(tmp_path, smol_tokenizer, [chat("a"), chat("nan")[:-1] + ', "reward": NaN}'], on_error="fail")
    assert (ei.value.line, ei.value.field, ei.value.reason) == (2, "reward", "bad_field")
    assert "expected a finite number, got nan" in str(ei.value)


# --- ShareGPT: weight, and the same thing given twice -------------------------------------------


def sharegpt(rid: str, *turns: dict, **extra) -> str:
    return json.dumps({"id": rid, "conversations": list(turns), **extra})


def test_a_sharegpt_turn_of_weight_0_is_context_as_in_the_chat_format(tmp_path, smol_tokenizer):
    as_chat = [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "four", "weight": 0},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "5"},
    ]
    turns = [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in as_chat]
    turns[1]["weight"] = 0
    turns[3]["weight"] = 1
    lines = [json.dumps({"id": "chat", "messages": as_chat}), sharegpt("sg", *turns)]
    summary = run(tmp_path, smol_tokenizer, lines, on_error="fail")
    assert summary["outcomes"]["trained"] == 2
    got = {s.prompt_id: s for s in iter_samples(tmp_path / "run" / "samples")}
    sg, ch = got["sg"], got["chat"]
    assert (sg.prompt_ids, sg.completion_ids, sg.completion_mask) == (
        ch.prompt_ids,
        ch.completion_ids,
        ch.completion_mask,
    )
    trained = smol_tokenizer.decode([t for t, m in zip(sg.completion_ids, sg.completion_mask) if m])
    assert "5" in trained and "four" not in trained


@pytest.mark.parametrize("weight", [2, True, 0.0, "0", None])
def test_a_sharegpt_weight_other_than_0_or_1_is_a_bad_record_as_in_the_chat_format(tmp_path, smol_tokenizer, weight):
    q = {"from": "human", "value": "q"}
    lines = [
        chat("ok"),
        sharegpt("sg", q, {"from": "gpt", "value": "a", "weight": weight}),
        json.dumps({"id": "ch", "messages": [USER, {"role": "assistant", "content": "a", "weight": weight}]}),
    ]
    run(tmp_path, smol_tokenizer, lines)
    listed = read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")
    if weight is None:  # null is "not given", as in the chat format
        assert listed == []
        return
    assert bad_records(tmp_path) == [
        (2, "conversations[1].weight", "bad_field"),
        (3, "messages[1].weight", "bad_field"),
    ]
    assert (
        listed[0]["error"]
        == listed[1]["error"]
        == f"expected 0 or 1, got {weight!r}. Fix: use 0 (not trained) or 1 (trained)"
    )


def test_a_function_call_weighted_unlike_the_assistant_turn_it_joins_is_a_bad_record(tmp_path, smol_tokenizer):
    call = {"from": "function_call", "value": {"name": "calc", "arguments": {"x": 1}}}
    q, a = {"from": "human", "value": "q"}, {"from": "gpt", "value": "let me see"}
    tool, end = {"from": "observation", "value": "1"}, {"from": "gpt", "value": "1"}
    lines = [
        sharegpt("same", q, {**a, "weight": 0}, {**call, "weight": 0}, tool, end),
        sharegpt("alone", q, {**call, "weight": 0}, tool, end),  # a call of its own: its own assistant turn
        sharegpt("differ", q, {**a, "weight": 0}, call, tool, end),
    ]
    run(tmp_path, smol_tokenizer, lines)
    assert bad_records(tmp_path) == [(3, "conversations[2].weight", "bad_field")]
    assert (
        "differs from that of the assistant turn before it"
        in read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")[0]["error"]
    )


@pytest.mark.parametrize("fmt", ["auto", "sharegpt"])
def test_messages_and_conversations_that_differ_are_a_bad_record_naming_both(tmp_path, smol_tokenizer, fmt):
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    other = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]
    lines = [
        json.dumps({"id": "same", "messages": turns, "conversations": turns}),  # identical: fine
        json.dumps({"id": "differ", "messages": turns, "conversations": other}),
        # a table's row holds every column, None where the record has none: not two conversations
        json.dumps({"id": "table", "messages": other, "conversations": None}),
        json.dumps({"id": "table2", "messages": None, "conversations": [{"from": "human", "value": "q2"}, *other[1:]]}),
    ]
    summary = run(tmp_path, smol_tokenizer, lines, fmt=fmt)
    assert summary["outcomes"]["trained"] == (3 if fmt == "auto" else 2)
    assert bad_records(tmp_path) == [(2, "conversations", "bad_field")] + (
        [(3, "conversations", "bad_field")] if fmt == "sharegpt" else []
    )
    error = read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")[0]["error"]
    assert "holds both 'messages' and 'conversations', and they differ" in error


def test_a_sharegpt_turn_whose_value_and_content_differ_is_a_bad_record(tmp_path, smol_tokenizer):
    q = {"from": "human", "value": "q"}
    lines = [
        sharegpt("same", q, {"from": "gpt", "value": "a", "content": "a"}),
        sharegpt("differ", q, {"from": "gpt", "value": "a", "content": "b"}),
    ]
    summary = run(tmp_path, smol_tokenizer, lines)
    assert summary["outcomes"]["trained"] == 1
    assert bad_records(tmp_path) == [(2, "conversations[1].content", "bad_field")]
    error = read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")[0]["error"]
    assert "holds both 'value' and 'content', and they differ" in error


@pytest.mark.parametrize(
    "messages, says",
    [([], "got an empty list"), (None, "got nothing"), ("hi", "got string"), ({"role": "user"}, "got object")],
)
def test_messages_that_are_no_list_of_messages_say_what_they_are(tmp_path, smol_tokenizer, messages, says):
    lines = [json.dumps({"id": "a", "messages": messages}), chat("b")]
    run(tmp_path, smol_tokenizer, lines)
    (bad,) = read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")
    assert bad["line"] == 1 and bad["field"] == "messages"
    assert bad["error"].startswith(f"expected a non-empty list of messages, {says}")
