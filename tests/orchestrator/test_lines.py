"""orchestrator/lines.py: bounded line reading and parse failures as reasons, never exceptions."""

from __future__ import annotations

import gzip
import io

import pytest

from orchestrator.lines import content_problem, depth_exceeds, json_type, parse_line, read_lines
from distill.core.redact import MAX_DEPTH, redact


def test_read_lines_cuts_lines_over_the_limit_and_goes_on_after_them():
    data = b"a" * 15 + b"\n" + b"b" * 16 + b"\n" + b"c" * 40 + b"\n" + b"ok\n" + b"d" * 30
    got = list(read_lines(io.BytesIO(data), 16))
    assert got == [
        (b"a" * 15 + b"\n", 16, False),  # exactly the limit, newline included
        (b"b" * 16, 17, True),
        (b"c" * 16, 41, True),
        (b"ok\n", 3, False),
        (b"d" * 16, 30, True),
    ]  # an over-long last line without its newline
    with gzip.GzipFile(fileobj=(buf := io.BytesIO()), mode="wb") as gz:
        gz.write(data)
    buf.seek(0)
    assert list(read_lines(gzip.GzipFile(fileobj=buf), 16)) == got


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"a": ' + b'{"b": ' * 5000 + b"1" + b"}" * 5000 + b"}", "too_deep"),
        (b'{"text": "caf\xe9"}', "invalid_utf8"),
        (b'{"text": ', "invalid_json"),
        (b"", "invalid_json"),
    ],
)
def test_parse_line_gives_a_reason_instead_of_raising(raw, reason):
    value, got, message = parse_line(raw)
    assert (value, got) == (None, reason) and message


def test_parse_line_and_json_type_of_bare_values():
    assert [json_type(parse_line(x)[0]) for x in (b"null", b"3", b"2.5", b'"s"', b"[]", b"true", b"{}")] == [
        "null",
        "number",
        "number",
        "string",
        "array",
        "boolean",
        "object",
    ]


def test_content_rules():
    assert content_problem({"role": "user", "content": None}, final=False)
    assert content_problem({"role": "system"}, final=False)
    assert content_problem({"role": "tool", "content": None}, final=False)
    assert content_problem({"role": "user", "content": ""}, final=False) is None  # "" is content
    assert content_problem({"role": "assistant", "content": None}, final=False) is None  # history turn
    assert content_problem({"role": "assistant", "content": None}, final=True)
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert content_problem({"role": "assistant", "content": None, "tool_calls": calls}, final=True) is None
    assert content_problem({"role": "assistant", "reasoning_content": "hm"}, final=True) is None


def test_depth_exceeds_walks_without_recursion():
    deep: list = []
    x = deep
    for _ in range(50_000):
        x.append([])
        x = x[0]
    assert depth_exceeds(deep, 100) and not depth_exceeds([[1], {"a": [2]}], 3) and depth_exceeds([[[1]]], 2)


def test_redact_refuses_data_nested_past_its_limit_instead_of_crashing():
    ok: dict = {"api_key": "s"}
    bad: dict = {"api_key": "s"}
    for _ in range(MAX_DEPTH - 1):
        ok = {"k": ok}
    for _ in range(5000):
        bad = {"k": bad}
    x = redact(ok)
    for _ in range(MAX_DEPTH - 1):
        x = x["k"]
    assert x == {"api_key": "<redacted>"}
    with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH} levels"):
        redact(bad)
