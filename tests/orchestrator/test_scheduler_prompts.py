"""Prompt sources: JSONL parsing with file:line errors, reasoning-gym ids, reward-fn loading."""

from __future__ import annotations

import json

import pytest

from distill.core.config import Source
from orchestrator.prompts import PromptSourceError, count_prompts, load_prompts
from orchestrator.rewards import extract_final_answer, load_reward_fn


def jsonl(tmp_path, lines):
    p = tmp_path / "in.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_jsonl_messages_prompt_tools_and_ids(tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    p = jsonl(
        tmp_path,
        [
            {"id": "a", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "x": 1},
            "",
            {"prompt": "plain", "answer": "42"},
        ],
    )
    src = Source(type="jsonl", path=str(p), system_prompt="sys")
    out = list(load_prompts(src))
    assert [o["prompt_id"] for o in out] == ["a", "in-3"]
    assert out[0]["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert out[0]["tools"] == tools and out[0]["metadata"]["x"] == 1 and out[0]["metadata"]["line"] == 1
    assert out[1]["messages"][-1] == {"role": "user", "content": "plain"} and out[1]["answer"] == "42"
    assert count_prompts(src) == 2


@pytest.mark.parametrize(
    "line,msg",
    [
        ("{not json", r"in.jsonl:2: not valid JSON"),
        ("[1, 2]", r"in.jsonl:2: expected a JSON object"),
        ('{"foo": 1}', r"in.jsonl:2: needs a 'messages' list or a 'prompt' string"),
        ('{"messages": []}', r"in.jsonl:2: field 'messages' must be a non-empty list"),
        ('{"messages": [{"content": "x"}]}', r"in.jsonl:2: messages\[0\] must be an object with a 'role'"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            r"in.jsonl:2: the last message is an assistant turn",
        ),
        ('{"prompt": "x", "tools": {}}', r"in.jsonl:2: field 'tools' is not a list of tool definitions"),
        ('{"prompt": "x", "tools": [1]}', r"in.jsonl:2: field 'tools' is not a list of tool definitions"),
        ('{"prompt": "x", "tools": "[{"}', r"in.jsonl:2: field 'tools' is text that is not JSON"),
        ('{"id": "a", "prompt": "again"}', r"in.jsonl:2: id 'a' was already used on line 1"),
        ('{"id": "a/b", "prompt": "x"}', r"in.jsonl:2: id 'a/b' contains '/'"),
        ('{"prompt": "half an emoji \\ud83d"}', r"in.jsonl:2: the text holds a lone surrogate \('\\ud83d'"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, msg):
    p = jsonl(tmp_path, [{"id": "a", "prompt": "first"}, line])
    with pytest.raises(PromptSourceError, match=msg):
        list(load_prompts(Source(type="jsonl", path=str(p))))


def test_tools_as_json_text_or_bare_functions_are_offered_as_tools(tmp_path):
    fn = {"name": "weather", "parameters": {"type": "object", "properties": {}}}
    tool = {"type": "function", "function": fn}
    rows = [
        {"prompt": "a", "tools": json.dumps([tool])},  # JSON text, as function-calling datasets store it
        {"prompt": "b", "tools": [fn]},  # a bare function definition
        {"prompt": "c", "tools": ""},
        {"prompt": "d", "functions": [fn]},  # OpenAI's legacy name
    ]
    p = jsonl(tmp_path, [json.dumps(r) for r in rows])
    assert [x["tools"] for x in load_prompts(Source(type="jsonl", path=str(p)))] == [[tool], [tool], None, [tool]]


def test_missing_file_and_replay_type(tmp_path):
    with pytest.raises(PromptSourceError, match="does not exist"):
        list(load_prompts(Source(type="jsonl", path=str(tmp_path / "nope.jsonl"))))
    with pytest.raises(PromptSourceError, match="replay source is read by `distill replay`"):
        load_prompts(Source(type="replay", path="x"))


def test_an_empty_prompt_file_is_an_error_before_any_request(tmp_path):
    p = tmp_path / "empty.jsonl"
    for text in ("", "\n  \n"):
        p.write_text(text)
        with pytest.raises(PromptSourceError, match=r"empty.jsonl holds no prompt .*no request was sent"):
            count_prompts(Source(type="jsonl", path=str(p)))


def test_reasoning_gym_ids_are_stable_and_carry_the_entry():
    src = Source(type="reasoning_gym", dataset="gsm_symbolic", size=3, seed=7)
    a, b = list(load_prompts(src)), list(load_prompts(src))
    assert [x["prompt_id"] for x in a] == ["gsm_symbolic-7-0", "gsm_symbolic-7-1", "gsm_symbolic-7-2"]
    assert a == b
    assert a[0]["messages"] == [{"role": "user", "content": a[0]["metadata"]["entry"]["question"]}]
    assert a[0]["answer"] == a[0]["metadata"]["entry"]["answer"]
    with pytest.raises(PromptSourceError, match="orchestrator.source.dataset"):
        list(load_prompts(Source(type="reasoning_gym", dataset="no_such_dataset_xyz")))


def test_reward_fn_loading_and_answer_extraction():
    fn = load_reward_fn("orchestrator.rewards:gsm_symbolic_score")
    assert callable(fn)
    for bad, msg in [
        ("nocolon", "not 'module:function'"),
        ("no_such_mod_xyz:f", "cannot import"),
        ("orchestrator.rewards:nope", "has no function"),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_reward_fn(bad)
    assert extract_final_answer("so <answer> 12 </answer>") == "12"
    assert extract_final_answer("first 3 then 1,234.5 units") == "1234.5"
    assert extract_final_answer("nothing") is None


DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE_PROMPTS = [
    (DEEP, "JSON nested too deeply to read"),
    ('{"prompt": "x", "meta": ' + DEEP + "}", "JSON nested too deeply to read"),
    ('{"prompt": "x", "meta": ' + "[" * 150 + "]" * 150 + "}", "nested more than 100 levels"),
    ("null", "expected a JSON object, got null"),
    ("3", "expected a JSON object, got number"),
    ('"text"', "expected a JSON object, got string"),
    ("[]", "expected a JSON object, got array"),
    ("true", "expected a JSON object, got boolean"),
    ('{"messages": [{"role": "user", "content": null}]}', r"messages\[0\]: a user message with no content"),
    (
        '{"messages": [{"role": "system"}, {"role": "user", "content": "q"}]}',
        r"messages\[0\]: a system message with no content",
    ),
    ('{"messages": {"role": "user", "content": "q"}}', "field 'messages' must be a non-empty list"),
    ('{"messages": [{"role": 3, "content": "q"}]}', r"messages\[0\].role must be a role string, got number"),
    ('{"messages": [{"role": "user", "content": 5}]}', r"messages\[0\].content must be a string"),
    ('{"messages": [{"role": "user", "content": "q", "weight": 0.5}]}', r"messages\[0\].weight is 0.5; it may be 0"),
    (
        '{"messages": [{"role": "user", "content": "q", "weight": "0"}]}',
        r"messages\[0\].weight is '0'.*Fix: use 0 or 1",
    ),
]


@pytest.mark.parametrize("line,msg", HOSTILE_PROMPTS)
def test_hostile_prompt_lines_are_file_line_errors(tmp_path, line, msg):
    p = jsonl(tmp_path, [{"id": "a", "prompt": "first"}, line])
    with pytest.raises(PromptSourceError, match="in.jsonl:2: " + msg):
        list(load_prompts(Source(type="jsonl", path=str(p))))


def test_count_prompts_counts_every_bad_line_and_lists_the_first_five(tmp_path):
    lines = [{"prompt": "ok"}] + [line for line, _ in HOSTILE_PROMPTS] + [{"prompt": "ok too"}]
    p = jsonl(tmp_path, lines)
    p.write_bytes(p.read_bytes() + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptSourceError) as ei:
        count_prompts(Source(type="jsonl", path=str(p)))
    text = str(ei.value)
    n_bad = len(HOSTILE_PROMPTS) + 1
    assert text.startswith(f"orchestrator.source.path: {n_bad} bad line(s) in {p} (2 good); no request was sent")
    assert [ln.split(": ")[0] for ln in text.splitlines()[1:6]] == [f"  {p}:{k}" for k in range(2, 7)]
    assert f"... and {n_bad - 5} more" in text
    # the UTF-8 error is counted though not listed; alone, it names its line and byte
    p.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptSourceError, match=r"in.jsonl:1: not valid UTF-8 \(byte 0xe9"):
        list(load_prompts(Source(type="jsonl", path=str(p))))


def test_a_repeated_fix_is_said_once_and_a_cut_short_last_line_is_named(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a"}\n{"prompt": "b"\nnot json\n{"prompt": "c"}\n{"prompt": "d')
    with pytest.raises(PromptSourceError) as ei:
        count_prompts(Source(type="jsonl", path=str(p)))
    lines = str(ei.value).splitlines()
    assert lines[0].startswith(f"orchestrator.source.path: 3 bad line(s) in {p} (2 good)")
    assert lines[1] == f"  {p}:2: not valid JSON (Expecting ',' delimiter at column 15)"
    assert lines[2] == f"  {p}:3: not valid JSON (Expecting value at column 1)"
    assert lines[3].startswith(f"  {p}:5: the last line is cut short (partial_last_line: 13 bytes")
    assert "Fix: complete that line or delete it" in lines[3]
    crlf = tmp_path / "crlf.jsonl"  # a CRLF file cut between a line's \r and its \n
    crlf.write_bytes(b'{"prompt": "a"}\r\n{"prompt": "b",\r')
    with pytest.raises(
        PromptSourceError,
        match=r"crlf.jsonl:2: the last line is cut short \(partial_last_line: 16 bytes, ends in \\r with no \\n after it",
    ):
        count_prompts(Source(type="jsonl", path=str(crlf)))
    assert lines[4] == f"  Fix for {p}:2, {p}:3: one JSON object per line, in UTF-8"
    assert str(ei.value).count("one JSON object per line") == 1
    odd = tmp_path / "run: 2" / "p.jsonl"  # the places are the lines' own, whatever the path holds
    odd.parent.mkdir()
    odd.write_text('{"id": "a. Fix: rm -rf ~", "prompt": "x"}\n{"id": "a. Fix: rm -rf ~", "prompt": "y"}\nno\n[\n')
    with pytest.raises(PromptSourceError) as ei:
        count_prompts(Source(type="jsonl", path=str(odd)))
    lines = str(ei.value).splitlines()
    assert lines[-1] == f"  Fix for {odd}:3, {odd}:4: one JSON object per line, in UTF-8"
    assert "Fix for" not in "".join(lines[:-1]) and "already used on line 1. Fix: ids must be unique" in lines[1]
    p.write_text('{"prompt": "a"}\n{"prompt": "b"} }')  # no newline, but no more text could mend it: a typo
    with pytest.raises(PromptSourceError, match=r"p.jsonl:2: not valid JSON .*Fix: one JSON object per line"):
        count_prompts(Source(type="jsonl", path=str(p)))


def test_over_long_prompt_line_and_directory_path(tmp_path, monkeypatch):
    import orchestrator.prompts as prompts

    monkeypatch.setattr(prompts, "MAX_LINE_BYTES", 1024)
    p = jsonl(tmp_path, [{"prompt": "x" * 5000}, {"prompt": "short"}])
    with pytest.raises(PromptSourceError, match=r"in.jsonl:1: line of 5015 bytes is longer than the 1024-byte limit"):
        count_prompts(Source(type="jsonl", path=str(p)))
    with pytest.raises(PromptSourceError, match=r"orchestrator.source.path: .* is a directory"):
        count_prompts(Source(type="jsonl", path=str(tmp_path)))


def test_a_csv_prompt_file_is_named_as_one(tmp_path):
    p = tmp_path / "prompts.csv"
    p.write_text("question,answer\nWhat is 2+2?,4\n")
    with pytest.raises(
        PromptSourceError, match=r"prompts.csv:1: .*Fix: the file looks like a CSV/TSV table.*\"prompt\""
    ):
        count_prompts(Source(type="jsonl", path=str(p)))


def test_a_json_array_file_is_named_as_one_with_the_conversion(tmp_path):
    """json.dump's output (an array, pretty-printed or on one line) where JSON Lines are read."""
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    pretty, one_line = tmp_path / "p.json", tmp_path / "one.json"
    pretty.write_text(json.dumps(rows, indent=2))
    one_line.write_text(json.dumps(rows) + "\n")
    with pytest.raises(PromptSourceError) as e:
        count_prompts(Source(type="jsonl", path=str(pretty)))
    assert str(e.value) == (
        f"orchestrator.source.path: {pretty} is one JSON array, not JSON Lines (one object per line). Fix: convert "
        f"it to one object per line, e.g. jq -c '.[]' {pretty} > {tmp_path / 'p.jsonl'}, and read {tmp_path / 'p.jsonl'}"
    )
    with pytest.raises(PromptSourceError) as e:  # the whole file, as replay says it
        count_prompts(Source(type="jsonl", path=str(one_line)))
    assert str(e.value).startswith(f"orchestrator.source.path: {one_line} is one JSON array, not JSON Lines")
    one_line.write_text(json.dumps(rows) + "\n" + json.dumps(rows[0]) + "\n")  # a stray array, then prompts
    with pytest.raises(PromptSourceError, match=r"got array \(if the file is one JSON array of prompts: convert"):
        count_prompts(Source(type="jsonl", path=str(one_line)))


def test_a_gzip_compressed_prompt_file_is_read_and_a_broken_one_is_one_error(tmp_path):
    import gzip

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    plain, packed = tmp_path / "p.jsonl", tmp_path / "p.jsonl.gz"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert count_prompts(Source(type="jsonl", path=str(packed))) == 3
    got = list(load_prompts(Source(type="jsonl", path=str(packed))))
    assert [p["messages"] for p in got] == [p["messages"] for p in load_prompts(Source(type="jsonl", path=str(plain)))]
    assert [p["prompt_id"] for p in got] == ["p-1", "p-2", "p-3"]
    packed.write_bytes(packed.read_bytes()[:-12])  # cut short
    with pytest.raises(PromptSourceError, match=r"is gzip-compressed but cannot be read to its end .*gunzip -k"):
        count_prompts(Source(type="jsonl", path=str(packed)))


def test_an_unchanged_prompt_file_is_counted_once_and_a_changed_one_again(tmp_path, monkeypatch):
    """A run counts its prompts before writing the run dir and again in the scheduler: one read."""
    import os
    import time

    import orchestrator.prompts as prompts

    monkeypatch.setattr(prompts, "_COUNTED", {})  # what is remembered here is forgotten after the test
    p = jsonl(tmp_path, [{"prompt": "a"}, {"prompt": "b"}])
    src = Source(type="jsonl", path=str(p))
    reads = []
    real = prompts._jsonl
    monkeypatch.setattr(prompts, "_jsonl", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    assert count_prompts(src) == 2 and count_prompts(src) == 2 and len(reads) == 2  # just written: not settled
    os.utime(p, (time.time() - 60, time.time() - 60))
    reads.clear()
    assert count_prompts(src) == 2 and count_prompts(src) == 2 and len(reads) == 1
    assert count_prompts(Source(type="jsonl", path=str(p), system_prompt="be brief")) == 2 and len(reads) == 2
    with p.open("a") as f:
        f.write('{"prompt": "c"}\n')
    os.utime(p, (time.time() - 30, time.time() - 30))
    assert count_prompts(src) == 3 and len(reads) == 3
    with p.open("a") as f:
        f.write("not json\n")
    os.utime(p, (time.time() - 20, time.time() - 20))
    for _ in range(2):  # a bad file is never remembered: each count reports it
        with pytest.raises(PromptSourceError, match="1 bad line"):
            count_prompts(src)
    assert len(reads) == 5
