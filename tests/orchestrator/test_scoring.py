"""The scoring pipeline's parts that need no server: position mapping, answer checks, the recording, the gate."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.reconstruct_helpers import recon

from orchestrator.kinds.score_types import ScoreSeq, SeqScores
from orchestrator.score_store import load_scores, make_score_record, record_scores, score_key
from orchestrator.scoring import ScoreError, ScoreGate, check_answer, fill
from orchestrator.transport import StopRequested
from distill.core.config.schema_score import ScoreBudget

MULTI_TURN = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "12, since 4 * 3 = 12."},
]


def multi_turn_sample():
    samples, rejections = recon().build(MULTI_TURN, None, sample_id="p/0", finish_reason="stop")
    assert not rejections and len(samples) == 1
    s = samples[0]
    # the user turn between the two answers is in the completion, untrained: where a suffix mapping breaks
    assert 0 in s.completion_mask and s.completion_mask[0] == 1 and s.completion_mask[-1] == 1
    return s


def position_scores(ids: list[int], k: int = 2) -> SeqScores:
    """Scores whose value names their position: logprobs[i] = -(i + 1) / 1000; top-k led by the scored token."""
    lps = [None] + [-(i + 1) / 1000 for i in range(1, len(ids))]
    topk = [[]] + [[(ids[i], -(i + 1) / 1000), (7, -5.0 - i)][:k] for i in range(1, len(ids))]
    return SeqScores(logprobs=lps, topk=topk, token_ids=list(ids))


def test_fill_takes_position_prompt_len_plus_j_for_every_completion_token():
    s = multi_turn_sample()
    ids = s.prompt_ids + s.completion_ids
    p = len(s.prompt_ids)
    out = fill(s, position_scores(ids), top_k=2)
    assert out.teacher_logprobs == [-(p + j + 1) / 1000 for j in range(len(s.completion_ids))]
    for j, trained in enumerate(s.completion_mask):
        if trained:
            # the top-k at completion token j is the distribution that produced completion_ids[j]
            assert out.teacher_topk_ids[j] == [s.completion_ids[j], 7]
            assert out.teacher_topk_logprobs[j] == [-(p + j + 1) / 1000, -5.0 - (p + j)]
        else:
            assert out.teacher_topk_ids[j] == [] and out.teacher_topk_logprobs[j] == []
    assert out.version == 2 and out.completion_ids == s.completion_ids
    # written and read back through the contract
    from distill.core.contract import Sample

    assert Sample.from_dict(json.loads(out.to_json())) == out


def test_fill_without_top_k_sets_only_logprobs():
    s = multi_turn_sample()
    out = fill(s, position_scores(s.prompt_ids + s.completion_ids), top_k=0)
    assert out.teacher_topk_ids is None and out.teacher_topk_logprobs is None
    assert len(out.teacher_logprobs) == len(s.completion_ids)


def test_fill_refuses_a_missing_logprob_at_a_trained_position():
    s = multi_turn_sample()
    got = position_scores(s.prompt_ids + s.completion_ids)
    j = s.completion_mask.index(1)
    got.logprobs[len(s.prompt_ids) + j] = None
    with pytest.raises(ScoreError, match=r"sample p/0: .*trained position"):
        fill(s, got, top_k=0)


def test_check_answer_refuses_other_token_ids_naming_sample_and_position():
    seq = ScoreSeq([1, 2, 3, 4])
    with pytest.raises(ScoreError, match=r"sample x/1: .*position 2: sent 3, scored 9"):
        check_answer(seq, SeqScores([None, -1.0, -1.0, -1.0], None, [1, 2, 9, 4]), 0, "sample x/1")
    with pytest.raises(ScoreError, match=r"sample x/1: the scorer returned 3 logprobs for 4 tokens"):
        check_answer(seq, SeqScores([None, -1.0, -1.0], None, None), 0, "sample x/1")
    with pytest.raises(ScoreError, match=r"top_k = 5 but the scorer returned top-k for none"):
        check_answer(seq, SeqScores([None, -1.0, -1.0, -1.0], None, None), 5, "sample x/1")
    check_answer(seq, SeqScores([None, -1.0, -1.0, -1.0], [[]] * 4, [1, 2, 3, 4]), 5, "ok")


def test_score_key_names_kind_model_k_and_ids():
    base = score_key("vllm", "m", 5, [1, 2, 3])
    assert base == score_key("vllm", "m", 5, [1, 2, 3]) and len(base) == 64
    assert len({base, score_key("sglang", "m", 5, [1, 2, 3]), score_key("vllm", "m2", 5, [1, 2, 3])}) == 3
    assert len({base, score_key("vllm", "m", 0, [1, 2, 3]), score_key("vllm", "m", 5, [1, 2, 4])}) == 3


def test_recording_round_trip_and_torn_last_line(tmp_path, capsys):
    path = tmp_path / "scores.jsonl"
    got = position_scores([5, 6, 7])
    rec = make_score_record("k1", "vllm", "m", 2, got, usage={"prompt_tokens": 3}, usage_shared_by=1)
    path.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "key": "k2"})[:40])
    loaded = load_scores(path)
    assert set(loaded.records) == {"k1"} and loaded.requests == 1 and loaded.prompt_tokens == 3
    back = record_scores(loaded.records["k1"])
    assert back.logprobs == got.logprobs and back.topk == got.topk
    assert "half-written" in capsys.readouterr().err
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 1  # torn line cut off


def test_a_recorded_usage_that_is_not_a_count_is_charged_at_the_records_length(tmp_path):
    """D3: a negative count an older distill recorded would credit [scorer.budget] on every rerun."""
    path = tmp_path / "scores.jsonl"
    lines = [
        make_score_record(f"k{i}", "vllm", "m", 2, position_scores([5, 6, 7]), usage={"prompt_tokens": u})
        for i, u in enumerate([-1_000_000_000, 10**15, "lots", 4])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert load_scores(path).prompt_tokens == 3 + 3 + 3 + 4


def test_recording_damaged_line_names_file_and_line(tmp_path):
    from orchestrator.recording import RecordingError

    path = tmp_path / "scores.jsonl"
    rec = make_score_record("k1", "vllm", "m", 0, position_scores([5, 6]))
    path.write_text("{broken\n" + json.dumps(rec) + "\n")
    with pytest.raises(RecordingError, match=r"scores.jsonl:1: "):
        load_scores(path)


def test_score_gate_counts_scored_tokens_and_names_the_budget_key():
    async def go(budget, prior_requests=0, prior_tokens=0):
        gate = ScoreGate(budget, prior_requests, prior_tokens)
        sent = 0
        try:
            for _ in range(10):
                await gate.reserve(100, 1)
                gate.settle(100, 1, {"prompt_tokens": 100, "completion_tokens": 1})
                sent += 1
        except StopRequested as e:
            return sent, str(e)
        return sent, None

    assert asyncio.run(go(ScoreBudget(max_requests=3))) == (3, "budget:max_requests")
    assert asyncio.run(go(ScoreBudget(max_requests=3), prior_requests=2)) == (1, "budget:max_requests")
    assert asyncio.run(go(ScoreBudget(max_prompt_tokens=250))) == (2, "budget:max_prompt_tokens")
    assert asyncio.run(go(ScoreBudget(max_cost=0.25, cost_per_1k_prompt=1.0))) == (2, "budget:max_cost")


def _scorer(server, type_: str, tmp_path, **kw):
    from distill.core.config.schema_score import SCORER_CONFIGS
    from orchestrator.scoring import Scorer
    from support.reconstruct_helpers import tokenizer_with

    url = server.root if type_ == "sglang" else server.base_url
    sc = SCORER_CONFIGS[type_](base_url=url, model=server.model, retry={"max_attempts": 2, "initial_backoff": 0}, **kw)
    return Scorer(sc, "EMPTY", tokenizer_with(None), tmp_path / "scores.jsonl")


def _score(scorer, samples):
    async def go():
        try:
            return await scorer.score(samples)
        finally:
            await scorer.aclose()

    return asyncio.run(go())


def _samples(n: int):
    r = recon()
    out = []
    for i in range(n):
        conv = [dict(m) for m in MULTI_TURN]
        conv[0]["content"] = f"What is {i} + 2?"
        out += r.build(conv, None, sample_id=f"p{i}/0", finish_reason="stop")[0]
    return out


@pytest.mark.parametrize("type_", ["sglang", "echo"])
def test_scorer_batches_sequences_and_fills_the_models_logprobs(
    make_score_server, exact_model, tmp_path, type_, one_torch_thread
):
    server = make_score_server()
    samples = _samples(4)
    res = _score(_scorer(server, type_, tmp_path, top_k=2, sequences_per_request=3), samples)
    assert [s.sample_id for s in res.scored] == [s.sample_id for s in samples] and res.sent == 2
    assert len(server.requests_seen) == 2  # 4 sequences, 3 per request
    for s, got in zip(samples, res.scored):
        p = len(s.prompt_ids)
        want = exact_model.direct(s.prompt_ids + s.completion_ids)[p:]
        assert got.teacher_logprobs == pytest.approx(want, abs=1e-4)
        j = s.completion_mask.index(1)
        assert s.completion_ids[j] in got.teacher_topk_ids[j]
    # a second scorer over the same recording sends nothing
    again = _score(_scorer(server, type_, tmp_path, top_k=2, sequences_per_request=3), samples)
    assert again.sent == 0 and again.reused == 4 and len(server.requests_seen) == 2
    assert [s.teacher_logprobs for s in again.scored] == [s.teacher_logprobs for s in res.scored]


def test_an_answer_about_other_tokens_is_refused_naming_the_sample(make_score_server, tmp_path, one_torch_thread):
    server = make_score_server(malformed="ids")  # position 1 of the answer holds another token id
    with pytest.raises(ScoreError, match=r"p0/0"):
        _score(_scorer(server, "sglang", tmp_path), _samples(1))
    assert not (tmp_path / "scores.jsonl").exists() or (tmp_path / "scores.jsonl").read_text() == ""
