"""The sample contract: optional per-token teacher fields, the format version, old and newer shards."""

from __future__ import annotations

import json

import pytest

from distill.core.contract import (
    FORMAT_VERSION,
    Sample,
    ShardWriter,
    iter_samples,
    read_shard,
)

# The keys of a shard line as written before the teacher fields existed (format version 1).
V1_KEYS = [
    "sample_id",
    "prompt_ids",
    "completion_ids",
    "completion_mask",
    "prompt_id",
    "sample_index",
    "finish_reason",
    "reward",
    "teacher_model",
    "meta",
    "version",
]


def _sample(**kw) -> Sample:
    base = {
        "sample_id": "p/0",
        "prompt_ids": [1, 2],
        "completion_ids": [3, 4, 5],
        "completion_mask": [1, 0, 1],
        "prompt_id": "p",
        "meta": {"src": "t"},
    }
    return Sample(**{**base, **kw})


TEACHER = {
    "teacher_logprobs": [-0.5, None, -1.25],
    "teacher_topk_ids": [[3, 9], [], [5]],
    "teacher_topk_logprobs": [[-0.5, -2.0], [], [-1.25]],
}


def _roundtrip(tmp_path, samples):
    w = ShardWriter(tmp_path / "samples", samples_per_shard=10)
    for s in samples:
        w.add(s)
    w.close()
    return list(iter_samples(tmp_path / "samples"))


def test_sample_without_teacher_fields_is_written_as_format_1_unchanged(tmp_path):
    s = _sample()
    line = json.loads(s.to_json())
    assert list(line) == V1_KEYS and line["version"] == 1  # what version-1 readers expect, byte for byte
    assert _roundtrip(tmp_path, [s]) == [s]


def test_teacher_fields_round_trip_as_format_2(tmp_path):
    s = _sample(**TEACHER)
    assert FORMAT_VERSION >= 2 and s.version == 2
    line = json.loads(s.to_json())
    assert line["version"] == 2 and line["teacher_logprobs"] == [-0.5, None, -1.25]
    (back,) = _roundtrip(tmp_path, [s])
    assert back == s and back.teacher_topk_ids == [[3, 9], [], [5]]
    only_lp = _sample(teacher_logprobs=[-0.5, None, -1.25])
    assert "teacher_topk_ids" not in json.loads(only_lp.to_json())  # written only when set
    assert _roundtrip(tmp_path / "b", [only_lp]) == [only_lp]


def test_old_shard_lines_still_read(tmp_path):
    d = tmp_path / "samples"
    d.mkdir()
    old = {
        "sample_id": "p/0",
        "prompt_ids": [1],
        "completion_ids": [2, 3],
        "completion_mask": [1, 1],
        "prompt_id": "p",
        "sample_index": 0,
        "finish_reason": "stop",
        "reward": None,
        "teacher_model": "t",
        "meta": {},
        "version": 1,
    }
    no_version = {k: v for k, v in old.items() if k != "version"} | {"sample_id": "p/1"}
    (d / "shard-000000.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(no_version) + "\n")
    a, b = read_shard(d / "shard-000000.jsonl")
    assert (a.sample_id, a.completion_ids, a.version, a.teacher_logprobs) == ("p/0", [2, 3], 1, None)
    assert (b.sample_id, b.version) == ("p/1", 1)


def test_a_newer_format_is_refused_naming_the_file_and_versions(tmp_path):
    p = tmp_path / "shard-000000.jsonl"
    line = json.loads(_sample().to_json()) | {"version": FORMAT_VERSION + 1, "teacher_entropy": [0.1, 0.2, 0.3]}
    p.write_text(_sample().to_json() + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError) as ei:
        read_shard(p)
    msg = str(ei.value)
    assert f"{p}:2:" in msg and f"version {FORMAT_VERSION + 1}" in msg and f"up to {FORMAT_VERSION}" in msg
    assert "written by a newer distill" in msg and "upgrade distill" in msg


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"teacher_logprobs": [-0.5, None]}, "teacher_logprobs must be a list with one entry per completion token"),
        ({"teacher_logprobs": "-0.5"}, "teacher_logprobs must be a list"),
        ({"teacher_logprobs": [-0.5, None, None]}, "teacher_logprobs[2] is None; a trained token needs a finite"),
        ({"teacher_logprobs": [float("nan"), None, -1.0]}, "teacher_logprobs[0] is nan"),
        ({"teacher_logprobs": [-0.5, "x", -1.0]}, "teacher_logprobs[1] is 'x'; expected a number or null"),
        ({"teacher_logprobs": [-0.5, None, True]}, "teacher_logprobs[2] is True"),
        ({"teacher_topk_ids": [[1], [], [2]]}, "teacher_topk_ids and teacher_topk_logprobs come together"),
        (
            {"teacher_topk_ids": [[1], [], [2]], "teacher_topk_logprobs": [[-1.0], [], [-1.0, -2.0]]},
            "teacher_topk_ids[2] and teacher_topk_logprobs[2] must be lists of the same length",
        ),
        (
            {"teacher_topk_ids": [[1], [-4], [2]], "teacher_topk_logprobs": [[-1.0], [-1.0], [-1.0]]},
            "teacher_topk_ids[1] is [-4]; expected token ids",
        ),
        (
            {"teacher_topk_ids": [[1], [], [2]], "teacher_topk_logprobs": [[-1.0], [], [float("inf")]]},
            "teacher_topk_logprobs[2] is [inf]; expected finite numbers",
        ),
    ],
)
def test_malformed_teacher_fields_are_refused_naming_the_field(tmp_path, fields, named):
    with pytest.raises(ValueError) as ei:
        _sample(**fields)
    assert named in str(ei.value) and "sample p/0" in str(ei.value)
    # read from a shard, the message also names the file and line
    p = tmp_path / "shard-000000.jsonl"
    p.write_text(json.dumps(json.loads(_sample().to_json()) | {"version": 2} | fields) + "\n")
    with pytest.raises(ValueError, match=rf"^{p}:1: sample p/0: ") as ei:
        read_shard(p)
    assert named in str(ei.value)


@pytest.mark.parametrize("version", ["2", 0, None, 1.5])
def test_a_version_that_is_not_a_number_is_refused(tmp_path, version):
    p = tmp_path / "shard-000000.jsonl"
    p.write_text(json.dumps(json.loads(_sample().to_json()) | {"version": version}) + "\n")
    with pytest.raises(ValueError, match=rf"{p}:1: sample format version .* is not a version number"):
        read_shard(p)


ON_POLICY = {"sampling_logprobs": [-0.25, None, -2.0], "group_id": "p@step3", "reward": 1.0}


def test_on_policy_fields_round_trip_as_format_3_and_only_when_set(tmp_path):
    s = _sample(**ON_POLICY, teacher_logprobs=[-0.5, None, -1.25])
    assert FORMAT_VERSION == 3 and s.version == 3
    line = json.loads(s.to_json())
    assert line["version"] == 3 and line["sampling_logprobs"] == [-0.25, None, -2.0] and line["group_id"] == "p@step3"
    assert _roundtrip(tmp_path, [s]) == [s]
    assert _sample(group_id="g").version == 3  # either field alone makes the line version 3
    teacher_only = json.loads(_sample(**TEACHER).to_json())
    assert teacher_only["version"] == 2 and "sampling_logprobs" not in teacher_only and "group_id" not in teacher_only


def test_a_version_2_reader_refuses_on_policy_lines(tmp_path, monkeypatch):
    # A reader that knows only version 2 would drop sampling_logprobs/group_id silently; the version refuses it.
    from distill.core import contract

    p = tmp_path / "shard-000000.jsonl"
    p.write_text(_sample(**ON_POLICY).to_json() + "\n")
    monkeypatch.setattr(contract, "FORMAT_VERSION", 2)
    with pytest.raises(ValueError, match=rf"{p}:1: sample format version 3 was written by a newer distill"):
        read_shard(p)


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"sampling_logprobs": [-0.5]}, "sampling_logprobs must be a list with one entry per completion token (3)"),
        ({"sampling_logprobs": [-0.5, None, None]}, "sampling_logprobs[2] is None; a trained token needs a finite"),
        ({"sampling_logprobs": [float("-inf"), 0.0, -1.0]}, "sampling_logprobs[0] is -inf"),
        ({"group_id": 7}, "group_id is 7; expected a non-empty string"),
        ({"group_id": ""}, "group_id is ''; expected a non-empty string"),
    ],
)
def test_malformed_on_policy_fields_are_refused_naming_the_field(tmp_path, fields, named):
    with pytest.raises(ValueError) as ei:
        _sample(**fields)
    assert named in str(ei.value) and "sample p/0" in str(ei.value)
    p = tmp_path / "shard-000000.jsonl"
    p.write_text(json.dumps(json.loads(_sample().to_json()) | {"version": 3} | fields) + "\n")
    with pytest.raises(ValueError, match=rf"^{p}:1: sample p/0: "):
        read_shard(p)


def _finished(tmp_path, n=6, per_shard=2):
    w = ShardWriter(tmp_path / "samples", samples_per_shard=per_shard)
    for i in range(n):
        w.add(_sample(sample_id=f"p/{i}"))
    w.close()
    return tmp_path / "samples"


def test_a_finished_folder_is_read_to_its_end_when_it_holds_what_done_says(tmp_path):
    from distill.core.contract import follow_samples

    folder = _finished(tmp_path)
    assert json.loads((folder / "DONE").read_text()) == {"shards": 3, "samples": 6}
    assert [s.sample_id for s in follow_samples(folder, start=2)] == ["p/2", "p/3", "p/4", "p/5"]
    (folder / "DONE").write_text("")  # a DONE without counts (written by hand): taken as it is
    assert len(list(follow_samples(folder))) == 6


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda d: (d / "shard-000001.jsonl").unlink(), "says 3 shard(s) with 6 sample(s), but the folder holds 2"),
        (lambda d: (d / "DONE").write_text('{"shards": 9, "samples": 50}\n'), "says 9 shard(s) with 50 sample(s)"),
        (lambda d: (d / "DONE").write_text("garbage\n"), "is damaged ('garbage'"),
        (
            lambda d: (d / "shard-000002.jsonl").write_text(
                (d / "shard-000002.jsonl").read_text().splitlines()[0] + "\n"
            ),
            "holds 3 shard(s) with 5 sample(s)",
        ),
    ],
)
def test_a_finished_folder_that_lost_or_gained_data_is_refused_naming_both_counts(tmp_path, damage, says):
    """A shard deleted or cut by hand, or a DONE from elsewhere: training would take other data than was
    produced, in silence."""
    from distill.core.contract import follow_samples
    from distill.core.done_marker import DoneMismatch

    folder = _finished(tmp_path)
    damage(folder)
    with pytest.raises(DoneMismatch) as ei:
        list(follow_samples(folder))
    assert says in str(ei.value) and "Fix:" in str(ei.value)


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("completion_ids", [3, 4.7, 5], "completion_ids[1] = 4.7 is not a token id (an integer >= 0)"),
        ("prompt_ids", [1, -5], "prompt_ids[1] = -5 is not a token id"),
        ("prompt_ids", [1, "12"], "prompt_ids[1] = '12' is not a token id"),
        ("prompt_ids", None, "prompt_ids is null, not a list"),
        ("completion_mask", [1, 2, 1], "completion_mask[1] = 2 is not 0 or 1"),
        ("completion_mask", [1, True, 1], "completion_mask[1] = True is not 0 or 1"),
    ],
)
def test_token_fields_that_are_not_token_ids_are_refused_naming_file_line_and_field(tmp_path, field, value, says):
    """A float id would be cut to an int and trained; a negative or string one would stop training with a
    traceback deep in torch: the shard line is refused when read, naming where."""
    from distill.core.contract import ShardError

    line = json.loads(_sample().to_json())
    line[field] = value
    shard = tmp_path / "shard-000000.jsonl"
    shard.write_text(_sample(sample_id="ok/0").to_json() + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ShardError) as ei:
        read_shard(shard)
    assert f"{shard}:2: " in str(ei.value) and says in str(ei.value), str(ei.value)
