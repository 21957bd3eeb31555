"""distill/core/jsonl.py: the one JSONL reader and its torn-line policy, and the readers routed through it."""

from __future__ import annotations

import io
import json

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from distill.core.jsonl import (
    INVALID_JSON,
    LINE_TOO_LONG,
    TORN,
    cut_short,
    iter_lines,
    log_values,
    read_jsonl,
    shape_hint,
)
from distill.core.contract import Sample, ShardWriter, list_shards, read_shard
from orchestrator.recording import load_recording
from orchestrator.rejects import RejectLog
from trainer.report import read_metrics


def lines(data: bytes, **kw):
    return list(iter_lines(io.BytesIO(data), **kw))


def test_a_torn_last_line_is_torn_and_a_bad_middle_line_is_not():
    got = lines(b'{"a": 1}\n{"a": \n\n{"b": 2}\n{"c": 3')
    assert [(ln.number, ln.reason) for ln in got] == [(1, None), (2, INVALID_JSON), (3, None), (4, None), (5, TORN)]
    assert got[0].ok and got[0].value == {"a": 1} and got[2].blank and not got[2].ok
    assert got[4].torn and "half-written last line" in got[4].problem
    # offsets: each line starts where the one before ended
    assert [ln.start for ln in got] == [0, 9, 16, 17, 26] and got[4].size == len(b'{"c": 3')


def test_tail_options():
    complete_no_newline = b'{"a": 1}\n{"b": 2}'
    assert lines(complete_no_newline)[1].value == {"b": 2}  # user files often lack the final newline
    assert lines(complete_no_newline, strict_tail=True)[1].reason == TORN  # our logs always end a record with \n
    assert "no newline" in lines(complete_no_newline, strict_tail=True)[1].problem
    crlf_cut = lines(b'{"a": 1}\r\n{"b": 2}\r', strict_tail=True)[1]  # a CRLF line cut between \r and \n
    assert crlf_cut.reason == TORN and "ends in \\r with no \\n after it" in crlf_cut.problem
    broken = b'{"a": 1}\n{"b": '
    assert lines(broken, torn=False)[1].reason == INVALID_JSON  # no log: a broken last line is plain bad JSON
    # cut_only (hand-written files that may also be cut off): torn only if more text could mend it
    assert lines(broken, cut_only=True)[1].reason == TORN
    typo = lines(b'{"a": 1}\n{"messages": []}}', cut_only=True)[1]
    assert typo.reason == INVALID_JSON and "Extra data" in typo.problem and not typo.torn
    assert lines(b'{"a": 1}\n{"b": 2}\x00\x00', cut_only=True)[1].reason == INVALID_JSON  # a NUL tail is damage
    assert lines(b'{"a": 1}\n{"b": 2}\x00\x00')[1].reason == TORN  # the default: torn, as log readers need


def test_a_long_line_is_read_past_with_its_limit_key():
    got = lines(b'{"x": "' + b"y" * 100 + b'"}\n{"a": 1}\n', max_bytes=50, limit_key="some.key")
    assert got[0].reason == LINE_TOO_LONG and "some.key" in got[0].problem and len(got[0].raw) == 50
    assert got[1].value == {"a": 1} and got[1].start == got[0].size


def test_log_values_skips_and_lists_bad_lines(tmp_path):
    p = tmp_path / "log.jsonl"
    assert list(log_values(p)) == []  # no file yet
    p.write_bytes(b'{"step": 1}\n{"step": 2}\n{"st')
    skipped: list = []
    assert list(log_values(p, skipped)) == [{"step": 1}, {"step": 2}]
    assert [ln.reason for ln in skipped] == [TORN]


def test_readers_share_the_policy(tmp_path):
    # recording: an unterminated last line is torn even when it parses (cut off, requested again)
    rec = {"v": 1, "prompt_id": "a", "sample_index": 0, "messages": [], "response": {"content": "x"}}
    p = tmp_path / "recording.jsonl"
    p.write_bytes((json.dumps(rec) + "\n" + json.dumps(dict(rec, prompt_id="b"))).encode())
    loaded = load_recording(p)
    assert list(loaded.records) == [("a", 0)] and loaded.torn_tail.startswith(b'{"v": 1, "prompt_id": "b"')
    # rejects: a torn last line is dropped and the file rewritten without it
    r = tmp_path / "rejects.jsonl"
    r.write_text('{"item_id": "p/0", "reason": "x", "detail": ""}\n{"item_id": "p/1", "rea', encoding="utf-8")
    log = RejectLog(r, set())
    log.close(set(), set())
    assert [json.loads(x)["item_id"] for x in r.read_text().splitlines()] == ["p/0"]
    # trainer metrics: the torn last line after a crash is skipped
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert read_metrics(m) == [{"step": 1, "loss": 2.0}]


def test_a_damaged_shard_names_file_and_line(tmp_path):
    w = ShardWriter(tmp_path, samples_per_shard=4)
    for i in range(2):
        w.add(Sample(sample_id=f"s/{i}", prompt_ids=[1], completion_ids=[2], completion_mask=[1]))
    w.close()
    shard = list_shards(tmp_path)[0]
    assert [s.sample_id for s in read_shard(shard)] == ["s/0", "s/1"]
    shard.write_bytes(shard.read_bytes()[:-5])  # a shard is written atomically: a cut one is damage, not torn
    with pytest.raises(ValueError, match=rf"{shard.name}:2: not valid JSON .*written atomically"):
        read_shard(shard)
    assert [ln.number for ln in read_jsonl(shard) if ln.torn] == [2]  # the same bytes in a log would be torn


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values, st.booleans(), st.data())
def test_every_cut_of_a_json_line_is_cut_short(value, ascii_only, data):
    """A writer stopped anywhere in a line (even mid-character, mid-escape, mid-number) leaves text that
    cut_short recognises as the start of a record."""
    raw = json.dumps({"v": value}, ensure_ascii=ascii_only).encode()
    cut = data.draw(st.integers(1, len(raw) - 1))
    assert cut_short(raw[:cut]), raw[:cut]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}}',
        '{"a" 1}',
        '{"a": tx',
        '{"a": 1,,',
        "{a: 1}",
        "\x00\x00\x00",
        '{"a": "\\x"}',
        '{"a": 1]',
        "x",
        '{"a": 1.5.',
        '{"a": 1e5e',
        '{"a": 1, "b": 2 "c": 3}',
    ],
)
def test_a_line_that_no_text_could_complete_is_not_cut_short(text):
    assert not cut_short(text.encode())


def test_a_byte_order_mark_at_the_start_is_passed_over(tmp_path):
    """A file saved as "UTF-8 with BOM" (Notepad, Excel): its first line parses; offsets still count the BOM."""
    data = b'\xef\xbb\xbf{"a": 1}\r\n{"b": 2}\n'
    got = lines(data)
    assert [ln.value for ln in got] == [{"a": 1}, {"b": 2}]
    assert (got[0].start, got[0].size, got[1].start) == (0, 13, 13)
    assert lines(b'{"a": 1}\n\xef\xbb\xbf{"b": 2}\n')[1].reason == INVALID_JSON  # only at the start of the file


@pytest.mark.parametrize(
    "data, says",
    [
        (b'{\n  "messages": [\n    {"role": "user"}\n  ]\n}\n', "pretty-printed JSON"),
        (b'{"messages": [\n', ""),  # a JSONL line cut short, then a newline: pretty JSON opens "{" alone
        (b"prompt,response\nHi,Hello\n", "CSV/TSV table"),
        (b"prompt\tresponse\n", "CSV/TSV table"),
        (b"[\n  {}\n]\n", "one JSON array"),
        (b'{"a": 1}}\n{"a": 1}\n', ""),  # a typo in a JSON Lines file: nothing to say about the file
        (b"hello\n", ""),
        (b'{"a": 1}\n', ""),  # it parses
        (b'{"messages": [', ""),  # a one-line file cut short (torn): not pretty JSON
    ],
)
def test_a_file_that_is_not_json_lines_is_named_at_its_first_line(data, says):
    first = next(iter_lines(io.BytesIO(data), cut_only=True))
    hint = shape_hint(first, "in/data.csv")
    assert (says in hint) if says else hint == ""
    if says == "pretty-printed JSON":
        assert "jq -c . in/data.csv > in/data.jsonl" in hint
    second = list(iter_lines(io.BytesIO(data), cut_only=True))[1:2]
    assert all(shape_hint(ln, "in/data.csv") == "" for ln in second)  # said once, at line 1


@pytest.mark.parametrize("first", [b'{"messages": [{"role": "us\n', b"id,foo,bar\n", b"{\n"])
def test_a_json_lines_file_with_a_bad_first_line_gets_no_shape_hint(tmp_path, first):
    """The second line parses: the file is JSON Lines with one bad line, whatever line 1 looks like."""
    p = tmp_path / "data.jsonl"
    p.write_bytes(first + b'{"a": 1}\n{"a": 2}\n')
    assert shape_hint(next(read_jsonl(p)), p) == ""
    p.write_bytes(first + b"not json\n")
    assert shape_hint(next(read_jsonl(p)), p) != "" or first.startswith(b'{"')


def test_the_conversion_never_writes_over_its_input(tmp_path):
    for name in ("pretty.jsonl", "pretty.json", "pretty"):
        p = tmp_path / name
        p.write_bytes(b'{\n  "a": 1\n}\n')
        hint = shape_hint(next(read_jsonl(p)), p)
        target = hint.split(" > ")[1].split(",")[0]
        assert target != str(p) and target.endswith(".jsonl"), hint


@pytest.mark.parametrize(
    "path, command",
    [
        ("d/a.json", "jq -c '.[]' d/a.json > d/a.jsonl, and read d/a.jsonl"),
        ("d/a.jsonl", "jq -c '.[]' d/a.jsonl > d/a.lines.jsonl"),  # never onto the input
        ("d/a.json.gz", "gunzip -c d/a.json.gz | jq -c '.[]' > d/a.jsonl"),  # jq reads no gzip
        ("d.x/a", "jq -c '.[]' d.x/a > d.x/a.jsonl"),
    ],
)
def test_the_json_array_conversion_reads_the_file_and_writes_another(path, command):
    from distill.core.jsonl import json_array_hint

    assert command in json_array_hint(path)


def test_gzip_is_told_by_its_first_bytes_whatever_the_name(tmp_path):
    """A gzipped file named .jsonl was read as bytes (not valid UTF-8), and got a false CSV hint."""
    import gzip

    from distill.core.jsonl import is_gzip, second_line_parses

    packed = tmp_path / "rows.jsonl"
    packed.write_bytes(gzip.compress(b'id,x\n{"a": 1}\n'))
    plain = tmp_path / "rows.gz"
    plain.write_bytes(b'id,x\n{"a": 1}\n')
    assert is_gzip(packed) and not is_gzip(plain) and not is_gzip(tmp_path / "missing")
    assert second_line_parses(packed) and second_line_parses(plain)
