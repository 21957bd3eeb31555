"""Property tests: the same conversation written as chat JSONL, ShareGPT, a recording, TRL's
prompt-completion or a Batch API output/input pair replays to the same samples, and trains exactly on the assistant text."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.core.config import load_config
from distill.core.contract import iter_samples
from orchestrator.reconstruct import Reconstructor
from orchestrator.replay import replay

WORD = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-*/=?.,#", min_size=1, max_size=8
)
TEXT = st.lists(WORD, min_size=1, max_size=12).map(" ".join)


@st.composite
def conversations(draw):
    """system? then alternating user/assistant turns, ending with an assistant turn."""
    n = draw(st.integers(1, 3))
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(TEXT)})
    for _ in range(n):
        msgs.append({"role": "user", "content": draw(TEXT)})
        msgs.append({"role": "assistant", "content": draw(TEXT)})
    return msgs


def as_chat(cid, msgs):
    return {"id": cid, "messages": msgs}


def as_sharegpt(cid, msgs):
    names = {"user": "human", "assistant": "gpt"}
    row = {
        "id": cid,
        "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in msgs if m["role"] != "system"],
    }
    if msgs[0]["role"] == "system":
        row["system"] = msgs[0]["content"]
    return row


def as_recording(cid, msgs):
    return {
        "v": 1,
        "prompt_id": cid,
        "sample_index": 0,
        "messages": msgs[:-1],
        "tools": None,
        "response": dict(msgs[-1], reasoning_content=None, tool_calls=None),
        "finish_reason": "stop",
        "model": "m",
        "reward": None,
    }


def as_prompt_completion(cid, msgs):
    """TRL's conversational prompt-completion row: the messages before the first assistant turn, then the rest."""
    first = next(k for k, m in enumerate(msgs) if m["role"] == "assistant")
    return {"id": cid, "prompt": msgs[:first], "completion": msgs[first:]}


def as_batch(cid, msgs):
    request = {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": msgs[:-1]},
    }
    answer = {
        "custom_id": cid,
        "error": None,
        "response": {
            "status_code": 200,
            "body": {"model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": msgs[-1]}]},
        },
    }
    return request, answer


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(convs=st.lists(conversations(), min_size=1, max_size=4))
def test_every_format_gives_the_same_samples(convs, smol_tokenizer):
    tmp = Path(tempfile.mkdtemp(prefix="replay-prop-"))
    try:
        ids = [f"c{i}" for i in range(len(convs))]
        files = {
            "chat": [as_chat(i, c) for i, c in zip(ids, convs)],
            "sharegpt": [as_sharegpt(i, c) for i, c in zip(ids, convs)],
            "recording": [as_recording(i, c) for i, c in zip(ids, convs)],
            "prompt_completion": [as_prompt_completion(i, c) for i, c in zip(ids, convs)],
            "batch_output": [as_batch(i, c)[1] for i, c in zip(ids, convs)][::-1],
        }
        for name, rows in files.items():
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "batch_input.jsonl").write_text(
            "".join(json.dumps(as_batch(i, c)[0]) + "\n" for i, c in zip(ids, convs))
        )
        got = {}
        for name in files:
            cfg = load_config(
                None,
                {
                    "orchestrator": {
                        "source": {"type": "replay", "path": str(tmp / f"{name}.jsonl")},
                        "replay": {"batch_input": str(tmp / "batch_input.jsonl")},
                    }
                },
            )
            recon = Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction, 1024)
            summary = replay(cfg, tmp / f"run-{name}", recon, progress=False)
            assert summary["samples"] == len(convs) and summary["bad_records"] == 0, summary
            got[name] = sorted(
                (s.sample_id, s.prompt_ids, s.completion_ids, s.completion_mask)
                for s in iter_samples(tmp / f"run-{name}" / "samples")
            )
        assert got["chat"] == got["sharegpt"] == got["recording"] == got["batch_output"] == got["prompt_completion"]
        for (sid, _, completion, mask), conv in zip(got["chat"], convs):
            trained = smol_tokenizer.decode([t for t, m in zip(completion, mask) if m])
            assert trained == "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
