"""OpenAI's legacy function calling (`function_call`, role "function", `functions`) read as tool calls,
on every path that reads messages: the conversion itself, Reconstructor.build on a real tokenizer and
tool template, replay's chat records, `distill tokenize` lines, prompt files and a teacher's answer."""

from __future__ import annotations

import json

import pytest

from distill.core.config import Reconstruction, load_config
from distill.core.contract import iter_samples
from orchestrator.legacy_functions import LegacyError, chat_tool, modern_message, modern_tools

WEATHER = {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
ARGS = '{"city": "Paris"}'


def legacy_conversation(content=None) -> list[dict]:
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": content, "function_call": {"name": "weather", "arguments": ARGS}},
        {"role": "function", "name": "weather", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "It is sunny in Paris."},
    ]


def modern_conversation(content=None) -> list[dict]:
    call = {"type": "function", "function": {"name": "weather", "arguments": ARGS}}
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": content, "tool_calls": [call]},
        {"role": "tool", "name": "weather", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "It is sunny in Paris."},
    ]


def test_a_legacy_call_and_its_result_become_a_tool_call_and_a_tool_message():
    old = legacy_conversation("Let me look.")
    assert [modern_message(m) for m in old] == modern_conversation("Let me look.")
    assert old[1]["function_call"]["name"] == "weather"  # the input is not changed
    plain = {"role": "user", "content": "hi"}
    assert modern_message(plain) is plain
    assert modern_tools([WEATHER], None) == [{"type": "function", "function": WEATHER}]
    wrapped = {"type": "function", "function": WEATHER}
    assert modern_tools([wrapped], "") == [wrapped]  # already in the tools shape: kept
    assert modern_tools(None, [wrapped]) == [wrapped] and modern_tools([], None) is None


@pytest.mark.parametrize(
    "message, tools, key, words",
    [
        ({"role": "assistant", "content": None, "function_call": "weather"}, None, "function_call", "not an object"),
        ({"role": "assistant", "function_call": {"arguments": "{}"}}, None, "function_call", "function name"),
        ({"role": "user", "content": "x", "function_call": {"name": "f"}}, None, "function_call", "'user' message"),
        (
            {"role": "assistant", "function_call": {"name": "f"}, "tool_calls": [{"function": {"name": "f"}}]},
            None,
            "function_call",
            "both tool_calls and",
        ),
        (None, {"functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]}, "functions", "both"),
        (None, {"functions": "weather"}, "functions", "not a list"),
    ],
)
def test_what_cannot_be_read_as_tool_calls_is_refused_naming_the_field_and_the_fix(message, tools, key, words):
    with pytest.raises(LegacyError) as ei:
        modern_message(message) if message is not None else modern_tools(tools["functions"], tools.get("tools"))
    assert ei.value.key == key and words in str(ei.value) and "Fix: " in str(ei.value)


def _qwen():
    from support.tokenizer_builds import load_or_skip

    return load_or_skip("qwen", "qwen2_5")


@pytest.mark.parametrize("content", [None, "", "Let me look."])
def test_a_legacy_conversation_gives_the_sample_of_its_tool_call_spelling(content):
    from orchestrator.reconstruct import Reconstructor

    tok = _qwen()
    recon = Reconstructor(tok, Reconstruction())
    old, rej_old = recon.build(legacy_conversation(content), modern_tools([WEATHER], None), sample_id="c")
    new, rej_new = recon.build(modern_conversation(content), [{"type": "function", "function": WEATHER}], sample_id="c")
    assert not rej_old and not rej_new and len(old) == len(new) == 1
    assert (old[0].prompt_ids, old[0].completion_ids, old[0].completion_mask) == (
        new[0].prompt_ids,
        new[0].completion_ids,
        new[0].completion_mask,
    )
    trained = tok.decode([t for t, m in zip(old[0].completion_ids, old[0].completion_mask) if m])
    assert '"name": "weather"' in trained and '"city": "Paris"' in trained and "It is sunny" in trained
    assert (content or "") in trained and "sunny, 21 C" not in trained  # the result is context
    assert "weather" in tok.decode(old[0].prompt_ids)  # the functions were offered as tools


def test_chat_tool_wraps_bare_and_flat_function_definitions_only():
    wrapped = {"type": "function", "function": WEATHER}
    assert chat_tool(WEATHER) == wrapped  # a bare definition (the legacy functions list, datasets)
    assert chat_tool({"type": "function", **WEATHER}) == wrapped  # the Responses API's flat shape
    assert chat_tool(wrapped) is wrapped
    for other in ({"type": "code_interpreter"}, {"type": "custom", "name": "grammar", "format": {}}):
        assert chat_tool(other) is other


def test_tools_given_as_bare_definitions_render_as_a_server_would_get_them():
    """A `tools` list of bare function definitions (as function-calling datasets store them) reaches the
    template wrapped, as the chat-completions request an inference server takes has it: the student's
    prompt is the one it sees at inference. Before, replay, tokenize and build passed them as written
    (only prompt files and the legacy `functions` list wrapped them), so the prompt showed another
    tools block."""
    from orchestrator.reconstruct import Reconstructor

    recon = Reconstructor(_qwen(), Reconstruction())
    bare, _ = recon.build(modern_conversation(), [WEATHER], sample_id="b")
    flat, _ = recon.build(modern_conversation(), [{"type": "function", **WEATHER}], sample_id="f")
    wrapped, _ = recon.build(modern_conversation(), [{"type": "function", "function": WEATHER}], sample_id="w")
    assert bare[0].prompt_ids == flat[0].prompt_ids == wrapped[0].prompt_ids


def test_build_rejects_an_unreadable_legacy_call_with_its_reason():
    from orchestrator.reconstruct import Reconstructor

    msgs = legacy_conversation()
    msgs[1]["tool_calls"] = [{"type": "function", "function": {"name": "weather", "arguments": ARGS}}]
    samples, rejections = Reconstructor(_qwen(), Reconstruction()).build(msgs, sample_id="c")
    assert not samples and rejections[0].reason == "invalid_tool_call"
    assert "messages[1]" in rejections[0].detail and "both tool_calls and" in rejections[0].detail


def test_replay_reads_legacy_chat_records_and_names_the_field_of_a_bad_one(tmp_path):
    from orchestrator.reconstruct import Reconstructor
    from orchestrator.replay import replay

    tok = _qwen()
    rows = [
        {"id": "old", "messages": legacy_conversation(), "functions": [WEATHER]},
        {"id": "new", "messages": modern_conversation(), "tools": [{"type": "function", "function": WEATHER}]},
        {"id": "bad", "messages": legacy_conversation(), "functions": [WEATHER], "tools": [{"type": "function"}]},
    ]
    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, {"orchestrator": {"source": {"type": "replay", "path": str(src)}}})
    summary = replay(
        cfg, tmp_path / "run", Reconstructor(tok, cfg.orchestrator.reconstruction), on_error="skip", progress=False
    )
    assert summary["samples"] == 2 and summary["bad_records"] == 1, summary
    got = {
        s.sample_id.split("/")[0]: (s.prompt_ids, s.completion_ids, s.completion_mask)
        for s in iter_samples(tmp_path / "run" / "samples")
    }
    assert got["old"] == got["new"]
    bad = [json.loads(x) for x in (tmp_path / "run" / "replay_rejects.jsonl").read_text().splitlines()]
    assert bad[0]["line"] == 3 and bad[0]["field"] == "functions" and "both tools and" in bad[0]["error"]


def test_tokenize_reads_a_functions_list_as_tools(tmp_path):
    from support.tokenizer_builds import TEMPLATES, tokenizer_dir

    from orchestrator.reconstruction.tokenize_jsonl import tokenize_file

    _qwen()  # skipped (failed in CI) when the tokenizer cannot be built
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"messages": legacy_conversation(), "functions": [WEATHER]})
        + "\n"
        + json.dumps({"messages": modern_conversation(), "tools": [{"type": "function", "function": WEATHER}]})
        + "\n"
        + json.dumps({"messages": modern_conversation(), "functions": [WEATHER], "tools": [WEATHER]})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    tokenize_file(str(tokenizer_dir("qwen")), str(src), str(out), chat_template=str(TEMPLATES / "qwen2_5.jinja"))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {k: v for k, v in lines[0].items() if k != "line"} == {k: v for k, v in lines[1].items() if k != "line"}
    assert (
        lines[2]["error"].startswith("invalid_message:") and "both tools and the legacy functions" in lines[2]["error"]
    )


def test_a_teachers_legacy_function_call_is_kept_as_its_tool_call():
    from orchestrator.kinds.chat import parse_choices

    call = {"name": "weather", "arguments": ARGS}
    body = json.dumps(
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None, "function_call": call}},
                {"index": 1, "message": {"role": "assistant", "content": "Looking.", "function_call": call}},
                {"index": 2, "message": {"role": "assistant", "content": None, "function_call": {"arguments": "{}"}}},
            ]
        }
    )
    choices, bad, _, _, _ = parse_choices(body, 3)
    want = [{"type": "function", "function": call}]
    assert [c.message["tool_calls"] for c in choices] == [want, want] and choices[1].message["content"] == "Looking."
    assert bad == {2: "malformed_choice"}


def test_a_prompt_files_functions_are_offered_as_tools(tmp_path):
    from types import SimpleNamespace

    from orchestrator.prompts import PromptSourceError, load_prompts

    def prompts(row):
        (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
        return list(load_prompts(SimpleNamespace(type="jsonl", path=str(tmp_path / "p.jsonl"), system_prompt=None)))

    (p,) = prompts({"prompt": "Weather in Paris?", "functions": [WEATHER]})
    assert p["tools"] == [{"type": "function", "function": WEATHER}] and "functions" not in p["metadata"]
    with pytest.raises(PromptSourceError, match="both tools and the legacy functions"):
        prompts({"prompt": "x", "functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]})
