"""`distill inspect` on a sample it cannot show: one `distill:` line naming shard file:line and the field."""

from __future__ import annotations

import json

import pytest

from distill.cli import main

GOOD = {"sample_id": "p/0", "prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "completion_mask": [0, 1]}


def _shard(tmp_path, **bad) -> str:
    d = tmp_path / "samples"
    d.mkdir()
    rows = [GOOD, {**GOOD, "sample_id": "p/1", **bad}]
    (d / "shard-000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d / "shard-000000.jsonl")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"completion_ids": [4, -5]}, "completion_ids[1] = -5"),
        ({"completion_ids": [12.7, 5]}, "completion_ids[0] = 12.7"),
        ({"prompt_ids": [1, "12", 3]}, "prompt_ids[1] = '12'"),
        ({"prompt_ids": None}, "prompt_ids is null"),
        ({"completion_ids": [4, 10**6]}, "completion_ids[1] = 1000000"),
        ({"prompt_ids": [49152]}, "prompt_ids[0] = 49152"),  # SmolLM2's vocabulary is 0..49151
        ({"completion_mask": [0, 2]}, "completion_mask[1] = 2 is not 0 or 1"),
    ],
)
def test_bad_sample_is_one_line(tmp_path, capsys, smol_tokenizer_dir, bad, field):
    shard = _shard(tmp_path, **bad)
    rc = main(["inspect", shard, "--tokenizer", str(smol_tokenizer_dir), "--index", "1", "--no-color"])
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert err.count("\n") == 0 and err.startswith(f"distill: {shard}:2: ") and field in err, err
    assert "Traceback" not in err


def test_good_sample_beside_a_bad_one_shows_and_html_checks_all(tmp_path, capsys, smol_tokenizer_dir):
    shard = _shard(tmp_path, completion_ids=[4, 10**6])  # readable, but beyond the vocabulary
    assert main(["inspect", shard, "--tokenizer", str(smol_tokenizer_dir), "--index", "0", "--no-color"]) == 0
    capsys.readouterr()
    rc = main(["inspect", shard, "--tokenizer", str(smol_tokenizer_dir), "--html", str(tmp_path / "a.html")])
    assert rc == 1 and f"{shard}:2: " in capsys.readouterr().err
    assert not (tmp_path / "a.html").exists()


def test_inspect_reads_ids_back_with_a_tokenizer_that_has_no_chat_template(tmp_path, capsys, smol_tokenizer_dir):
    """Showing tokens needs no template (a `distill tokenize --chat-template` output, a bare tokenizer)."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(smol_tokenizer_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    conf = json.loads((bare / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(conf))
    assert main(["inspect", _shard(tmp_path), "--tokenizer", str(bare), "--index", "0", "--no-color"]) == 0
    assert "trained" in capsys.readouterr().out
