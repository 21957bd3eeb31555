"""Messages in the shapes of neighbouring formats: read where they mean the same (the Responses API's text
parts), else rejected with what they most likely are and the fix (ShareGPT's speaker names and turns, a
role in the wrong case, a messages list stored as JSON text), on reconstruction's and replay's paths."""

from __future__ import annotations

import json

import pytest

from distill.core.config import Reconstruction, load_config
from orchestrator.reconstruct import Reconstructor


def _build(tok, messages):
    return Reconstructor(tok, Reconstruction()).build(messages, sample_id="c")


@pytest.mark.parametrize("kind", ["input_text", "output_text"])
def test_responses_api_text_parts_are_text(smol_tokenizer, kind):
    parts = _build(
        smol_tokenizer,
        [
            {"role": "user", "content": [{"type": kind, "text": "Hi "}, {"type": kind, "text": "there"}]},
            {"role": "assistant", "content": [{"type": kind, "text": "Hello!"}]},
        ],
    )
    plain = _build(
        smol_tokenizer, [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    )
    assert parts[0] and not parts[1] and parts[0][0].completion_ids == plain[0][0].completion_ids
    assert parts[0][0].prompt_ids == plain[0][0].prompt_ids


@pytest.mark.parametrize(
    "role, hint",
    [
        ("User", "(roles are lower case: write 'user')"),
        ("human", "('human' is ShareGPT's name for user: write role 'user')"),
        ("gpt", "('gpt' is ShareGPT's name for assistant: write role 'assistant')"),
        ("model", "('model' is ShareGPT's name for assistant"),
        ("narrator", "has role 'narrator'; known roles"),  # nothing it likely means: no guess
    ],
)
def test_an_unknown_role_says_what_it_likely_means(smol_tokenizer, role, hint):
    samples, rejections = _build(
        smol_tokenizer, [{"role": role, "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    assert not samples and rejections[0].reason == "unknown_role" and hint in rejections[0].detail


def test_sharegpt_turns_under_messages_are_named_with_the_fix(smol_tokenizer, tmp_path):
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    _, rejections = _build(smol_tokenizer, turns)
    assert (
        rejections[0].reason == "invalid_message"
        and 'a ShareGPT turn). Fix: put the turns under "conversations"' in rejections[0].detail
    )
    bad = _replay_bad(smol_tokenizer, tmp_path, {"messages": turns})
    assert (
        bad["field"] == "messages[0].role" and "a ShareGPT turn" in bad["error"] and '"conversations"' in bad["error"]
    )


def test_messages_stored_as_json_text_are_named_with_the_fix(smol_tokenizer, smol_tokenizer_dir, tmp_path):
    from orchestrator.reconstruction.tokenize_jsonl import tokenize_file

    text = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    bad = _replay_bad(smol_tokenizer, tmp_path, {"messages": text})
    assert bad["field"] == "messages" and "holding JSON text (store the list itself" in bad["error"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"messages": text}) + "\n")
    tokenize_file(str(smol_tokenizer_dir), str(tmp_path / "t.jsonl"), str(tmp_path / "out.jsonl"))
    line = json.loads((tmp_path / "out.jsonl").read_text())
    assert line["error"].startswith("invalid_line:") and "holding JSON text" in line["error"]


def _replay_bad(tok, tmp_path, row) -> dict:
    from orchestrator.replay import replay

    src = tmp_path / "in.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    src.write_text(json.dumps(row) + "\n" + json.dumps(good) + "\n")  # a run with no sample fails
    cfg = load_config(None, {"orchestrator": {"source": {"type": "replay", "path": str(src)}}})
    run = tmp_path / "run"
    summary = replay(cfg, run, Reconstructor(tok, cfg.orchestrator.reconstruction), on_error="skip", progress=False)
    assert summary["bad_records"] == 1, summary
    return json.loads((run / "replay_rejects.jsonl").read_text().splitlines()[0])
