"""A teacher whose `usage` is missing or unusable: its answers are kept and counted at the estimate, so
the budgets still hold (a real FaultServer whose usage is rewritten, and ChatKind.parse on raw bodies)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.helpers import read_jsonl

from orchestrator.kinds.chat import ChatKind, ChatRequest
from orchestrator.scheduler import rollout
from orchestrator.reconstruct import Reconstructor
from support.fault_server import FaultServer, write_prompts
from support.rollout_helpers import make_cfg

DROP = object()  # the answer carries no usage at all
MSGS = [{"role": "user", "content": "x" * 400}]
P = -(-len(json.dumps(MSGS)) // 4)  # the prompt's estimate (its JSON characters / 4, rounded up)


class UsageServer(FaultServer):
    """A FaultServer whose answers carry `usage` (DROP: none) instead of the true one; the true
    completion tokens of every answer are kept in `billed`."""

    def __init__(self, usage: Any, **kw):
        super().__init__(**kw)
        self.usage = usage
        self.billed: list[int] = []

    def _completion(self, req: dict, n: int) -> dict:
        out = super()._completion(req, n)
        self.billed.append(out["usage"]["completion_tokens"])
        if self.usage is DROP:
            del out["usage"]
        else:
            out["usage"] = self.usage
        return out


@pytest.fixture
def recon_for(smol_tokenizer):
    return lambda cfg: Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)


def _budget_run(tmp_path, recon_for, usage, capfd):
    write_prompts(tmp_path / "p.jsonl", 40)
    with UsageServer(usage) as s:
        cfg = make_cfg(
            s.base_url,
            tmp_path / "p.jsonl",
            sampling={"n": 2, "max_tokens": 30},
            budget={"max_completion_tokens": 200, "max_cost": 1.0, "cost_per_1k_completion": 5.0},
            concurrency=2,
        )
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
        again = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
        sent = len(s.log.entries)
    return s, summary, again, sent, capfd.readouterr().err


def test_a_teacher_reporting_no_usage_is_counted_at_the_estimate_and_the_budget_holds(tmp_path, recon_for, capfd):
    s, summary, again, sent, err = _budget_run(tmp_path, recon_for, DROP, capfd)
    assert summary["stop_reason"] == "budget:max_completion_tokens"  # before: completed, spend 0
    answered = len(s.log.ok())
    assert summary["usage_estimated"] == answered > 0
    assert summary["completion_tokens"] == answered * 2 * 30 <= 200  # max_tokens x n per answer
    assert sum(s.billed) <= 200  # what the teacher really produced stayed under the budget
    assert summary["prompt_tokens"] > 0 and 0 < summary["cost"] <= 1.0
    records = read_jsonl(tmp_path / "run" / "recording.jsonl")
    assert len(records) == 2 * answered and all(r["usage"]["completion_tokens"] == 60 for r in records)
    assert all(r["usage_estimated"] == "the response has no usage" for r in records)  # not the teacher's count
    # a rerun restores the estimated spend from the recording: nothing more is sent
    assert again["stop_reason"] == "budget:max_completion_tokens" and sent == len(s.log.entries) == answered
    assert err.count("reported no usable token usage (the response has no usage)") == 1  # once per run
    assert "including estimates for" in err


def _body(usage: Any = DROP, contents=("four words right here", "two words")) -> bytes:
    d: dict[str, Any] = {
        "id": "x",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ],
    }
    if usage is not DROP:
        d["usage"] = usage
    return json.dumps(d).encode()


def _req(**args) -> ChatRequest:
    k = args.pop("n", 2)
    return ChatRequest(MSGS, args={"n": k, **args}, want=k, est_completion=k * args.get("max_tokens", 0))


@pytest.mark.parametrize(
    "usage, want, why",
    [
        (DROP, {"prompt_tokens": P, "completion_tokens": 100}, "the response has no usage"),
        (None, {"prompt_tokens": P, "completion_tokens": 100}, "the response has no usage"),
        (
            {"total_tokens": 9},
            {"prompt_tokens": P, "completion_tokens": 100},
            "has no prompt_tokens and no completion_tokens",
        ),
        ({"prompt_tokens": 7}, {"prompt_tokens": 7, "completion_tokens": 100}, "no completion_tokens"),
        ({"prompt_tokens": 7, "completion_tokens": 5}, {"prompt_tokens": 7, "completion_tokens": 5}, None),
    ],
)
def test_parse_counts_what_the_body_does_not_report_at_the_estimate(usage, want, why):
    a = ChatKind().parse(_body(usage), _req(max_tokens=50))
    assert a.usage == want and len(a.choices) == 2
    assert (a.usage_estimated is None) if why is None else (why in a.usage_estimated)


def test_without_max_tokens_the_estimate_is_at_least_the_answer_size():
    a = ChatKind().parse(_body(contents=("word " * 400, "x")), _req())
    assert a.usage_estimated and a.usage["completion_tokens"] >= 2000 / 4


@pytest.mark.parametrize(
    "usage, why",
    [
        ({"prompt_tokens": -100, "completion_tokens": -5000}, "prompt_tokens = -100, not a count of tokens"),
        ({"prompt_tokens": "ten", "completion_tokens": "5"}, "prompt_tokens = 'ten', not a count"),
        ({"prompt_tokens": 7, "completion_tokens": [1]}, "completion_tokens = [1], not a count"),
        ({"prompt_tokens": 7, "completion_tokens": 12.5}, "completion_tokens = 12.5, not a count"),
        ({"prompt_tokens": 7, "completion_tokens": True}, "completion_tokens = True, not a count"),
        ({"prompt_tokens": float("nan"), "completion_tokens": 5}, "prompt_tokens = nan, not a count"),
    ],
)
def test_bad_usage_keeps_the_choices_and_counts_the_estimate(usage, why):
    """Before, a bad count made the whole body malformed_response: retried, every answer paid and thrown away."""
    a = ChatKind().parse(_body(usage), _req(max_tokens=50))
    assert [c.message["content"] for c in a.choices] == ["four words right here", "two words"]
    assert why in a.usage_estimated
    good = {k: v for k, v in usage.items() if type(v) is int and v >= 0}  # the counts still taken
    assert a.usage == {"prompt_tokens": P, "completion_tokens": 100, **good}  # the others: the estimate


def test_negative_usage_is_recorded_once_not_retried_and_counted_at_the_estimate(tmp_path, recon_for, capfd):
    write_prompts(tmp_path / "p.jsonl", 3)
    with UsageServer({"prompt_tokens": -100, "completion_tokens": -5000}) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 2, "max_tokens": 30})
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert summary["stop_reason"] == "completed" and len(s.log.entries) == 3  # no retry
    assert summary["retries"] == {} and summary["recorded"] == 6 and summary["usage_estimated"] == 3
    assert summary["completion_tokens"] == 3 * 60  # never credited by the negative count
    assert "completion_tokens = -5000, not a count of tokens" in capfd.readouterr().err


@pytest.mark.parametrize(
    "usage, want, why",
    [
        ({"prompt_tokens": 10**30, "completion_tokens": 1e308}, {"prompt_tokens": P, "completion_tokens": 100}, "10"),
        ({"prompt_tokens": 7, "completion_tokens": 2**41}, {"prompt_tokens": 7, "completion_tokens": 100}, "not a"),
        ({"prompt_tokens": 7, "completion_tokens": 401}, {"prompt_tokens": 7, "completion_tokens": 100}, "(400)"),
        ({"prompt_tokens": 7, "completion_tokens": 400}, {"prompt_tokens": 7, "completion_tokens": 400}, None),
    ],
)
def test_absurd_usage_is_not_believed(usage, want, why):
    """Above 2**40 tokens, or completion tokens above 4 x max_tokens x choices: the estimate."""
    a = ChatKind().parse(_body(usage), _req(max_tokens=50))
    assert a.usage == want and len(a.choices) == 2
    assert (a.usage_estimated is None) if why is None else (why in a.usage_estimated)


HUGE = {"prompt_tokens": 10**30, "completion_tokens": 1e308, "total_tokens": 1}


def test_absurd_usage_and_a_recording_poisoned_by_it_end_cleanly(tmp_path, recon_for, capfd):
    """Before, 1e308 completion tokens were added up to infinity: a traceback after DONE, on every rerun too."""
    write_prompts(tmp_path / "p.jsonl", 4)
    with UsageServer(HUGE) as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 2, "max_tokens": 30})
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
        assert summary["stop_reason"] == "completed" and summary["completion_tokens"] == 4 * 60
        assert summary["usage_estimated"] == 4 and "1e+308, not a count of tokens" in capfd.readouterr().err
        # a run directory written by the old code: the absurd usage in the recording itself
        rec = tmp_path / "run" / "recording.jsonl"
        rows = [dict(r, usage=dict(HUGE, completion_tokens=int(1e308))) for r in read_jsonl(rec)]
        rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_prompts(tmp_path / "p.jsonl", 6)
        again = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert again["stop_reason"] == "completed" and again["samples_this_run"] == 4
    assert again["completion_tokens"] == 2 * 60  # the poisoned totals count as 0, this run's at the estimate
    err = capfd.readouterr().err
    assert "completion_tokens spent before this run add up to inf" in err and "prompt_tokens spent" in err
    metrics = (tmp_path / "run" / "orchestrator_metrics.jsonl").read_text()
    assert "Infinity" not in metrics and "NaN" not in metrics


class ExtraChoicesServer(FaultServer):
    """Answers every request with `n + 3` choices (indices 0..n+2), as a server that ignores n upwards."""

    def _completion(self, req: dict, n: int) -> dict:
        return super()._completion(req, n + 3 if n else 0)


def test_choices_beyond_n_are_counted_and_warned_about_once(tmp_path, recon_for, capfd):
    write_prompts(tmp_path / "p.jsonl", 3)
    with ExtraChoicesServer() as s:
        cfg = make_cfg(s.base_url, tmp_path / "p.jsonl", sampling={"n": 2, "max_tokens": 30})
        summary = rollout(cfg, tmp_path / "run", recon_for(cfg), progress=False, backpressure=False)
    assert len(s.log.entries) == 3 and summary["recorded"] == 6  # the first n of each answer, as before
    assert {r["sample_index"] for r in read_jsonl(tmp_path / "run" / "recording.jsonl")} == {0, 1}
    assert summary["extra_choices"] == 9
    err = capfd.readouterr().err
    assert err.count("answered with 3 more choice(s) than were asked for") == 1
    assert "extra choices paid for, not recorded: 9" in err


def test_parse_counts_extra_choices():
    assert ChatKind().parse(_body({}, ("a", "b", "c", "d", "e")), _req(max_tokens=5)).extra_choices == 3
    assert ChatKind().parse(_body({}, ("a", "b")), _req(max_tokens=5)).extra_choices == 0
