"""The `distill` command line as a user runs it: subprocesses, real files, real tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def distill(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw
    )


def test_help_and_unknown_command():
    out = distill("--help")
    assert out.returncode == 0
    for cmd in ("run", "rollout", "replay", "train", "tokenize", "inspect", "probe", "report"):
        assert f"\n  {cmd} " in out.stdout
    bad = distill("fly")
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr


def test_tokenize_contract(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    """`distill tokenize`: one line per sample or per rejection, in input order."""
    lines = [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "  4, since 2+2=4."}]},
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hey"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ciao"},
            ]
        },
        "this line is not JSON",
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]},
        {"prompt": "no messages key"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    out_path = tmp_path / "out.jsonl"
    res = distill("tokenize", "--tokenizer", smol_tokenizer_dir, src, "-o", out_path)
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in out_path.read_text().splitlines()]
    ok = [o for o in out if "error" not in o]
    bad = [o for o in out if "error" in o]
    assert [o["line"] for o in ok] == [1, 2] and sorted(o["line"] for o in bad) == [3, 4, 5]
    for o in ok:
        assert {"prompt_ids", "completion_ids", "completion_mask"} <= set(o)
        assert len(o["completion_ids"]) == len(o["completion_mask"])
    # line 1: the prompt is tokenised alone; the trained tokens are the answer (leading spaces kept) + end token
    first = ok[0]
    prompt = smol_tokenizer.apply_chat_template(lines[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert smol_tokenizer.decode(first["prompt_ids"]) == prompt
    assert first["prompt_ids"] == smol_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert all(first["completion_mask"])
    assert smol_tokenizer.decode(first["completion_ids"]) == "  4, since 2+2=4.<|im_end|>"
    # line 2: two trained spans, the user turn between them is context
    second = ok[1]
    trained = smol_tokenizer.decode([t for t, m in zip(second["completion_ids"], second["completion_mask"]) if m])
    assert trained == "hey<|im_end|>ciao<|im_end|>"
    full = smol_tokenizer.apply_chat_template(lines[1]["messages"], tokenize=False)
    assert full.startswith(smol_tokenizer.decode(second["prompt_ids"] + second["completion_ids"]))
    assert all(o["error"].split(":")[0] for o in bad)


def test_inspect_and_html(tmp_path, smol_tokenizer_dir):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "<b>hi</b>"},
                    {"role": "assistant", "content": "hello & welcome"},
                ]
            }
        )
        + "\n"
    )
    tok_out = tmp_path / "tok.jsonl"
    assert distill("tokenize", "--tokenizer", smol_tokenizer_dir, src, "-o", tok_out).returncode == 0
    # make a samples dir through the contract writer
    from distill.core.contract import Sample, ShardWriter

    row = json.loads(tok_out.read_text().splitlines()[0])
    w = ShardWriter(tmp_path / "samples")
    w.add(
        Sample(
            sample_id="p/0",
            prompt_ids=row["prompt_ids"],
            completion_ids=row["completion_ids"],
            completion_mask=row["completion_mask"],
        )
    )
    w.close()
    html = tmp_path / "s.html"
    res = distill("inspect", tmp_path / "samples", "--tokenizer", smol_tokenizer_dir, "--html", html)
    assert res.returncode == 0, res.stderr
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout)
    assert "hello" in plain and "welcome" in plain and "p/0" in plain
    page = html.read_text()
    assert "<b>" not in page and "&lt;" in page  # user text is escaped, token by token
    body = page.split("<section>", 1)[1]  # after the legend
    assert len(re.findall(r'class="tok trained( o)?"', body)) == len(row["completion_ids"])
    missing = distill("inspect", tmp_path / "samples", "--tokenizer", smol_tokenizer_dir, "--index", "5")
    assert missing.returncode != 0 and "--index 5 out of range (0..0). Fix: pass --index from 0 to 0" in missing.stderr
    unknown = distill("inspect", tmp_path / "samples", "--tokenizer", smol_tokenizer_dir, "--id", "nope")
    assert unknown.returncode != 0 and "no sample with id 'nope' among the 1. Fix:" in unknown.stderr
    # tokenize's output is inspected as it is: each sample named after its input line
    direct = distill("inspect", tok_out, "--tokenizer", smol_tokenizer_dir, "--no-color")
    assert direct.returncode == 0 and "line1" in direct.stdout and "welcome" in direct.stdout, direct.stderr
    # the input (conversations, not samples) and a missing path are named with the fix
    conv = distill("inspect", src, "--tokenizer", smol_tokenizer_dir)
    assert conv.returncode == 1 and "a line with 'messages' is a conversation" in conv.stderr, conv.stderr
    gone = distill("inspect", tmp_path / "nope", "--tokenizer", smol_tokenizer_dir)
    assert gone.returncode == 1 and "nope does not exist. Fix:" in gone.stderr


def test_probe_prints_what_the_endpoint_supports():
    from support.fault_server import FaultServer

    with FaultServer(reasoning=True) as server:
        res = distill("probe", server.base_url, "--model", "fault-teacher")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["feature", "result", "detail"]
    rows = {line.split("  ")[0].strip(): line for line in lines[2:] if line.strip()}
    assert "yes" in rows["models list"] and "fault-teacher" in rows["models list"]
    assert any(k.startswith("reasoning") and "yes" in v for k, v in rows.items()), res.stdout
    missing = distill("probe", server.base_url, "--model", "m", "--api-key-var", "DISTILL_TEST_UNSET_VAR")
    assert missing.returncode != 0 and "DISTILL_TEST_UNSET_VAR" in missing.stderr


def test_report_writes_a_png_and_a_summary(tmp_path):
    metrics = [
        {
            "step": i,
            "loss": 2.0 / i,
            "trained_tokens": 100,
            "tokens": 300,
            "tokens_per_s": 50.0 + i,
            "lr": 1e-4,
            "grad_norm": 1.0,
            "packing_efficiency": 1.0,
            "samples_seen": 4 * i,
        }
        for i in range(1, 6)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    res = distill("report", tmp_path)
    assert res.returncode == 0, res.stderr
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "2.0000 (step 1) -> 0.4000 (step 5)" in res.stdout and str(png) in res.stdout


def test_a_damaged_or_newer_shard_is_one_message_not_a_traceback(tmp_path, smol_tokenizer_dir):
    shard = tmp_path / "samples" / "shard-000000.jsonl"
    shard.parent.mkdir()
    for text, expected in [
        ('{"bad json\n', "edited or corrupted by hand"),
        ('{"version": 9, "sample_id": "x"}\n', "written by a newer distill"),
        ('{"sample_id": "x"}\n', "missing field"),
    ]:
        shard.write_text(text)
        out = distill("inspect", tmp_path, "--tokenizer", smol_tokenizer_dir)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"{shard}:1" in out.stderr and expected in out.stderr


def test_tokenize_a_batch_output_file_with_its_input_file(tmp_path, smol_tokenizer_dir):
    """--batch-input, or the config's orchestrator.replay.batch_input: the Batch API output's requests."""
    body = {"model": "m", "messages": [{"role": "user", "content": "Q"}]}
    (tmp_path / "in.jsonl").write_text(json.dumps({"custom_id": "a", "body": body}) + "\n")
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"}]}
    out = {"id": "r", "custom_id": "a", "response": {"status_code": 200, "body": answer}, "error": None}
    (tmp_path / "out.jsonl").write_text(json.dumps(out) + "\n")
    (tmp_path / "c.toml").write_text(f'[orchestrator.replay]\nbatch_input = "{tmp_path / "in.jsonl"}"\n')
    base = ("tokenize", "--tokenizer", smol_tokenizer_dir, tmp_path / "out.jsonl", "-o", tmp_path / "t.jsonl")
    for extra in (("--batch-input", tmp_path / "in.jsonl"), ("--config", tmp_path / "c.toml")):
        res = distill(*base, *extra)
        assert res.returncode == 0 and json.loads(res.stdout)["samples"] == 1, res.stderr
    res = distill(*base)
    assert res.returncode == 1 and "--batch-input" in (tmp_path / "t.jsonl").read_text()
