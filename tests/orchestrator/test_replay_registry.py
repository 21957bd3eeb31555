"""The replay format registry: names shared with the config schema, detection order, and the seam
(a new format is one parser module + its detector + one registry line)."""

from __future__ import annotations

import json

import pytest

from distill.core.config import ConfigError, load_config
from distill.core.formats import REPLAY_FORMATS, SOURCE_FORMATS
from orchestrator.replay import BadRecord, RecordError, detect_format, iter_conversations
from orchestrator.replay.formats import FORMATS, Format
from orchestrator.replay.records import conversation


def test_config_choices_are_the_registry():
    assert set(FORMATS) == set(REPLAY_FORMATS) and SOURCE_FORMATS == ("auto", *REPLAY_FORMATS)
    with pytest.raises(ConfigError) as e:
        load_config(None, {"orchestrator": {"source": {"type": "replay", "format": "xml"}}})
    msg = str(e.value)
    assert "orchestrator.source.format" in msg and all(repr(n) in msg for n in SOURCE_FORMATS)


def test_detection_follows_registry_order():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert detect_format({"messages": msgs, "response": {}}) == "recording"  # asked before chat
    assert detect_format({"messages": msgs}) == "chat"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"prompt": "q", "completion": "a"}) == "prompt_completion"
    assert detect_format({"messages": msgs, "prompt": "q", "completion": "a"}) == "chat"  # asked before
    assert detect_format({"custom_id": "x", "response": {}}) == "openai_batch"
    with pytest.raises(RecordError, match="Batch API INPUT line"):
        detect_format({"custom_id": "x", "body": {}})
    with pytest.raises(RecordError, match="cannot tell the format"):
        detect_format({"text": "?"})


@pytest.mark.parametrize(
    "record, hint",
    [
        (
            {"instruction": "Add", "input": "", "output": "4"},
            'columns = {prompt = "instruction", completion = "output"})',
        ),
        ({"instruction": "Add", "input": "2+2", "output": "4"}, "its 'input' column would be left out"),
        ({"question": "q?", "answer": "a"}, 'columns = {prompt = "question", completion = "answer"})'),
        ({"question": "q?", "answer": 4}, None),  # not text: no guess
        ({"text": "?"}, None),
    ],
)
def test_an_unknown_format_with_likely_text_columns_suggests_the_mapping(record, hint):
    with pytest.raises(RecordError) as e:
        detect_format(record)
    assert ("here perhaps" in e.value.fix) == (hint is not None)
    assert hint is None or hint in e.value.fix


def _parse_pairs(obj: dict, file: str, line: int, ctx=None):
    if not isinstance(obj.get("q"), str) or not isinstance(obj.get("a"), str):
        raise RecordError("q", "expected strings q and a")
    msgs = [{"role": "user", "content": obj["q"]}, {"role": "assistant", "content": obj["a"]}]
    return [conversation("pairs", file, line, msgs, None, f"pair{line}", 0, None, None, None)]


def test_a_registered_format_is_read(tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, "pairs", Format(lambda o: "q" in o, _parse_pairs))
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n" + json.dumps({"q": 1, "a": "x"}) + "\n")
    for fmt in ("pairs", "auto"):  # named, or found by its detector
        got = list(iter_conversations([str(p)], fmt))
        assert got[0].messages[-1]["content"] == "4" and got[0].format == "pairs" and got[0].sample_id == "pair1/0"
        assert got[0].meta == {"source": "replay", "format": "pairs", "file": str(p), "line": 1}
        assert isinstance(got[1], BadRecord) and got[1].field == "q" and got[1].line == 2
