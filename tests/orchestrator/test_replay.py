"""Offline replay: formats, filters, determinism, two student tokenizers, bad records, no network.

Everything runs the real Reconstructor with the real SmolLM2 tokenizer (and a second
tokenizer built from it with a Llama-3-style chat template), on real files.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.helpers import read_jsonl

from distill.core.config import ConfigError, load_config
from distill.core.contract import DONE_FILE, is_done, iter_samples, list_shards
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import ReplayError, iter_conversations, replay, resolve_inputs

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
RECORDING = DATA / "recording.jsonl"

LLAMA3_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif -%}"
)


def make_cfg(tmp_path: Path, path: str | Path = RECORDING, fmt: str = "auto", **replay_keys):
    return load_config(
        None,
        {
            "output_dir": str(tmp_path),
            "orchestrator": {
                "source": {"type": "replay", "path": str(path), "format": fmt},
                "replay": replay_keys,
                "samples_per_shard": 4,
            },
        },
    )


def make_recon(tok, cfg):
    return Reconstructor(tok, cfg.orchestrator.reconstruction, cfg.orchestrator.reconstruction.max_seq_len)


def write_jsonl(path: Path, rows: list, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def chat_row(answer: str, question: str = "What is 2 + 3?", **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def trained_text(tok, s) -> str:
    return tok.decode([t for t, m in zip(s.completion_ids, s.completion_mask) if m])


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory, smol_tokenizer_dir):
    """A second, different student tokenizer: SmolLM2's vocabulary plus Llama-3-style header
    tokens, and a Llama-3-style chat template (no default system prompt)."""
    from distill.core.student import load_tokenizer

    d = tmp_path_factory.mktemp("llama3-style-tokenizer")
    tok = load_tokenizer(smol_tokenizer_dir)
    tok.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(d)
    return load_tokenizer(d)


# SmolLM2's own template renders neither `tools` nor `tool_calls`; this ChatML variant does.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% for call in message.tool_calls or [] %}<tool_call>{{ call.function | tojson }}</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tools_tokenizer(tmp_path_factory, smol_tokenizer_dir):
    from distill.core.student import load_tokenizer

    d = tmp_path_factory.mktemp("chatml-tools-tokenizer")
    tok = load_tokenizer(smol_tokenizer_dir)
    tok.chat_template = TOOLS_TEMPLATE
    tok.save_pretrained(d)
    return load_tokenizer(d)


# ---------------------------------------------------------------------------
# The shipped example, end to end
# ---------------------------------------------------------------------------


def test_example_config_replays_the_shipped_recording(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.chdir(ROOT)  # the example's paths are relative to the repository root
    cfg = load_config(ROOT / "examples" / "replay.toml", {"output_dir": str(tmp_path)})
    summary = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)

    records = read_jsonl(RECORDING)
    assert summary["records"] == len(records) == 20
    assert summary["formats"] == {"recording": 20}
    # one truncated answer, one scored wrong (reward 0.0); nothing unreadable
    assert summary["filtered"] == {"truncated": 1, "min_reward": 1}
    assert summary["bad_records"] == 0 and summary["rejected"] == {}
    samples = list(iter_samples(tmp_path / "samples"))
    assert summary["samples"] == summary["samples_total"] == len(samples) == 18
    assert is_done(tmp_path / "samples")
    assert json.loads((tmp_path / "samples" / DONE_FILE).read_text()) == {"shards": 3, "samples": 18}

    by_id = {f"{r['prompt_id']}/{r['sample_index']}": r for r in records}
    dropped = {r["item_id"]: r["reason"] for r in read_jsonl(tmp_path / "rejects.jsonl")}
    assert dropped == {"gsm-012/1": "truncated", "gsm-006/1": "min_reward"}
    assert {s.sample_id for s in samples} == set(by_id) - set(dropped)
    for s in samples:
        r = by_id[s.sample_id]
        assert (s.prompt_id, s.sample_index, s.finish_reason, s.teacher_model, s.reward) == (
            r["prompt_id"],
            r["sample_index"],
            r["finish_reason"],
            r["model"],
            r["reward"],
        )
        assert s.meta["format"] == "recording" and s.meta["line"] == records.index(r) + 1
        # the student trains on exactly the teacher's assistant text, each turn closed by its end token
        assistant = [m["content"] for m in r["messages"] if m["role"] == "assistant"] + [r["response"]["content"]]
        assert trained_text(smol_tokenizer, s) == "".join(a + "<|im_end|>" for a in assistant)
        # and the prompt is what the student sees at inference, ending with the generation prompt
        assert smol_tokenizer.decode(s.prompt_ids).endswith(
            r["messages"][0]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
        )
    multi = next(s for s in samples if s.sample_id == "gsm-001-followup/0")
    assert multi.meta["turns"] == 2 and 0 in multi.completion_mask  # the follow-up question is context
    assert json.loads((tmp_path / "replay_summary.json").read_text())["samples"] == 18


def test_replay_is_byte_identical_when_repeated(tmp_path, smol_tokenizer):
    outs = []
    for name in ("a", "b"):
        run = tmp_path / name
        cfg = make_cfg(run, min_reward=0.5)
        replay(cfg, run, make_recon(smol_tokenizer, cfg), progress=False)
        outs.append(run)
    a, b = outs
    files = sorted(p.name for p in (a / "samples").iterdir())
    assert files == sorted(p.name for p in (b / "samples").iterdir()) and len(list_shards(a / "samples")) > 1
    for name in files:
        assert (a / "samples" / name).read_bytes() == (b / "samples" / name).read_bytes(), name
    assert (a / "rejects.jsonl").read_bytes() == (b / "rejects.jsonl").read_bytes()


def test_one_recording_replays_for_two_different_student_tokenizers(tmp_path, smol_tokenizer, llama3_tokenizer):
    results = {}
    for name, tok in (("chatml", smol_tokenizer), ("llama3", llama3_tokenizer)):
        cfg = make_cfg(tmp_path / name)
        replay(cfg, tmp_path / name, make_recon(tok, cfg), progress=False)
        results[name] = {s.sample_id: s for s in iter_samples(tmp_path / name / "samples")}
    chatml, llama3 = results["chatml"], results["llama3"]
    assert set(chatml) == set(llama3) and len(chatml) == 19  # all but the truncated one
    records = {f"{r['prompt_id']}/{r['sample_index']}": r for r in read_jsonl(RECORDING)}
    for sid, s in llama3.items():
        r = records[sid]
        full = llama3_tokenizer.decode(s.prompt_ids + s.completion_ids)
        assert full == llama3_tokenizer.apply_chat_template(
            r["messages"] + [{"role": "assistant", "content": r["response"]["content"]}], tokenize=False
        )
        assert "<|im_start|>" not in full and "SmolLM" not in full  # no trace of the other template
        assert trained_text(llama3_tokenizer, s).endswith(r["response"]["content"] + "<|eot_id|>")
        # same messages, different tokens
        assert s.prompt_ids != chatml[sid].prompt_ids
        assert trained_text(smol_tokenizer, chatml[sid]).endswith(r["response"]["content"] + "<|im_end|>")
    eot = llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot >= len(smol_tokenizer)  # a token id the first student does not even have
    assert all(eot in s.completion_ids for s in llama3.values())


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------


def test_chat_sharegpt_and_batch_formats(tmp_path, tools_tokenizer):
    cfg = make_cfg(tmp_path, batch_input=str(DATA / "batch_input.jsonl"))
    summary = replay(
        cfg,
        tmp_path,
        make_recon(tools_tokenizer, cfg),
        progress=False,
        inputs=[str(DATA / n) for n in ("chat.jsonl", "sharegpt.jsonl", "batch_output.jsonl")],
    )
    assert summary["formats"] == {"chat": 3, "sharegpt": 3, "openai_batch": 3}
    assert summary["filtered"] == {"batch_error": 1} and summary["rejected"] == {}
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "samples")}
    assert summary["samples"] == len(samples) == 8
    # ids: given ids, a content hash when there is none, custom_id for batch answers
    assert {"chat-1/0", "chat-tool/0", "sg-1/0", "sg-2/0", "sg-tool/0", "req-3/0", "req-8/0"} <= set(samples)
    hashed = [sid for sid in samples if sid.startswith("h")]
    assert len(hashed) == 1 and len(hashed[0]) == len("h") + 16 + len("/0")

    # ShareGPT function_call / observation turns became a tool call and its result
    tool_conv = next(c for c in iter_conversations([str(DATA / "sharegpt.jsonl")]) if c.prompt_id == "sg-tool")
    assert [m["role"] for m in tool_conv.messages] == ["user", "assistant", "tool", "assistant"]
    call = tool_conv.messages[1]["tool_calls"][0]
    assert call["function"] == {"name": "calculator", "arguments": json.dumps({"expression": "12 * 12"})}
    assert tool_conv.messages[2]["tool_call_id"] == call["id"] and tool_conv.tools[0]["name"] == "calculator"
    sg2 = next(c for c in iter_conversations([str(DATA / "sharegpt.jsonl")]) if c.prompt_id == "sg-2")
    assert sg2.messages[0] == {"role": "system", "content": "You are a careful maths tutor."}
    # ... and the student trains on the calls: tool name and arguments, then the final answer
    for sid, args, answer in (("sg-tool/0", "12 * 12", "12 * 12 = 144"), ("chat-tool/0", "17 * 23", "17 * 23 = 391")):
        text = tools_tokenizer.decode(
            [t for t, m in zip(samples[sid].completion_ids, samples[sid].completion_mask) if m]
        )
        assert text == (
            '<tool_call>{"name": "calculator", "arguments": {"expression": "%s"}}</tool_call><|im_end|>'
            "%s<|im_end|>" % (args, answer)
        )
        assert "Tools: [" in tools_tokenizer.decode(samples[sid].prompt_ids)

    # the batch answer was paired with its request (output order differs from input order)
    inputs = {r["custom_id"]: r for r in read_jsonl(DATA / "batch_input.jsonl")}
    s = samples["req-8/0"]
    prompt = tools_tokenizer.decode(s.prompt_ids)
    assert inputs["req-8"]["body"]["messages"][1]["content"] in prompt
    assert "<|im_start|>system\nYou are a careful maths tutor." in prompt  # "developer" is the system prompt
    assert s.teacher_model == "gpt-4o-mini"


def test_batch_output_without_its_input_file_says_so(tmp_path, smol_tokenizer):
    cfg = make_cfg(tmp_path, DATA / "batch_output.jsonl", on_error="skip")
    with pytest.raises(ReplayError) as e:
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    msg = str(e.value)
    assert "batch_output.jsonl:1" in msg and "INPUT file" in msg and "orchestrator.replay.batch_input" in msg
    # handing the INPUT file as the thing to replay is named as such
    cfg = make_cfg(tmp_path, DATA / "batch_input.jsonl")
    with pytest.raises(ReplayError, match=r"batch_input.jsonl:1: field 'custom_id': .*Batch API INPUT line"):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    # an answer whose request is not in the input file
    out = write_jsonl(
        tmp_path / "out.jsonl",
        [
            {
                "custom_id": "nope",
                "response": {
                    "status_code": 200,
                    "body": {"choices": [{"message": {"role": "assistant", "content": "x"}}]},
                },
            }
        ],
    )
    cfg = make_cfg(tmp_path, out, batch_input=str(DATA / "batch_input.jsonl"))
    with pytest.raises(ReplayError, match=r"out.jsonl:1: field 'custom_id': 'nope' is not in the batch input"):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)


def test_auto_detects_the_format_per_line_and_globs(tmp_path, smol_tokenizer):
    rec = read_jsonl(RECORDING)[0]
    (tmp_path / "in").mkdir()
    mixed = write_jsonl(
        tmp_path / "in" / "mixed-1.jsonl",
        [
            rec,
            chat_row("2 + 3 = 5", id="c"),
            {"id": "s", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        ],
    )
    write_jsonl(tmp_path / "in" / "mixed-2.jsonl", [chat_row("4", question="2 + 2?", id="d")])
    assert resolve_inputs([str(tmp_path / "in" / "*.jsonl")]) == [str(mixed), str(tmp_path / "in" / "mixed-2.jsonl")]
    assert resolve_inputs([str(tmp_path / "in")]) == resolve_inputs([str(tmp_path / "in" / "mixed-*.jsonl")])
    cfg = make_cfg(tmp_path / "run", tmp_path / "in" / "*.jsonl")
    summary = replay(cfg, tmp_path / "run", make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["formats"] == {"recording": 1, "chat": 2, "sharegpt": 1} and summary["samples"] == 4
    # an explicit format parses every line as that format
    cfg = make_cfg(tmp_path / "run2", mixed, fmt="chat", on_error="skip")
    summary = replay(cfg, tmp_path / "run2", make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["formats"] == {"chat": 2} and summary["bad_records"] == 1  # the ShareGPT line
    assert [(b["line"], b["field"]) for b in read_jsonl(tmp_path / "run2" / "replay_rejects.jsonl")] == [
        (3, "messages")
    ]
    with pytest.raises(ReplayError, match="no file matches"):
        resolve_inputs([str(tmp_path / "nothing-*.jsonl")])
    with pytest.raises(ReplayError, match="does not exist"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])


def test_a_lone_surrogate_is_one_rejection_not_a_failed_run(tmp_path, smol_tokenizer):
    # json.dumps writes a lone surrogate as "\\ud83d"; such a conversation (no id: its id is
    # a hash of its content) is rejected with its reason and the rest of its batch is built.
    rows = [chat_row(f"{i} + 3", id=f"r{i}") for i in range(5)]
    rows.insert(2, chat_row("cut emoji \ud83d"))
    cfg = make_cfg(tmp_path / "run", write_jsonl(tmp_path / "in.jsonl", rows))
    summary = replay(cfg, tmp_path / "run", make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["samples"] == 5 and summary["rejected"] == {"invalid_text": 1}


# ---------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------


def test_each_filter_is_applied_and_counted(tmp_path, smol_tokenizer):
    three_turns = {
        "messages": [
            {"role": "user", "content": "a?"},
            {"role": "assistant", "content": "A. #### 1"},
            {"role": "user", "content": "b?"},
            {"role": "assistant", "content": "B. #### 2"},
            {"role": "user", "content": "c?"},
            {"role": "assistant", "content": "C. #### 3"},
        ],
        "id": "three-turns",
    }
    rows = [
        chat_row("5 #### 5", id="keep", reward=1.0),
        chat_row("5 #### 5", id="unscored"),
        chat_row("2 + 3 = 5, and the", id="cut", finish_reason="length"),
        chat_row("6 #### 6", id="wrong", reward=0.0),
        three_turns,
        {
            "id": "tool",
            "messages": [
                {"role": "user", "content": "2+3?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "c0", "type": "function", "function": {"name": "calc", "arguments": '{"e": "2+3"}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c0", "content": "5"},
                {"role": "assistant", "content": "5 #### 5"},
            ],
        },
        chat_row("As an AI language model, 5 #### 5", id="boilerplate"),
        chat_row("five", id="no-final"),
        {"id": "no-answer", "messages": [{"role": "user", "content": "hello?"}]},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = make_cfg(
        tmp_path,
        inp,
        min_reward=0.5,
        max_turns=2,
        allowed_roles=["system", "user", "assistant"],
        drop_pattern=r"(?i)as an ai language model",
        require_pattern=r"####\s*\d+",
    )
    summary = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["filtered"] == {
        "drop_pattern": 1,
        "max_turns": 1,
        "min_reward": 1,
        "no_assistant_turn": 1,
        "require_pattern": 1,
        "role": 1,
        "truncated": 1,
    }
    assert {s.sample_id for s in iter_samples(tmp_path / "samples")} == {"keep/0", "unscored/0"}
    rejects = {r["item_id"]: r for r in read_jsonl(tmp_path / "rejects.jsonl")}
    assert rejects["tool/0"]["reason"] == "role" and "'tool'" in rejects["tool/0"]["detail"]
    assert rejects["wrong/0"]["detail"].endswith("(%s:4)" % inp)

    # missing_reward = drop; drop_truncated = false hands truncated answers to reconstruction's policy
    run = tmp_path / "b"
    cfg = make_cfg(run, inp, min_reward=0.5, missing_reward="drop", drop_truncated=False)
    summary = replay(cfg, run, make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["filtered"] == {"missing_reward": 6, "min_reward": 1, "no_assistant_turn": 1}
    assert {s.sample_id for s in iter_samples(run / "samples")} == {"keep/0"}

    run = tmp_path / "c"
    cfg = load_config(
        None,
        {
            "orchestrator": {
                "source": {"type": "replay", "path": str(inp)},
                "replay": {"drop_truncated": False},
                "reconstruction": {"truncated": "keep"},
            }
        },
    )
    summary = replay(cfg, run, make_recon(smol_tokenizer, cfg), progress=False)
    cut = next(s for s in iter_samples(run / "samples") if s.sample_id == "cut/0")
    assert cut.finish_reason == "length" and cut.meta.get("truncated_turn") is True
    assert trained_text(smol_tokenizer, cut) == "2 + 3 = 5, and the"  # no end token: the answer was cut


def test_limit_and_column_mapping(tmp_path, smol_tokenizer):
    rows = [
        {
            "uid": f"q{i}",
            "dialog": [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}],
            "score": i / 10,
        }
        for i in range(10)
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = make_cfg(tmp_path, inp, columns={"messages": "dialog", "id": "uid", "reward": "score"}, limit=4)
    summary = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    samples = list(iter_samples(tmp_path / "samples"))
    assert summary["records"] == 4 and [s.sample_id for s in samples] == ["q0/0", "q1/0", "q2/0", "q3/0"]
    assert [s.reward for s in samples] == [0.0, 0.1, 0.2, 0.3]
    # an unknown name is the config's error (exit 2, before anything is written)
    with pytest.raises(ConfigError, match=r"orchestrator.replay.columns: unknown field name\(s\) \['message'\]"):
        make_cfg(tmp_path, inp, columns={"message": "dialog"})
    # ... and replay's own check still refuses a mapping edited in place after validation
    cfg.orchestrator.replay.columns["message"] = "dialog"
    with pytest.raises(ValueError, match=r"orchestrator.replay.columns: unknown field name\(s\) \['message'\]"):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    # a mapped column missing from a record is named by both names
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"uid": "x", "dialogue": []}])
    cfg = make_cfg(tmp_path, bad, fmt="chat", columns={"messages": "dialog"})
    with pytest.raises(ReplayError, match=r"bad.jsonl:1: field \"messages \(column 'dialog'\)\""):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)


def test_invalid_filter_regex_is_a_config_error():
    with pytest.raises(ConfigError, match=r"orchestrator.replay.drop_pattern: .*not a valid Python regular"):
        load_config(None, {"orchestrator": {"replay": {"drop_pattern": "(unclosed"}}})


# ---------------------------------------------------------------------------
# Bad records
# ---------------------------------------------------------------------------


def bad_input(tmp_path: Path) -> Path:
    rows = [
        json.dumps(chat_row("5", id="ok-1")),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"content": "no role"}]}),
        json.dumps({"messages": "should be a list"}),
        json.dumps([1, 2]),
        json.dumps({"text": "unknown format"}),
        json.dumps(chat_row("6", id="ok-2")),
    ]
    p = tmp_path / "bad.jsonl"
    # the last line was cut off mid-write: no newline, not valid JSON
    p.write_text("\n".join(rows) + "\n" + json.dumps(chat_row("7", id="torn"))[:25], encoding="utf-8")
    return p


def test_bad_record_fails_with_file_line_and_field(tmp_path, smol_tokenizer):
    p = bad_input(tmp_path)
    cfg = make_cfg(tmp_path, p)  # on_error = "fail" is the default
    with pytest.raises(ReplayError) as e:
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    assert (e.value.file, e.value.line) == (str(p), 2) and str(e.value).startswith(f"{p}:2: not valid JSON")
    assert not is_done(tmp_path / "samples")  # a failed replay does not claim to be complete
    p.write_text("\n".join(p.read_text().splitlines()[2:3]) + "\n")
    with pytest.raises(ReplayError, match=r"bad.jsonl:1: field 'messages\[1\].role': expected a role string"):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)


def test_bad_records_skipped_and_listed(tmp_path, smol_tokenizer, capsys):
    p = bad_input(tmp_path)
    cfg = make_cfg(tmp_path, p, on_error="skip")
    summary = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    assert {s.sample_id for s in iter_samples(tmp_path / "samples")} == {"ok-1/0", "ok-2/0"}
    assert (summary["records"], summary["bad_records"], summary["bad_lines"], summary["partial_last_lines"]) == (
        8,
        6,
        5,
        1,
    )
    listed = read_jsonl(tmp_path / "replay_rejects.jsonl")
    assert [(b["file"], b["line"], b["field"], b["partial"]) for b in listed] == [
        (str(p), 2, None, False),
        (str(p), 3, "messages[1].role", False),
        (str(p), 4, "messages", False),
        (str(p), 5, None, False),
        (str(p), 6, None, False),
        (str(p), 8, None, True),
    ]
    assert "cannot tell the format" in listed[4]["error"] and "orchestrator.replay.columns" in listed[4]["error"]
    assert len(summary["bad_record_examples"]) == 5
    assert "half-written last line" in capsys.readouterr().err


def test_half_written_last_line_is_tolerated_even_with_on_error_fail(tmp_path, smol_tokenizer):
    p = write_jsonl(tmp_path / "rec.jsonl", read_jsonl(RECORDING)[:3], tail=json.dumps(read_jsonl(RECORDING)[3])[:100])
    cfg = make_cfg(tmp_path, p, on_error="fail")
    summary = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["samples"] == 3 and summary["partial_last_lines"] == 1 and summary["bad_lines"] == 0
    assert read_jsonl(tmp_path / "replay_rejects.jsonl")[0]["line"] == 4
    assert is_done(tmp_path / "samples")
    # a complete last line without its newline is a normal record
    p.write_text(p.read_text()[:-100] + json.dumps(read_jsonl(RECORDING)[3]))
    summary = replay(cfg, tmp_path / "again", make_recon(smol_tokenizer, cfg), progress=False)
    assert summary["samples"] == 4 and summary["partial_last_lines"] == 0


@pytest.mark.parametrize("tail", ['{"messages": [{"role": "user", "content": "Q"}]}}', '{"messages" []}'])
def test_a_last_line_with_a_typo_is_a_bad_record_not_a_half_written_one(tmp_path, smol_tokenizer, tail):
    """No newline at the end and not valid JSON, but no writer could have stopped there (it cannot be
    completed): a hand-written file's typo, which fails a `fail` replay instead of being skipped."""
    p = write_jsonl(tmp_path / "rec.jsonl", read_jsonl(RECORDING)[:3], tail=tail)
    cfg = make_cfg(tmp_path, p, on_error="fail")
    with pytest.raises(ReplayError) as e:
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    assert (e.value.line, e.value.reason) == (4, "invalid_json") and "not valid JSON" in str(e.value)
    assert not is_done(tmp_path / "samples")
    skip = make_cfg(tmp_path, p, on_error="skip")
    summary = replay(skip, tmp_path / "skip", make_recon(smol_tokenizer, skip), progress=False)
    assert (summary["bad_lines"], summary["partial_last_lines"], summary["samples"]) == (1, 0, 3)


def test_newer_recording_version_is_refused(tmp_path, smol_tokenizer):
    rec = dict(read_jsonl(RECORDING)[0], v=2)
    cfg = make_cfg(tmp_path, write_jsonl(tmp_path / "r.jsonl", [rec]))
    with pytest.raises(ReplayError, match=r"r.jsonl:1: field 'v': recording version 2 is newer.*upgrade distill"):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)


# ---------------------------------------------------------------------------
# Resume, datasets, no network, CLI
# ---------------------------------------------------------------------------


def test_resumed_replay_writes_only_what_is_missing(tmp_path, smol_tokenizer):
    cfg = make_cfg(tmp_path)
    first = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    samples = tmp_path / "samples"
    want = [s.to_json() for s in iter_samples(samples)]
    # crash after two shards: later shards and DONE are gone
    for p in list_shards(samples)[2:]:
        p.unlink()
    (samples / DONE_FILE).unlink()
    again = replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)
    assert again["already_published"] == 8 and again["samples"] == first["samples"] - 8
    assert sorted(s.to_json() for s in iter_samples(samples)) == sorted(want) and is_done(samples)


def test_duplicate_ids_keep_the_first_record_in_fresh_and_resumed_runs(tmp_path, smol_tokenizer):
    # Exact duplicate rows share a content-hash id; two records may also carry the same `id`.
    path = write_jsonl(
        tmp_path / "dups.jsonl",
        [
            chat_row("5."),
            chat_row("Five."),
            chat_row("5."),  # line 3 repeats line 1
            chat_row("A", question="Q1", id="q"),
            chat_row("B", question="Q2", id="q"),  # line 5 reuses line 4's id
        ],
    )
    cfg = make_cfg(tmp_path / "run", path)
    first = replay(cfg, tmp_path / "run", make_recon(smol_tokenizer, cfg), progress=False)
    assert first["samples"] == 3 and first["filtered"] == {"duplicate_id": 2}
    kept = {s.sample_id: trained_text(smol_tokenizer, s) for s in iter_samples(tmp_path / "run" / "samples")}
    assert kept["q/0"] == "A<|im_end|>" and sorted(kept.values()) == ["5.<|im_end|>", "A<|im_end|>", "Five.<|im_end|>"]
    rejects = read_jsonl(tmp_path / "run" / "rejects.jsonl")
    assert [r["reason"] for r in rejects] == ["duplicate_id", "duplicate_id"]
    assert "dups.jsonl:1" in rejects[0]["detail"] and "dups.jsonl:4" in rejects[1]["detail"]
    # Resumed (as after a crash): the same records win, nothing is written twice.
    (tmp_path / "run" / "samples" / DONE_FILE).unlink()
    again = replay(cfg, tmp_path / "run", make_recon(smol_tokenizer, cfg), progress=False)
    assert again["already_published"] == 3 and again["samples"] == 0 and again["filtered"] == {"duplicate_id": 2}


def test_parquet_through_datasets_matches_jsonl(tmp_path, smol_tokenizer):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {
            "conv_id": f"p{i}",
            "conv": [
                {"role": "user", "content": f"What is {i} * 3?"},
                {"role": "assistant", "content": f"{i} * 3 = {3 * i}\n#### {3 * i}"},
            ],
            "score": 1.0 if i % 3 else 0.0,
        }
        for i in range(12)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    write_jsonl(tmp_path / "data.jsonl", rows)
    got = {}
    for name, fmt in (("data.parquet", "auto"), ("data.jsonl", "dataset"), ("data.jsonl", "chat")):
        run = tmp_path / f"run-{name}-{fmt}"
        cfg = make_cfg(
            run,
            tmp_path / name,
            fmt=fmt,
            min_reward=0.5,
            columns={"messages": "conv", "id": "conv_id", "reward": "score"},
        )
        summary = replay(cfg, run, make_recon(smol_tokenizer, cfg), progress=False)
        assert summary["filtered"] == {"min_reward": 4} and summary["samples"] == 8
        got[(name, fmt)] = [
            (s.sample_id, s.prompt_ids, s.completion_ids, s.completion_mask, s.reward)
            for s in iter_samples(run / "samples")
        ]
    assert got[("data.parquet", "auto")] == got[("data.jsonl", "dataset")] == got[("data.jsonl", "chat")]


def test_a_csv_file_is_read_as_a_table_under_auto(tmp_path, smol_tokenizer):
    """A .csv is never JSON Lines: format auto reads it through `datasets`, its rows detected like
    JSONL records (it was one invalid_json per line)."""
    pytest.importorskip("datasets")
    import csv

    rows = [
        {"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}, so the answer is {i + 1}."} for i in range(5)
    ]
    with open(tmp_path / "data.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["prompt", "completion"])
        w.writeheader()
        w.writerows(rows)
    write_jsonl(tmp_path / "data.jsonl", rows)
    got = {}
    for name in ("data.csv", "data.jsonl"):
        run = tmp_path / f"run-{name}"
        cfg = make_cfg(run, tmp_path / name)
        summary = replay(cfg, run, make_recon(smol_tokenizer, cfg), progress=False)
        assert summary["samples"] == 5 and summary["bad_records"] == 0, summary
        got[name] = [(s.prompt_ids, s.completion_ids, s.completion_mask) for s in iter_samples(run / "samples")]
    assert got["data.csv"] == got["data.jsonl"]


def test_missing_datasets_library_is_a_clear_error(tmp_path, smol_tokenizer, monkeypatch):
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    cfg = make_cfg(tmp_path, tmp_path / "data.parquet")
    with pytest.raises(
        ReplayError,
        match=r"data.parquet: reading Parquet .* needs the `datasets` library.*"
        r"Fix: pip install datasets",
    ):
        replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False)


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a socket or resolve a name raises; returns the list of attempts."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse(*args)

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_replay_and_training_need_no_network(tmp_path, tiny_student_dir, no_network):
    """Tokenizer loading, replay and a few training steps on the replayed samples, with every
    way to open a socket disabled."""
    attempts = no_network
    from distill.core.student import load_tokenizer
    from trainer.train import train

    tok = load_tokenizer(tiny_student_dir)
    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path),
            "student": {"path": str(tiny_student_dir)},
            "orchestrator": {
                "source": {"type": "replay", "path": str(RECORDING)},
                "replay": {"batch_input": str(DATA / "batch_input.jsonl")},
            },
            "trainer": {"max_steps": 2, "samples_per_step": 4, "seq_len": 512, "device": "cpu"},
        },
    )
    summary = replay(
        cfg, tmp_path, make_recon(tok, cfg), progress=True, inputs=[str(RECORDING), str(DATA / "batch_output.jsonl")]
    )
    assert summary["samples"] == 19 + 2
    result = train(cfg, tmp_path, progress=False)
    assert result["steps"] == 2 and result["final_loss"] > 0
    assert attempts == []


def test_distill_replay_cli(tmp_path):
    """`distill replay CONFIG` (the lead's CLI) drives this module end to end in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "replay", "examples/replay.toml", "--output_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replay:" in proc.stdout and "samples=18" in proc.stdout
    assert len(list(iter_samples(tmp_path / "samples"))) == 18 and is_done(tmp_path / "samples")
    shutil.rmtree(tmp_path / "samples")


def test_distill_replay_names_openings_kept_as_untrained_context(tmp_path):
    """A chat dataset whose conversations open with the assistant's greeting, for a student whose template gives
    no prompt before a first message (Tulu 3 / OLMo 2's, set by student.chat_template): the greeting is kept as
    untrained context, the answers after it trained, and `distill replay` says how many conversations that was."""
    greeting = {"role": "assistant", "content": "Hello! Ask me anything."}
    rows = [
        {"messages": [greeting, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = tmp_path / "replay.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / "run"}"\n[student]\npath = "builtin:smollm2-135m-instruct"\n'
        f'chat_template = "{ROOT / "tests" / "templates" / "olmo2_tulu.jinja"}"\n'
        f'[orchestrator.source]\ntype = "replay"\npath = "{data}"\n',
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "replay", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "replay: 2 records = 2 trained + 0 filtered + 0 rejected + 0 bad; conversations whose opening assistant "
        "message was kept as untrained context (the student's template gives no prompt before a first message; "
        "docs/reconstruction.md, Rejection reasons, template_error): 1" in proc.stdout
    ), proc.stdout
    assert len(list(iter_samples(tmp_path / "run" / "samples"))) == 2


def test_max_ahead_waits_for_the_trainer(tmp_path, smol_tokenizer):
    """With max_ahead (what `distill run` passes), replay stays at most that far ahead of CONSUMED."""
    import threading

    from distill.core.contract import write_consumed

    cfg = make_cfg(tmp_path)  # 4 samples per shard, 19 samples
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(
            replay(cfg, tmp_path, make_recon(smol_tokenizer, cfg), progress=False, max_ahead=4)
        )
    )
    t.start()
    samples = tmp_path / "samples"
    deadline = time.time() + 30
    while len(list_shards(samples)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(list_shards(samples)) == 2 and t.is_alive()  # 8 published, 0 consumed: waiting
    write_consumed(samples, 8)
    while len(list_shards(samples)) < 4 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(list_shards(samples)) == 4 and t.is_alive()
    write_consumed(samples, 100)
    t.join(timeout=30)
    assert not t.is_alive() and result["samples"] == 19 and is_done(samples)


def test_gzip_inputs_replay_like_plain_ones_and_a_cut_stream_is_tolerated(tmp_path, smol_tokenizer):
    import gzip

    # long answers so the cut below lands well inside the data
    rows = [
        dict(r, response=dict(r["response"], content=r["response"]["content"] + " " + "x" * 2000))
        for r in read_jsonl(RECORDING)
        if r["finish_reason"] == "stop"
    ]
    plain = write_jsonl(tmp_path / "rec.jsonl", rows)
    packed = gzip.compress(plain.read_bytes(), mtime=0)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "rec.jsonl.gz").write_bytes(packed)
    got = {}
    for name, path in (("plain", plain), ("gz", tmp_path / "gz")):  # a folder picks up .jsonl.gz files
        cfg = make_cfg(tmp_path / f"run-{name}", path, on_error="fail")
        summary = replay(cfg, tmp_path / f"run-{name}", make_recon(smol_tokenizer, cfg), progress=False)
        assert summary["samples"] == len(rows) and summary["bad_records"] == 0
        got[name] = [
            (s.sample_id, s.prompt_ids, s.completion_ids) for s in iter_samples(tmp_path / f"run-{name}" / "samples")
        ]
    assert got["plain"] == got["gz"]

    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])  # the writer died mid-stream
    cfg = make_cfg(tmp_path / "run-cut", tmp_path / "cut.jsonl.gz", on_error="fail")
    summary = replay(cfg, tmp_path / "run-cut", make_recon(smol_tokenizer, cfg), progress=False)
    assert 0 < summary["samples"] < len(rows) and summary["partial_last_lines"] >= 1 and summary["bad_lines"] == 0
    assert all(b["partial"] for b in read_jsonl(tmp_path / "run-cut" / "replay_rejects.jsonl"))


def test_recorded_reasoning_and_tool_calls_reach_the_student(tmp_path, tools_tokenizer):
    base = read_jsonl(RECORDING)[0]
    tool = {"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}
    rows = [
        dict(
            base,
            prompt_id="think",
            response={
                "role": "assistant",
                "content": "#### 18",
                "reasoning_content": "168 - 150 = 18",
                "tool_calls": None,
            },
        ),
        dict(
            base,
            prompt_id="call",
            tools=[tool],
            finish_reason="tool_calls",
            response={
                "role": "assistant",
                "content": None,
                "reasoning_content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"e": "14*12"}'}}
                ],
            },
        ),
    ]
    inp = write_jsonl(tmp_path / "r.jsonl", rows)
    cfg = load_config(
        None,
        {
            "orchestrator": {
                "source": {"type": "replay", "path": str(inp)},
                "reconstruction": {"reasoning": "think_tags"},
            }
        },
    )
    summary = replay(cfg, tmp_path, make_recon(tools_tokenizer, cfg), progress=False)
    assert summary["samples"] == 2, summary
    got = {s.prompt_id: s for s in iter_samples(tmp_path / "samples")}
    assert trained_text(tools_tokenizer, got["think"]) == "<think>\n168 - 150 = 18\n</think>\n\n#### 18<|im_end|>"
    assert got["call"].finish_reason == "tool_calls"
    assert trained_text(tools_tokenizer, got["call"]) == (
        '<tool_call>{"name": "calc", "arguments": {"e": "14*12"}}</tool_call><|im_end|>'
    )


def test_dataset_reader_needs_no_network(tmp_path, monkeypatch, no_network):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [chat_row(f"{i}", id=f"p{i}") for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    attempts = no_network
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    convs = list(iter_conversations([str(tmp_path / "d.parquet")]))
    assert [c.prompt_id for c in convs] == [f"p{i}" for i in range(5)] and attempts == []


def test_shipped_example_data_is_what_its_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples", DATA / "make_examples.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    inputs, outputs = gen.batch()
    for name, rows in (
        ("recording.jsonl", gen.recording()),
        ("chat.jsonl", gen.chat()),
        ("sharegpt.jsonl", gen.sharegpt()),
        ("batch_input.jsonl", inputs),
        ("batch_output.jsonl", outputs),
    ):
        assert read_jsonl(DATA / name) == rows, name
    # the recorded answers are right, except the one recorded as wrong (reward 0.0)
    for r in read_jsonl(RECORDING):
        if r["finish_reason"] != "stop":
            continue
        final = int(r["response"]["content"].rsplit("####", 1)[1])
        pid = r["prompt_id"]
        expected = 105 if pid == "gsm-001-followup" else gen.PROBLEMS[int(pid.split("-")[1])][2]
        assert (final == expected) == (r["reward"] != 0.0), pid
