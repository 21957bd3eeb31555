"""`distill tokenize` given the wrong files: an output that is its input (refused before anything is
read: exit 2), an input it cannot read (one line naming the file and the fix: exit 1), a line that is
not UTF-8 (that line's rejection, like invalid JSON). No traceback, the input never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main

ROOT = Path(__file__).resolve().parents[2]
LINE = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}) + "\n"


def tokenize(inp, out, tokenizer) -> list[str]:
    return ["tokenize", "--tokenizer", str(tokenizer), str(inp), "-o", str(out)]


@pytest.mark.parametrize("how", ["relative", "symlink", "hardlink"])
def test_an_output_that_is_the_input_is_refused_before_reading(tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(LINE)
    out = {"relative": "./sub/../in.jsonl", "symlink": "link.jsonl", "hardlink": "hard.jsonl"}[how]
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        os.symlink("in.jsonl", "link.jsonl")
    if how == "hardlink":
        os.link("in.jsonl", "hard.jsonl")
    with pytest.raises(SystemExit) as e:  # argparse's usage error: exit 2
        main(tokenize("in.jsonl", out, tmp_path / "no-tokenizer"))  # the tokenizer is never looked at
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"the output {out} is the input file in.jsonl" in err and "-o" in err and "Traceback" not in err
    assert (tmp_path / "in.jsonl").read_text() == LINE


def test_an_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(LINE)
    with pytest.raises(SystemExit) as e:
        main(tokenize(tmp_path / "in.jsonl", tmp_path, tmp_path / "no-tokenizer"))
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_a_missing_chat_template_is_named_as_the_option_given(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(LINE)
    args = tokenize(tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "no-tokenizer")
    with pytest.raises(SystemExit) as e:
        main([*args, "--chat-template", str(tmp_path / "nope.jinja")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--chat-template {tmp_path / 'nope.jinja'} is not a file" in err
    assert "student.chat_template" not in err


def _folder(p: Path) -> Path:
    p.mkdir()
    return p


def _parquet(p: Path) -> Path:
    p.write_bytes(b"PAR1\x15\x04\x15\x00" + b"\x00" * 16 + b"PAR1")  # Parquet's magic at both ends
    return p


def _gzip(p: Path) -> Path:
    import gzip

    p.write_bytes(gzip.compress(LINE.encode()))
    return p


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("missing.jsonl", None, ["missing.jsonl does not exist", "Fix:"]),
        ("folder", _folder, ["folder is a folder", "distill replay CONFIG"]),
        ("data.parquet", _parquet, ["data.parquet is a Parquet file", "reads JSONL", "distill replay", "dataset"]),
        ("data.jsonl.gz", _gzip, ["data.jsonl.gz is gzip-compressed", "gunzip"]),
    ],
)
def test_an_input_tokenize_cannot_read_is_one_message(tmp_path, capsys, name, make, words):
    inp = make(tmp_path / name) if make else tmp_path / name
    assert main(tokenize(inp, tmp_path / "out.jsonl", tmp_path / "no-tokenizer")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"distill: {inp}") and err.count("\n") == 1, err
    for w in words:
        assert w in err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_missing_tokenizer_folder_says_what_to_pass(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(LINE)
    assert main(tokenize(tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "no-tokenizer")) == 1
    err = capsys.readouterr().err
    assert "no-tokenizer does not exist" in err and "Fix:" in err and "tokenizer.json" in err
    # a file given for the folder is named as a file, not as missing
    (tmp_path / "tokenizer.json").write_text("{}")
    assert main(tokenize(tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "tokenizer.json")) == 1
    err = capsys.readouterr().err
    assert "tokenizer folder " + str(tmp_path / "tokenizer.json") + " is a file. Fix: point at a folder" in err


def test_the_builtin_student_name_is_a_tokenizer(tmp_path, capsys, smol_tokenizer_dir):
    """--tokenizer builtin:smollm2-135m-instruct, as student.path accepts it (it was "folder does not exist")."""
    (tmp_path / "in.jsonl").write_text(LINE)
    assert main(tokenize(tmp_path / "in.jsonl", tmp_path / "out.jsonl", "builtin:smollm2-135m-instruct")) == 0
    assert main(tokenize(tmp_path / "in.jsonl", tmp_path / "ref.jsonl", smol_tokenizer_dir)) == 0
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()


def test_a_line_that_is_not_utf8_is_that_lines_rejection(tmp_path, smol_tokenizer_dir):
    """The tester's file (a Latin-1 é) through the real CLI: the other lines still tokenize."""
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(LINE.encode() + b'{"messages": [{"role":"user","content":"caf\xe9"}]}\n' + LINE.encode())
    out = tmp_path / "out.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "distill", *tokenize(inp, out, smol_tokenizer_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    summary = json.loads(res.stdout)
    assert summary["lines"] == 3 and summary["samples"] == 2 and summary["by_reason"] == {"invalid_utf8": 1}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert rows[1]["error"] == f"invalid_utf8: {inp}:2: not valid UTF-8 (byte 0xe9 at offset 43)"


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"messages": [{"role": "user", "content": "Q"}]}\nnot json\n', "no sample from 2 line(s): 2 rejected"),
        ("\n\n", "has no conversation line"),
        # the first rejection's detail is quoted: the reason alone does not name the role to rename
        (
            '{"messages": [{"role": "human", "content": "Q"}, {"role": "gpt", "content": "A"}]}\n',
            "; the first: unknown_role: IN:1: messages[0] has role 'human' ('human' is ShareGPT's name for user: "
            "write role 'user'); known roles are system, user, assistant, tool. Fix:",
        ),
    ],
)
def test_a_file_that_gives_no_sample_fails(tmp_path, smol_tokenizer_dir, capsys, text, says):
    """Nothing made is a failure (exit 1), as for replay; the rejections are still written, one per line."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(text)
    assert main(tokenize(inp, out, smol_tokenizer_dir)) == 1
    cap = capsys.readouterr()
    assert json.loads(cap.out)["samples"] == 0
    assert cap.err.startswith("distill: ") and says.replace("IN", str(inp)) in cap.err and "Fix:" in cap.err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all("error" in r for r in rows) and len(rows) == len([x for x in text.splitlines() if x.strip()])


def test_a_json_array_input_is_one_message(tmp_path, capsys, smol_tokenizer_dir):
    inp, out = tmp_path / "in.json", tmp_path / "out.jsonl"
    inp.write_text("[\n" + LINE.strip() + "\n]\n")
    assert main(tokenize(inp, out, smol_tokenizer_dir)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"distill: {inp} is one JSON array, not JSON Lines") and "jq -c '.[]'" in err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("in.csv", "prompt,response\nHi,Hello\n", "Fix: the file looks like a CSV/TSV table"),
        ("in.json", json.dumps(json.loads(LINE), indent=2) + "\n", "Fix: the file looks like pretty-printed JSON"),
    ],
)
def test_a_file_that_is_not_json_lines_says_so(tmp_path, smol_tokenizer_dir, capsys, name, text, says):
    inp, out = tmp_path / name, tmp_path / "out.jsonl"
    inp.write_text(text)
    assert main(tokenize(inp, out, smol_tokenizer_dir)) == 1
    cap = capsys.readouterr()
    assert says in cap.err and says.removeprefix("Fix: ") in json.loads(cap.out)["hint"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert says in rows[0]["error"] and not any(says in r["error"] for r in rows[1:])  # once, at line 1


def test_a_half_written_last_line_is_named_as_replay_names_it(tmp_path, smol_tokenizer_dir):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(LINE + LINE.strip()[:25])  # the writer stopped mid-line
    assert main(tokenize(inp, out, smol_tokenizer_dir)) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[1]["error"].startswith("partial_last_line: ") and "half-written last line" in rows[1]["error"]


def test_a_one_line_json_array_is_named_with_the_conversion(tmp_path, smol_tokenizer_dir):
    inp, out = tmp_path / "in.json", tmp_path / "out.jsonl"
    inp.write_text("[" + LINE.strip() + ", " + LINE.strip() + "]\n")
    assert main(tokenize(inp, out, smol_tokenizer_dir)) == 1
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["error"].startswith("invalid_line: ") and f"jq -c '.[]' {inp} > {tmp_path / 'in.jsonl'}" in row["error"]


@pytest.mark.parametrize(
    "template, policy, says",
    [
        # the end of a turn is no special token: no end-of-turn token to train
        ("{% for m in messages %}{{ m.content }}\n{% endfor %}", "", "cannot work out the end-of-turn token"),
        # a template that shows tool definitions itself, with the switch that writes them
        (
            (ROOT / "tests/templates/chatml_tools.jinja").read_text(),
            '[orchestrator.reconstruction]\ntools_in_system_prompt = "{tools}"\n',
            "shows the tool definitions itself",
        ),
    ],
)
def test_a_template_reconstruction_cannot_use_is_one_message(
    tmp_path, capsys, smol_tokenizer_dir, template, policy, says
):
    """Before, the Reconstructor's ValueError reached the user as a traceback (distill run names it)."""
    (tmp_path / "in.jsonl").write_text(LINE)
    (tmp_path / "t.jinja").write_text(template)
    (tmp_path / "c.toml").write_text(policy)
    args = tokenize(tmp_path / "in.jsonl", tmp_path / "out.jsonl", smol_tokenizer_dir)
    assert main([*args, "--chat-template", str(tmp_path / "t.jinja"), "--config", str(tmp_path / "c.toml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"distill: the chat template {tmp_path / 't.jinja'} cannot be used to build samples: ")
    assert says in err and err.count("\n") == 1
    assert ("Fix: unset tools_in_system_prompt" in err) == bool(policy)
    assert not (tmp_path / "out.jsonl").exists()
