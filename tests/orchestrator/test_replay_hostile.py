"""Replay never crashes on data: every hostile line is one counted, listed bad record with a reason,
under on_error "skip" and "fail" alike, and the summary accounts for every record.

The hostile inputs are generated here (no committed blobs); the long-line limit is lowered through
orchestrator.replay.max_line_bytes so the over-long line stays small.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.config import load_config
from distill.core.contract import is_done, iter_samples
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import ReplayError, iter_jsonl, replay

ROOT = Path(__file__).resolve().parents[2]
MAX_LINE = 256 << 10  # the 100k-deep lines (200 kB) fit; the over-long line does not
DEEP = "[" * 100_000 + "]" * 100_000


def chat(answer: str = "5", rid: str | None = None, **extra) -> dict:
    row = {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": answer}]}
    if rid:
        row["id"] = rid
    return {**row, **extra}


def batch_out(cid: str, **response) -> dict:
    return {"id": "batch_req_" + cid, "custom_id": cid, "response": response, "error": None}


USER, ASSISTANT = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
# (line bytes, reason, field) for each hostile line; the line number is its place in the file.
HOSTILE: list[tuple[bytes, str, str | None]] = [
    (DEEP.encode(), "too_deep", None),
    (
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": '
            + DEEP
            + "}"
        ).encode(),
        "too_deep",
        None,
    ),
    (b"x" * (3 * MAX_LINE), "line_too_long", None),
    (b"null", "not_an_object", None),
    (b"3", "not_an_object", None),
    (b'"text"', "not_an_object", None),
    (b"[]", "not_an_object", None),
    (b"true", "not_an_object", None),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid_utf8", None),
    (b"{not json", "invalid_json", None),
    (
        json.dumps(batch_out("req-0", status_code=200, body={"choices": []})).encode(),
        "no_choices",
        "response.body.choices",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": None}, ASSISTANT]}).encode(),
        "missing_content",
        "messages[0].content",
    ),
    (
        json.dumps({"messages": [{"role": "system"}, USER, ASSISTANT]}).encode(),
        "missing_content",
        "messages[0].content",
    ),
    (
        json.dumps({"messages": [USER, {"role": "assistant", "content": None}]}).encode(),
        "empty_answer",
        "messages[1].content",
    ),
    (json.dumps({"messages": [USER, {"role": "assistant"}]}).encode(), "empty_answer", "messages[1].content"),
    (
        json.dumps({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "a"}]}).encode(),
        "missing_content",
        "conversations[0].value",
    ),
    (json.dumps({"messages": {"role": "user"}}).encode(), "bad_field", "messages"),
    (json.dumps({"messages": [{"role": 3, "content": "q"}, ASSISTANT]}).encode(), "bad_field", "messages[0].role"),
    (json.dumps({"messages": [{"role": None, "content": "q"}, ASSISTANT]}).encode(), "bad_field", "messages[0].role"),
]


def make_cfg(tmp_path: Path, path: Path | None, **replay_keys):
    return load_config(
        None,
        {
            "output_dir": str(tmp_path / "run"),
            "orchestrator": {
                "source": {"type": "replay", **({"path": str(path)} if path else {})},
                "replay": {"max_line_bytes": MAX_LINE, "batch_input": str(batch_input(tmp_path)), **replay_keys},
            },
        },
    )


def batch_input(tmp_path: Path) -> Path:
    p = tmp_path / "batch_input.jsonl"
    reqs = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [USER]},
        }
        for i in range(5)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    return p


def hostile_file(tmp_path: Path) -> Path:
    """Good records first and last, every hostile line between, and a torn last line."""
    lines = [json.dumps(chat("5", "ok-1")).encode()] + [h[0] for h in HOSTILE]
    lines += [
        json.dumps(batch_out("req-1", status_code=500, body={"error": {"message": "boom"}})).encode(),
        json.dumps({"custom_id": "req-2", "response": None, "error": {"code": "x"}}).encode(),
        json.dumps(chat("", "empty-answer")).encode(),  # "" is an answer: reconstruction decides
        json.dumps(
            batch_out(
                "req-4",
                status_code=200,
                body={
                    "choices": [  # a teacher's empty answer
                        {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}
                    ]
                },
            )
        ).encode(),
        json.dumps(
            batch_out(
                "req-3",
                status_code=200,
                body={
                    "choices": [  # two conversations
                        {"index": i, "message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": "stop"}
                        for i in range(2)
                    ]
                },
            )
        ).encode(),
        json.dumps(chat("6", "ok-2")).encode(),
    ]
    p = tmp_path / "hostile.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n" + json.dumps(chat("7", "torn")).encode()[:20])
    return p


def recon(tok, cfg):
    return Reconstructor(tok, cfg.orchestrator.reconstruction, cfg.orchestrator.reconstruction.max_seq_len)


def assert_accounted(summary: dict) -> None:
    o = summary["outcomes"]
    assert summary["records"] + summary["extra_conversations"] == (
        o["trained"] + o["filtered"] + o["rejected"] + o["bad_records"] + o["not_reconstructed"]
    )
    assert o["filtered"] == sum(summary["filtered"].values())
    assert o["bad_records"] == sum(summary["bad_record_reasons"].values()) == summary["bad_records"]


def test_every_hostile_line_is_one_listed_bad_record(tmp_path, smol_tokenizer):
    p = hostile_file(tmp_path)
    cfg = make_cfg(tmp_path, p, on_error="skip")
    summary = replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    listed = read_jsonl(tmp_path / "run" / "replay_rejects.jsonl")
    n = len(HOSTILE)
    expected = [(i + 2, reason, field) for i, (_, reason, field) in enumerate(HOSTILE)]
    expected.append((n + 8, "partial_last_line", None))
    assert [(b["line"], b["reason"], b["field"]) for b in listed] == expected
    assert all(b["file"] == str(p) and b["error"] for b in listed)
    assert summary["records"] == n + 8 and summary["extra_conversations"] == 1
    assert summary["rejected"] == {"empty_assistant_turn": 2}  # "" in a dataset, null from the teacher
    assert summary["bad_record_reasons"]["not_an_object"] == 5 and summary["bad_record_reasons"]["too_deep"] == 2
    assert summary["filtered"] == {"batch_error": 2}  # failed requests: counted and listed, not training data
    assert {s.sample_id for s in iter_samples(tmp_path / "run" / "samples")} >= {
        "ok-1/0",
        "ok-2/0",
        "req-3/0",
        "req-3/1",
    }
    assert_accounted(summary)
    assert summary["outcomes"]["bad_records"] == n + 1
    assert json.loads((tmp_path / "run" / "replay_summary.json").read_text())["outcomes"] == summary["outcomes"]


@pytest.mark.parametrize("k", range(len(HOSTILE)))
def test_on_error_fail_stops_at_the_hostile_line_naming_file_line_and_reason(tmp_path, smol_tokenizer, k):
    line, reason, field = HOSTILE[k]
    p = tmp_path / "in.jsonl"
    p.write_bytes(json.dumps(chat("5", "ok-1")).encode() + b"\n" + line + b"\n")
    cfg = make_cfg(tmp_path, p, on_error="fail")
    with pytest.raises(ReplayError) as ei:
        replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    assert (ei.value.file, ei.value.line, ei.value.field, ei.value.reason) == (str(p), 2, field, reason)
    assert str(ei.value).startswith(f"{p}:2: ") and not is_done(tmp_path / "run" / "samples")


def test_an_over_long_line_is_read_past_without_holding_it(tmp_path):
    p = tmp_path / "long.jsonl"
    with open(p, "wb") as f:
        f.write(json.dumps(chat()).encode() + b"\n")
        f.write(b'{"messages": "' + b"y" * (24 << 20) + b'"}\n')
        f.write(json.dumps(chat("6")).encode() + b"\n")
    tracemalloc.start()
    try:
        lines = list(iter_jsonl(str(p), 64 << 10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [ln.line for ln in lines] == [1, 2, 3] and lines[0].obj and lines[2].obj["messages"][1]["content"] == "6"
    long_line = len(b'{"messages": "') + (24 << 20) + len(b'"}\n')
    assert lines[1].bad.reason == "line_too_long" and f"line of {long_line} bytes" in lines[1].bad.error
    assert peak < 8 << 20  # the 24 MiB line was never held


def distill(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def cli_config(tmp_path: Path, tokenizer_dir, path: str | None = None) -> Path:
    src = f'path = "{path}"\n' if path else ""
    cfg = tmp_path / "replay.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / "run"}"\n[student]\ntokenizer = "{tokenizer_dir}"\n'
        f'[orchestrator.source]\ntype = "replay"\n{src}'
        f'[orchestrator.replay]\nmax_line_bytes = {MAX_LINE}\nbatch_input = "{batch_input(tmp_path)}"\n'
    )
    return cfg


def test_cli_replays_inputs_given_on_the_command_line_without_source_path(tmp_path, smol_tokenizer_dir):
    cfg = cli_config(tmp_path, smol_tokenizer_dir)
    p = hostile_file(tmp_path)
    proc = distill("replay", cfg, p, "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "replay_summary.json").read_text())
    assert summary["inputs"] == [str(p)] and is_done(tmp_path / "run" / "samples")
    assert_accounted(summary)
    o = summary["outcomes"]
    assert (
        f"replay: {summary['records']} records (+1 more choice(s) of Batch API lines) = "
        f"{o['trained']} trained + {o['filtered']} filtered + {o['rejected']} rejected + "
        f"{o['bad_records']} bad"
    ) in proc.stdout
    assert '"too_deep": 2' in proc.stdout and "Traceback" not in proc.stderr


def test_cli_on_error_fail_is_one_message_and_exit_1(tmp_path, smol_tokenizer_dir):
    cfg = cli_config(tmp_path, smol_tokenizer_dir)
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps(chat("5")) + "\nnull\n")
    proc = distill("replay", cfg, p, "--on-error", "fail")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{p}:2: expected a JSON object per line, got null" in proc.stderr
    # one message (the rest of stderr is the progress bar)
    assert (
        [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("replay:")]
        == [ln for ln in proc.stderr.splitlines() if ln.startswith("distill: ")]
        != []
    )


def test_cli_without_input_or_source_path_names_the_key(tmp_path, smol_tokenizer_dir):
    proc = distill("replay", cli_config(tmp_path, smol_tokenizer_dir))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "orchestrator.source.path" in proc.stderr and "INPUT" in proc.stderr
    proc = distill("replay", cli_config(tmp_path, smol_tokenizer_dir), "x.jsonl", "--on-error", "maybe")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--on-error must be skip or fail" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_replay_without_any_input_names_the_key(tmp_path, smol_tokenizer):
    cfg = make_cfg(tmp_path, None)
    with pytest.raises(ReplayError, match=r"orchestrator\.source\.path: is not set"):
        replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)


@pytest.mark.parametrize(
    "line,problem",
    [
        (DEEP, "JSON nested too deeply"),
        ("null", "a JSON null, not an object"),
        ("3", "a JSON number, not an object"),
        ('{"custom_id": ["x"], "body": {}}', "custom_id is array, not a string"),
        ('{"custom_id": "' + "z" * MAX_LINE + '"}', "line of [0-9]+ bytes is longer than the"),
    ],
)
def test_a_hostile_batch_input_line_is_an_error_naming_it(tmp_path, smol_tokenizer, line, problem):
    out = tmp_path / "out.jsonl"
    out.write_text(
        json.dumps(
            batch_out(
                "req-0",
                status_code=200,
                body={"choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}}]},
            )
        )
        + "\n"
    )
    cfg = make_cfg(tmp_path, out)  # writes batch_input.jsonl: 5 requests
    inp = tmp_path / "batch_input.jsonl"
    inp.write_text(inp.read_text() + line + "\n")
    with pytest.raises(
        ReplayError, match=f"batch_input.jsonl:6: field 'custom_id': not a Batch API input line \\({problem}"
    ):
        replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)


def test_a_replay_that_produces_no_sample_fails_and_is_not_marked_done(tmp_path, smol_tokenizer):
    """Nothing to train on is an error with the counts by reason (as for a live rollout), not a replay that
    "completed": an empty input, every line bad under on_error = "skip", every record rejected or filtered.
    The error quotes the first problem's detail, which says what to fix where the reason alone does not
    (ShareGPT's roles in a chat file: only the detail names them)."""
    cases = {
        "empty.jsonl": (b"", r"empty.jsonl: no record to replay \(empty input\)"),
        "bad.jsonl": (
            b'garbage\n{"a": 1}\n',
            r'no sample was produced from 2 record\(s\): 2 bad \{"invalid_json": 1.*\. The first: invalid_json: '
            r"not valid JSON \(Expecting value at column 1\) \(\S*bad.jsonl:1\)\. Nothing was marked done",
        ),
        "empty_answers.jsonl": (
            (
                json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]})
                + "\n"
            ).encode(),
            r'1 rejected \{"empty_assistant_turn": 1\}.*The first: empty_assistant_turn: .*Nothing was marked done',
        ),
        "sharegpt_roles.jsonl": (
            (
                json.dumps({"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]}) + "\n"
            ).encode(),
            r'1 filtered \{"no_assistant_turn": 1\}.*The first: no_assistant_turn: the conversation has no '
            r"assistant message to train on \(its other roles: gpt, human; ShareGPT turns are read as .*"
            r"sharegpt_roles.jsonl:1\)\. Nothing was marked done",
        ),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        cfg = make_cfg(tmp_path, tmp_path / name, on_error="skip")
        with pytest.raises(ReplayError, match=msg):
            replay(cfg, tmp_path / name.replace(".", "_"), recon(smol_tokenizer, cfg), progress=False)
        assert not is_done(tmp_path / name.replace(".", "_") / "samples")
    # a rerun of a replay whose samples were all published before produces none now, and that is fine
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(chat("5", "ok-1")) + "\n")
    cfg = make_cfg(tmp_path, good)
    for _ in range(2):
        summary = replay(cfg, tmp_path / "again", recon(smol_tokenizer, cfg), progress=False)
    assert summary["samples"] == 0 and summary["already_published"] == 1 and is_done(tmp_path / "again" / "samples")


def test_a_record_edited_since_its_sample_was_published_stops_the_resumed_replay(tmp_path, smol_tokenizer):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps(chat("5 #### 5", "x")) + "\n" + json.dumps(chat("6", "y")) + "\n")
    cfg = make_cfg(tmp_path, p)
    replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    before = [s.to_json() for s in iter_samples(tmp_path / "run" / "samples")]
    p.write_text(json.dumps(chat("5 #### 5", "x")) + "\n" + json.dumps(chat("4 #### 4", "y")) + "\n")
    with pytest.raises(ReplayError, match=r"in.jsonl:2: the sample built from this record now differs .*'y/0'.*Fix"):
        replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    assert [s.to_json() for s in iter_samples(tmp_path / "run" / "samples")] == before  # nothing taken back or added


@pytest.mark.parametrize("change", ["edit", "remove", "filter"])
def test_a_published_sample_the_resumed_replay_does_not_build_again_stops_it(tmp_path, smol_tokenizer, change):
    """A record without an id is known by its content: edited, it is a new record, and its old sample (already
    published, so it would be trained) is found missing once all the input was read. Also a removed record,
    or one a changed filter now drops."""
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps(chat("5 #### 5")) + "\n" + json.dumps(chat("6")) + "\n")
    cfg = make_cfg(tmp_path, p)
    replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    lines = {"edit": [chat("5 #### 5"), chat("4 #### 4")], "remove": [chat("5 #### 5")], "filter": None}[change]
    if lines is not None:
        p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    else:
        cfg = make_cfg(tmp_path, p, require_pattern="####")
    with pytest.raises(
        ReplayError, match=r"1 sample\(s\) published by an earlier run .* not built .*Nothing was marked"
    ):
        replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    assert not is_done(tmp_path / "run" / "samples")


def test_sharegpt_roles_under_messages_are_named_in_the_filter_reason(tmp_path, smol_tokenizer):
    rows = [
        {"id": "sg", "messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]},
        {"id": "dev", "messages": [{"role": "user", "content": "q"}, {"role": "model", "content": "a"}]},
        chat("5", "ok"),
    ]
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(tmp_path, p)
    summary = replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    assert summary["filtered"] == {"no_assistant_turn": 2}
    rejects = {r["item_id"]: r["detail"] for r in read_jsonl(tmp_path / "run" / "rejects.jsonl")}
    assert '(its other roles: gpt, human; ShareGPT turns are read as a "conversations" list' in rejects["sg/0"]
    assert "(its other roles: model) (" in rejects["dev/0"] and "ShareGPT" not in rejects["dev/0"]


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("data.txt", "prompt,response\nHi,Hello\nHow are you,Fine\n", "looks like a CSV/TSV table"),
        ("data.tsv", "prompt\tresponse\nHi\tHello\n", "looks like a CSV/TSV table"),
        ("data.json", json.dumps(chat("5", "a"), indent=2) + "\n", "looks like pretty-printed JSON"),
    ],
)
def test_a_file_that_is_not_json_lines_is_named_with_the_conversion(tmp_path, smol_tokenizer, name, text, says):
    """A CSV or a pretty-printed JSON object: every line is bad; the error says what the file is
    (on_error fail: at line 1; skip: in the no-sample failure and in replay_rejects.jsonl, once)."""
    p = tmp_path / name
    p.write_text(text)
    for on_error in ("fail", "skip"):
        cfg = make_cfg(tmp_path, p, on_error=on_error)
        with pytest.raises(ReplayError) as e:
            replay(cfg, tmp_path / on_error, recon(smol_tokenizer, cfg), progress=False)
        assert says in str(e.value) and "Fix: the file " in str(e.value), str(e.value)
    bad = list(read_jsonl(tmp_path / "skip" / "replay_rejects.jsonl"))
    assert len(bad) == len(text.splitlines()) and sum(says in b["error"] for b in bad) == 1


@pytest.mark.parametrize("indent,says", [(2, "is one JSON array"), (None, "is one JSON array on one line")])
def test_a_json_array_file_stops_the_replay_with_the_conversion(tmp_path, smol_tokenizer, indent, says):
    p = tmp_path / "data.json"
    p.write_text(json.dumps([chat("5", "a"), chat("6", "b")], indent=indent) + "\n")
    for on_error in ("fail", "skip"):  # nothing in it is a record: skipping would skip it all
        cfg = make_cfg(tmp_path, p, on_error=on_error)
        with pytest.raises(ReplayError) as e:
            replay(cfg, tmp_path / on_error, recon(smol_tokenizer, cfg), progress=False)
        assert str(e.value).startswith(f"{p}: {says}, not JSON Lines"), str(e.value)
        assert f"jq -c '.[]' {p} > {tmp_path / 'data.jsonl'}" in str(e.value)


def test_a_json_lines_file_with_an_array_on_its_first_line_only_has_one_bad_record(tmp_path, smol_tokenizer):
    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps([chat("5", "a")]) + "\n" + json.dumps(chat("6", "b")) + "\n")
    cfg = make_cfg(tmp_path, p, on_error="skip")
    summary = replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    assert summary["samples"] == 1 and summary["bad_record_reasons"] == {"not_an_object": 1}


def test_an_input_path_holding_an_api_key_is_refused_without_showing_it(tmp_path, smol_tokenizer):
    """Input paths are printed and kept in every sample's provenance: a key in one would be too."""
    key = "sk-proj-YV5lCyi2yobbtTVVBlG8ULqJeZ5OBdcMidgbZMTp"
    folder = tmp_path / f"run-{key}"
    folder.mkdir()
    p = folder / "data.jsonl"
    p.write_text(json.dumps(chat("5", "a")) + "\n")
    from distill.core.config import ConfigError
    from orchestrator.replay import resolve_inputs

    with pytest.raises(ConfigError) as c:  # as orchestrator.source.path
        make_cfg(tmp_path, p)
    with pytest.raises(ReplayError) as e:  # as an input of distill replay CONFIG INPUT, or found in a folder
        resolve_inputs([str(folder)])
    for err in (c.value, e.value):
        assert "looks like an API key" in str(err) and key not in str(err)


def test_a_gzipped_file_without_the_gz_name_is_read_as_gzip(tmp_path, smol_tokenizer):
    import gzip

    p = tmp_path / "data.jsonl"
    p.write_bytes(gzip.compress((json.dumps(chat("5", "a")) + "\n" + json.dumps(chat("6", "b")) + "\n").encode()))
    cfg = make_cfg(tmp_path, p, on_error="fail")
    summary = replay(cfg, tmp_path / "run", recon(smol_tokenizer, cfg), progress=False)
    assert summary["samples"] == 2 and summary["bad_records"] == 0


def test_one_file_named_twice_is_read_once_and_a_missing_input_is_told_to_check_its_path(tmp_path, monkeypatch):
    from orchestrator.replay import resolve_inputs

    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps(chat("5", "a")) + "\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_inputs(["data.jsonl", "./data.jsonl", str(p), "*.jsonl"]) == ["data.jsonl"]
    with pytest.raises(ReplayError) as e:
        resolve_inputs(["nope.jsonl"])
    assert "nope.jsonl: does not exist. Fix: check the path" in str(e.value)
