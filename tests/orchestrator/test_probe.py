"""probe() against FaultServers with different capabilities."""

from __future__ import annotations

from orchestrator.probe import format_probe, probe
from support.fault_server import FaultServer, Faults


def as_dict(rows):
    return {f: (r, d) for f, r, d in rows}


def test_probe_reports_capabilities():
    with FaultServer(reasoning=True, logprobs=True, tool_calls=True) as s:
        rows = as_dict(probe(s.base_url, "fault-teacher", api_key="k", timeout=5))
    assert rows["models list"][0] == "yes"
    assert rows["chat completions"][0] == "yes" and "finish_reason='stop'" in rows["chat completions"][1]
    assert rows["reported model"][0] == "fault-teacher"
    assert rows["usage"][0] == "yes"
    assert rows["latency"][0].endswith(" ms")
    assert rows["n > 1 honoured"][0] == "yes"
    assert rows["logprobs"][0] == "yes" and "top_logprobs=3" in rows["logprobs"][1]
    assert rows["token ids"][0] == "no"
    assert rows["reasoning field"] == ("yes", "field 'reasoning_content' (23 chars)")
    assert rows["tool calls"][0] == "yes" and "get_weather" in rows["tool calls"][1]


def test_probe_reports_missing_features_and_picks_a_model():
    with FaultServer(Faults(ignore_n=True)) as s:
        rows = probe(s.base_url, None, timeout=5)
    d = as_dict(rows)
    assert d["models list"] == ("yes", "1 listed; using 'fault-teacher'")
    assert d["n > 1 honoured"][0] == "no" and "falls back" in d["n > 1 honoured"][1]
    assert d["logprobs"][0] == "no" and d["reasoning field"][0] == "no" and d["tool calls"][0] == "no"
    table = format_probe(rows)
    assert table.splitlines()[0].startswith("feature") and "n > 1 honoured" in table


def test_probe_wrong_model_shows_server_message():
    with FaultServer() as s:
        d = as_dict(probe(s.base_url, "nope", timeout=5))
    assert d["models list"][0] == "no"
    assert d["chat completions"][0] == "error" and "HTTP 404" in d["chat completions"][1]
    assert "does not exist" in d["chat completions"][1]
    assert "latency" not in d  # the rest is skipped after chat fails


def test_probe_unreachable_endpoint():
    rows = probe("http://127.0.0.1:9/v1", "m", timeout=2)
    assert rows[0][0] == "models list" and rows[0][1] == "error"


def test_probe_reads_reasoning_sent_as_thinking_content_parts():
    """Mistral's shape for its reasoning models: content parts, the reasoning in one of type "thinking".
    Before, the chat check failed on the list ('list' object has no attribute 'strip') and the
    reasoning check said there was none."""
    with FaultServer(reasoning="parts") as s:
        d = as_dict(probe(s.base_url, "fault-teacher", timeout=5))
    assert d["chat completions"][0] == "yes"
    assert d["reasoning field"][0] == "yes" and "'thinking'" in d["reasoning field"][1]
