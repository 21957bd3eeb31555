"""The Scorer with a stand-in transport: what it does with answers a hostile scorer can give (values the
sample contract refuses, ids beyond the student's vocabulary, recorded answers that no longer pass)."""

from __future__ import annotations

import asyncio

import pytest
from support.reconstruct_helpers import recon, tokenizer_with

from orchestrator.kinds.score_types import ScoreAnswer, SeqScores
from orchestrator.scoring import ScoreError
from orchestrator.transport import Delivery

CONV = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4, since 2 + 2 = 4."},
]


def samples(n: int = 1):
    r = recon()
    out = []
    for i in range(n):
        conv = [dict(m) for m in CONV]
        conv[0]["content"] = f"What is {i} + 2?"
        out += r.build(conv, None, sample_id=f"p{i}/0", finish_reason="stop")[0]
    return out


def good_scores(ids: list[int], k: int) -> SeqScores:
    """A well-formed answer: every position's logprob -0.5, its top-k the scored token and k - 1 others."""
    topk = [[]] + [[(ids[i], -0.5)] + [(7 + j, -2.0 - j) for j in range(k - 1)] for i in range(1, len(ids))]
    return SeqScores(logprobs=[None] + [-0.5] * (len(ids) - 1), topk=topk, token_ids=list(ids))


class Answers:
    """Stands in for Scorer.transport.request: answers each batch with `make(ids)` per sequence."""

    def __init__(self, make, usage=None):
        self.make, self.usage, self.calls = make, usage, 0

    async def request(self, kind, batch, gate=None):
        self.calls += 1
        seqs = [self.make(list(s.token_ids)) for s in batch.seqs]
        usage = self.usage or {"prompt_tokens": sum(len(s.token_ids) for s in batch.seqs), "completion_tokens": 0}
        return Delivery(ScoreAnswer(seqs, usage), "http://127.0.0.1:9/v1", None, 0.0, 0.0)

    async def close(self):
        pass


def scorer(tmp_path, answers: Answers, top_k: int = 3, **kw):
    from distill.core.config.schema_score import SCORER_CONFIGS
    from orchestrator.scoring import Scorer

    sc = SCORER_CONFIGS["vllm"](base_url="http://127.0.0.1:9/v1", top_k=top_k, **kw)
    s = Scorer(sc, "EMPTY", tokenizer_with(None), tmp_path / "scores.jsonl")
    asyncio.run(s.transport.close())
    s.transport = answers  # type: ignore[assignment]
    return s


def run(s, items):
    async def go():
        try:
            return await s.score(items)
        finally:
            await s.aclose()

    return asyncio.run(go())


def test_a_value_the_sample_contract_refuses_is_a_score_error_not_a_traceback(tmp_path):
    """D1: an answer a kind let through (here a negative top-k id) ends as ScoreError naming the sample."""

    def negative(ids):
        s = good_scores(ids, 3)
        s.topk = [row if not row else [(-1, -0.01)] + row for row in s.topk]  # type: ignore[union-attr]
        return s

    with pytest.raises(ScoreError, match=r"sample p0/0.*teacher_topk_ids"):
        run(scorer(tmp_path, Answers(negative)), samples(1))
    assert not (tmp_path / "scores.jsonl").exists() or not (tmp_path / "scores.jsonl").read_text()


def test_the_scorer_tells_the_kind_the_students_vocabulary(tmp_path):
    seen = []

    class Seeing(Answers):
        async def request(self, kind, batch, gate=None):
            seen.append(batch.vocab)
            return await super().request(kind, batch, gate)

    run(scorer(tmp_path, Seeing(lambda ids: good_scores(ids, 3))), samples(1))
    assert seen == [len(tokenizer_with(None))]


def _poison(tmp_path, item, bad_id: int) -> None:
    """scores.jsonl holding an answer for `item` whose top-k lists `bad_id` (an older distill recorded it)."""
    import json

    from orchestrator.score_store import make_score_record, score_key

    ids = item.prompt_ids + item.completion_ids
    scores = good_scores(ids, 3)
    scores.topk[5] = [(ids[5], -0.5), (bad_id, -0.01)]  # type: ignore[index]
    key = score_key("vllm", "teacher", 3, ids)
    rec = make_score_record(key, "vllm", "teacher", 3, scores, usage={"prompt_tokens": len(ids)}, usage_shared_by=1)
    (tmp_path / "scores.jsonl").write_text(json.dumps(rec) + "\n")


def test_a_recorded_answer_that_fails_todays_checks_is_noted_and_asked_again(tmp_path, capsys):
    """D2: an id beyond the vocabulary recorded by an older distill is not reused on every rerun."""
    items = samples(1)
    _poison(tmp_path, items[0], 10_000_000)
    answers = Answers(lambda ids: good_scores(ids, 3))
    res = run(scorer(tmp_path, answers), items)
    err = capsys.readouterr().err
    assert "1 answer(s) recorded in" in err and "line 1: top-k at position 5: token id 10000000 is not in" in err
    assert "scored again" in err
    assert answers.calls == 1 and res.sent == 1 and res.reused == 0
    assert all(t < 10_000_000 for row in res.scored[0].teacher_topk_ids for t in row)
    # the new answer stands from now on: reused, nothing noted, the spoilt line's request still counted as spent
    again = Answers(lambda ids: good_scores(ids, 3))
    s = scorer(tmp_path, again)
    assert s.loaded.requests == 2 and not s.loaded.failing
    res = run(s, items)
    assert again.calls == 0 and res.reused == 1 and "scored again" not in capsys.readouterr().err


def test_a_request_that_failed_for_good_names_the_endpoint_and_the_fix(tmp_path):
    """D6: before, `scoring sample(s) p0/0 failed: http_500: boom (gave up after 2 attempts)` and nothing else."""
    from orchestrator.transport import TeacherError

    class Failing(Answers):
        async def request(self, kind, batch, gate=None):
            raise TeacherError("http_500", "boom (gave up after 2 attempts)", 500)

    s = scorer(tmp_path, Failing(None))
    s.sc = s.sc.model_copy(update={"base_url": "http://user:hunter2secret@127.0.0.1:9/v1"})
    with pytest.raises(ScoreError) as ei:
        run(s, samples(1))
    msg = str(ei.value)
    assert "scoring sample(s) p0/0 failed at the scorer http://" in msg and "127.0.0.1:9/v1" in msg
    assert "hunter2secret" not in msg and "http_500: boom (gave up after 2 attempts)" in msg
    assert "Fix: check the scorer" in msg and "rerun the same command: it resumes" in msg


def test_fewer_top_k_entries_than_asked_are_kept_and_told_once(tmp_path, capsys):
    """D5: a server may cap k; the positions are kept (the tail bucket takes the rest) and counted."""
    res = run(scorer(tmp_path, Answers(lambda ids: good_scores(ids, 2))), samples(2))
    assert len(res.scored) == 2 and all(len(r) == 2 for r in res.scored[0].teacher_topk_ids if r)
    err = capsys.readouterr().err
    assert err.count("fewer than scorer.top_k = 3 alternatives") == 1 and "sample p0/0" in err
    s = scorer(tmp_path / "full", Answers(lambda ids: good_scores(ids, 3)))
    run(s, samples(1))
    assert s.short_topk == 0 and "fewer than" not in capsys.readouterr().err
