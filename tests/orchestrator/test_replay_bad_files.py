"""A bad input *file* (not a bad line): a .gz that is not gzip or whose stream is damaged, a
Parquet/CSV/JSON file the `datasets` reader cannot read. Never a traceback, never records lost
unseen: one clear error under on_error "fail", a counted bad record (or one error) under "skip"."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.config import load_config
from distill.core.contract import is_done
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import ReplayError, iter_jsonl, replay

ROOT = Path(__file__).resolve().parents[2]


def rows(n: int) -> list[dict]:
    rnd = random.Random(0)  # answers that do not compress away: the damage lands mid-stream
    return [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "".join(rnd.choice("abcdefghij ") for _ in range(300))},
            ],
        }
        for i in range(n)
    ]


def jsonl_bytes(n: int) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows(n))


def damaged_gzip(n: int = 200) -> bytes:
    """n good lines, then a gzip member whose deflate data starts with a reserved block type (zlib.error)."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return gzip.compress(jsonl_bytes(n), mtime=0) + header + b"\x07" + b"\x00" * 16


def bad_crc_gzip(n: int = 20) -> bytes:
    packed = bytearray(gzip.compress(jsonl_bytes(n), mtime=0))
    packed[-8] ^= 0xFF  # the CRC-32 in the trailer: every byte inflates, the check fails
    return bytes(packed)


def make_cfg(out: Path, path: Path, **replay_keys):
    return load_config(
        None,
        {
            "output_dir": str(out),
            "orchestrator": {"source": {"type": "replay", "path": str(path)}, "replay": replay_keys},
        },
    )


def run_replay(tmp_path: Path, tok, inputs: list[Path], on_error: str) -> dict:
    cfg = make_cfg(tmp_path / "run", inputs[0], on_error=on_error)
    recon = Reconstructor(tok, cfg.orchestrator.reconstruction, 1024)
    return replay(cfg, tmp_path / "run", recon, inputs=[str(p) for p in inputs], progress=False)


# --- .gz files ---------------------------------------------------------------------------------


def test_a_damaged_gzip_stream_ends_in_one_corrupt_gzip_record_after_the_lines_it_could_read(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(damaged_gzip())
    lines = list(iter_jsonl(str(p)))
    *good, last = lines
    assert len(good) == 200 and all(ln.obj is not None for ln in good)  # the lines before the damage are read
    assert last.line == 201 and "invalid block type" in last.bad.error
    assert last.bad is not None and last.bad.reason == "corrupt_gzip" and not last.bad.partial
    assert f"corrupt gzip stream after line {len(good)}" in last.bad.error
    assert "the rest of the file was not read" in last.bad.error


@pytest.mark.parametrize(
    "name, data, says",
    [
        ("plain.jsonl.gz", jsonl_bytes(3), "is not a gzip file although its name ends in .gz"),
        ("crc.jsonl.gz", bad_crc_gzip(), "corrupt gzip stream"),
        ("damaged.jsonl.gz", damaged_gzip(), "corrupt gzip stream"),
    ],
)
def test_a_bad_gzip_file_stops_a_fail_replay_naming_the_file_and_the_fix(tmp_path, smol_tokenizer, name, data, says):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ReplayError) as ei:
        run_replay(tmp_path, smol_tokenizer, [p], "fail")
    assert ei.value.file == str(p) and ei.value.reason == "corrupt_gzip" and says in str(ei.value)
    assert ("rename it to .jsonl" if "plain" in name else "recompress the file") in str(ei.value)
    assert not is_done(tmp_path / "run" / "samples")


def test_skip_counts_a_bad_gzip_file_as_one_bad_record_and_warns_that_its_rest_was_not_read(
    tmp_path, smol_tokenizer, capsys
):
    plain_named = tmp_path / "a.jsonl.gz"
    plain_named.write_bytes(jsonl_bytes(3))
    crc = tmp_path / "b.jsonl.gz"
    crc.write_bytes(bad_crc_gzip())
    good = tmp_path / "c.jsonl"
    good.write_bytes(jsonl_bytes(2))
    summary = run_replay(tmp_path, smol_tokenizer, [plain_named, crc, good], "skip")
    assert summary["bad_record_reasons"]["corrupt_gzip"] == 2
    assert summary["partial_last_lines"] == 0 and summary["bad_lines"] == summary["bad_records"]
    listed = [b for b in read_jsonl(tmp_path / "run" / "replay_rejects.jsonl") if b["reason"] == "corrupt_gzip"]
    assert [(b["file"], b["line"], b["partial"]) for b in listed] == [(str(plain_named), 1, False)] + [
        (str(crc), listed[1]["line"], False)
    ]
    err = capsys.readouterr().err
    assert f"warning: {plain_named}:1: is not a gzip file" in err and "nothing of it was read" in err
    assert f"warning: {crc}:" in err and "the rest of the file was not read" in err


def test_a_gzip_stream_that_ends_early_is_still_a_partial_last_line(tmp_path):
    p = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(jsonl_bytes(50), mtime=0)
    p.write_bytes(packed[: len(packed) - 20])
    last = list(iter_jsonl(str(p)))[-1]
    assert last.bad is not None and last.bad.reason == "partial_last_line" and last.bad.partial


def distill(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def cli_config(tmp_path: Path, tokenizer_dir, fmt: str = "auto") -> Path:
    cfg = tmp_path / "replay.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / "run"}"\n[student]\ntokenizer = "{tokenizer_dir}"\n'
        f'[orchestrator.source]\ntype = "replay"\nformat = "{fmt}"\n'
    )
    return cfg


# --- files read through `datasets` (Parquet, CSV, JSON) ---------------------------------------

CHAT_LINE = json.dumps(rows(1)[0])
BAD_DATASET_FILES = [  # (name, bytes, format, what the error says)
    ("notparquet.parquet", b"not parquet", "auto", "Parquet magic bytes not found"),
    ("empty.parquet", b"", "auto", "Parquet file size is 0 bytes"),
    ("ragged.csv", b"prompt,completion\na,b\nc,d,e\n", "dataset", "Expected 2 fields in line 3, saw 3"),
    ("torn.jsonl", (CHAT_LINE + "\n" + CHAT_LINE[:30]).encode(), "dataset", "JSON parse error"),
]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize("name, data, fmt, says", BAD_DATASET_FILES)
def test_a_file_datasets_cannot_read_is_one_error_naming_the_file_and_the_fix(
    tmp_path, smol_tokenizer, name, data, fmt, says, on_error
):
    p = tmp_path / name
    p.write_bytes(data)
    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "run"),
            "orchestrator": {
                "source": {"type": "replay", "path": str(p), "format": fmt},
                "replay": {"on_error": on_error},
            },
        },
    )
    with pytest.raises(ReplayError) as ei:
        replay(
            cfg, tmp_path / "run", Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction, 1024), progress=False
        )
    msg = str(ei.value)
    assert ei.value.file == str(p) and msg.startswith(f"{p}: cannot be read as ") and says in msg
    assert "Fix: " in msg and "\n" not in msg.strip()


def test_datasets_own_wrapper_is_looked_through_to_the_cause():
    import pyarrow as pa
    from datasets.exceptions import DatasetGenerationError

    from orchestrator.replay.formats.dataset import unreadable

    try:
        try:
            raise pa.lib.ArrowInvalid("Parquet magic bytes not found in footer.")
        except pa.lib.ArrowInvalid as inner:
            raise DatasetGenerationError("An error occurred while generating the dataset") from inner
    except DatasetGenerationError as e:
        err = unreadable("x.parquet", "parquet", 7, e)
    assert str(err).startswith(
        "x.parquet:8: cannot be read as a Parquet file by the `datasets` library (ArrowInvalid: "
    )
    assert "7 row(s) before it were read" in str(err) and "generating the dataset" not in str(err)


def test_cli_bad_parquet_under_skip_is_one_message_exit_1_no_traceback(tmp_path, smol_tokenizer_dir):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not parquet")
    proc = distill("replay", cli_config(tmp_path, smol_tokenizer_dir), p, "--on-error", "skip")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "distill:" in ln or "Error" in ln]
    assert len(errors) == 1 and f"distill: {p}: cannot be read as a Parquet file" in errors[0], proc.stderr
