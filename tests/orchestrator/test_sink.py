"""orchestrator/sink.py: the producer sink both live rollouts and replay publish through."""

from __future__ import annotations

import threading
import time

from distill.core.config import Reconstruction
from distill.core.conversation import Conversation
from distill.core.contract import ShardWriter, write_consumed
from orchestrator.reconstruct import Reconstructor
from orchestrator.sink import Backpressure, Sink


class _Rejects:
    def __init__(self):
        self.lines = []

    def add(self, item_id, reason, detail=""):
        self.lines.append((item_id, reason))


def _conv(i: int, **kw) -> Conversation:
    return Conversation(
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], prompt_id=f"p{i}", **kw
    )


def test_build_isolates_the_conversation_that_raises(tmp_path, smol_tokenizer):
    sink = Sink(ShardWriter(tmp_path), Reconstructor(smol_tokenizer, Reconstruction()), _Rejects())
    convs = [_conv(0), _conv(1, meta=["not a dict"]), _conv(2)]  # meta that reconstruction cannot copy
    results = sink.build(convs)
    assert isinstance(results[1], TypeError)
    assert [s.sample_id for s in results[0][0]] == ["p0/0"] and [s.sample_id for s in results[2][0]] == ["p2/0"]


def test_build_takes_conversations_and_old_dicts_alike(tmp_path, smol_tokenizer):
    r = Reconstructor(smol_tokenizer, Reconstruction())
    conv = _conv(3, finish_reason="stop", reward=0.5)
    assert r.build_many([conv]) == r.build_many([conv.build_args()])


def test_duplicates_and_rejects(tmp_path):
    rejects = _Rejects()
    sink = Sink(ShardWriter(tmp_path), None, rejects)
    first = _conv(0, file="a.jsonl", line=3)
    assert sink.duplicate(first) is None and sink.duplicate(_conv(0)) == "a.jsonl:3"
    sink.reject("p0/0", "duplicate_id")
    assert rejects.lines == [("p0/0", "duplicate_id")] and sink.rejections == {"duplicate_id": 1}


def test_wait_sync_holds_until_the_trainer_consumes(tmp_path):
    bp = Backpressure(tmp_path, max_ahead=2, poll_s=0.02)
    threading.Timer(0.3, write_consumed, (tmp_path, 4)).start()
    t0 = time.monotonic()
    bp.wait_sync(5, lambda: False)  # 5 published, 0 consumed: more than 2 ahead
    assert time.monotonic() - t0 >= 0.25 and bp.waited_s >= 0.25
    Backpressure(tmp_path, max_ahead=None).wait_sync(100, lambda: False)  # no trainer: never waits
