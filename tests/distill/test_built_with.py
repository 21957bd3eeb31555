"""A rerun builds its samples like the ones already published (distill/built_with.py): another chat
template or [orchestrator.reconstruction] is refused before anything is asked or written, the same
tokenizer under another path is not, and the refusal's fix (replay the recording into a new run dir)
works. A template reconstruction cannot use is one line before the run dir exists."""

from __future__ import annotations

import shutil
from pathlib import Path

from support.fault_server import FaultServer, write_prompts
from support.rollout_helpers import write_rollout_toml

from distill.cli import main
from distill.core.contract import iter_samples

ROOT = Path(__file__).resolve().parents[2]
CHATML = ROOT / "tests" / "templates" / "chatml_generation.jinja"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_a_rerun_with_another_template_or_reconstruction_is_refused(tmp_path, smol_tokenizer_dir, capsys):
    run = tmp_path / "run"
    with FaultServer() as s:
        cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=4)
        assert main(["rollout", cfg]) == 0
        (run / "samples" / "DONE").unlink()  # as if killed before the end
        first = [x.prompt_ids for x in iter_samples(run / "samples")]
        saved = (run / "config.toml").read_text()
        asked = len(s.log.entries)
        capsys.readouterr()

        assert main(["rollout", cfg, "--student.chat_template", str(CHATML)]) == 1
        err = _one_line(capsys)
        assert "student.chat_template" in err and str(CHATML) in err and "shard(s)" in err
        assert f"copy {run / 'recording.jsonl'} into NEW_DIR and rerun with --output_dir NEW_DIR" in err
        assert main(["rollout", cfg, "--orchestrator.reconstruction.reasoning", "drop"]) == 1
        assert "orchestrator.reconstruction.reasoning (was 'template', now 'drop')" in _one_line(capsys)
        assert len(s.log.entries) == asked and (run / "config.toml").read_text() == saved
        assert not (run / "samples" / "DONE").exists()
        # what only decides which samples are kept may change: the folder still holds one rendering
        longer = ["--trainer.seq_len", "4096"]
        assert main(["rollout", cfg, *longer, "--orchestrator.reconstruction.overlong", "truncate"]) == 0
        (run / "samples" / "DONE").unlink()
        capsys.readouterr()
        assert main(["rollout", cfg]) == 1  # lowered again: samples of up to 4096 tokens may be published
        assert "max_seq_len (trainer.seq_len when unset) was 4096, now " in _one_line(capsys)

        # the same tokenizer and template under another path build the same samples: resumed
        other = shutil.copytree(smol_tokenizer_dir, tmp_path / "same-tokenizer")
        assert main(["rollout", cfg, *longer, "--student.tokenizer", str(other)]) == 0
        assert len(s.log.entries) == asked and (run / "samples" / "DONE").exists()
        assert [x.prompt_ids for x in iter_samples(run / "samples")] == first

    # the fix the refusal gives: every sample built again from the copied recording, the teacher gone
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(run / "recording.jsonl", new)
    assert main(["rollout", cfg, "--output_dir", str(new), "--student.chat_template", str(CHATML)]) == 0
    rebuilt = list(iter_samples(new / "samples"))
    assert len(rebuilt) == len(first) and all(x.prompt_ids not in first for x in rebuilt)


def test_a_rollout_after_a_replay_of_its_recording_asks_only_for_the_rest(tmp_path, smol_tokenizer_dir):
    """Samples a replay published in a run dir without a recording are not asked for again (nor published
    twice under one id) when a rollout continues there."""
    with FaultServer() as s:
        cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=4)
        assert main(["rollout", cfg]) == 0
        recorded = s.log.entries[:]
        assert (
            main(["replay", cfg, str(tmp_path / "run" / "recording.jsonl"), "--output_dir", str(tmp_path / "new")]) == 0
        )
        write_prompts(tmp_path / "p.jsonl", 6)  # two more prompts since
        s.log.entries.clear()
        assert main(["rollout", cfg, "--output_dir", str(tmp_path / "new")]) == 0
    assert len(s.log.entries) == 2 and len(recorded) == 4  # only the two new prompts were asked
    ids = [x.sample_id for x in iter_samples(tmp_path / "new" / "samples")]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6


def test_a_template_without_an_end_of_turn_token_is_one_line_before_the_run_dir(tmp_path, smol_tokenizer_dir, capsys):
    with FaultServer() as s:
        cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=4)
        template = ROOT / "tests" / "templates" / "phi3_5.jinja"  # <|end|> is no token of SmolLM2's
        capsys.readouterr()
        assert main(["rollout", cfg, "--student.chat_template", str(template)]) == 1
        err = _one_line(capsys)
        assert f"student.chat_template = '{template}'" in err and "end-of-turn token" in err
        assert s.log.entries == [] and not (tmp_path / "run").exists()


def test_train_refuses_samples_built_with_another_vocabulary(tmp_path, smol_tokenizer_dir, tiny_student_dir, capsys):
    from support.tokenizer_builds import tokenizer_dir

    with FaultServer() as s:
        cfg = write_rollout_toml(tmp_path, s.base_url, smol_tokenizer_dir, prompts=4)
        assert main(["rollout", cfg]) == 0
    train = [
        cfg,
        "--student.path",
        str(tiny_student_dir),
        "--trainer.max_steps",
        "1",
        "--trainer.samples_per_step",
        "2",
    ]
    capsys.readouterr()
    qwen = ["--student.tokenizer", str(tokenizer_dir("qwen")), "--student.chat_template", str(CHATML)]
    assert main(["train", *train, *qwen]) == 1
    err = _one_line(capsys)
    assert "built with another vocabulary than this student's" in err and str(smol_tokenizer_dir) in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    (tmp_path / "link").symlink_to(tmp_path / "run" / "samples")  # the same folder through a link: checked
    assert main(["train", *train, *qwen, "--samples", str(tmp_path / "link")]) == 1
    assert "another vocabulary" in _one_line(capsys)
    # the tiny student has SmolLM2's vocabulary (its own tokenizer folder): trained
    assert main(["train", *train, "--student.tokenizer", str(tiny_student_dir)]) == 0


COMMENT_ONLY = [  # (template, the same with other comments): what renders is the same
    ("A{# x #}B{{ messages[0].content }}", "A{# a longer\n\n comment #}B{{ messages[0].content }}"),
    ("A{# c #}B", "AB"),
    ("{% if 1 %}X{% endif %}", "{%if 1%}{# here #}X{%endif%}"),
]
RENDERS_OTHERWISE = [  # whitespace control around a comment changes the text around it
    ("A  {#- x #}B", "A  {# x #}B"),
    ("A{# x -#}   B", "A{# x #}   B"),
    ("A{# x #}\nB", "A\nB"),  # trim_blocks ate the newline after the comment
    ("A{{ messages[0].content }}", "A{{ messages[0].content|trim }}"),
]


def test_the_template_fingerprint_ignores_comments_and_nothing_that_renders():
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from distill.built_with import template_code

    def render(src: str) -> str:
        return _compile_jinja_template(src).render(messages=[{"content": " hi "}])

    for a, b in COMMENT_ONLY:
        assert render(a) == render(b) and template_code(a) == template_code(b), (a, b)
    for a, b in RENDERS_OTHERWISE:
        assert render(a) != render(b) and template_code(a) != template_code(b), (a, b)


def test_a_file_from_before_the_code_fingerprint_is_compared_by_text():
    from distill.built_with import _differences

    new = {
        "student": {"path": "p", "tokenizer": None, "chat_template": None},
        "tokenizer_sha256": "t",
        "chat_template_sha256": "text-now",
        "chat_template_code_sha256": "code",
        "reconstruction": {"max_seq_len": 8},
    }
    older = {"student": new["student"], "chat_template_sha256": "text-then", "reconstruction": {}}
    assert any("chat template" in d for d in _differences(older, new))  # no code key: the text decides
    assert not _differences(dict(older, chat_template_sha256="text-now"), new)
    assert not _differences(dict(older, chat_template_code_sha256="code"), new)  # a comment-only edit
    assert _differences(dict(older, chat_template_code_sha256="other"), new)


def test_the_keys_that_change_what_a_turn_trains_are_compared():
    """reasoning_form, tool_calls_as_text and text_with_tool_calls change the text a turn trains, as
    reasoning does, and the tool-definition forms its prompt; a file from before a key existed is not refused
    for it."""
    from distill.built_with import _differences

    student = {"path": "p", "tokenizer": None, "chat_template": None}
    base = {
        "student": student,
        "tokenizer_sha256": "k",
        "chat_template_sha256": "t",
        "reconstruction": {"max_seq_len": 8},
    }
    for key, was, now in [
        ("reasoning_form", None, "<|channel>thought\n{reasoning}<channel|>"),
        ("tool_calls_as_text", None, "<tool_call>\n{call}\n</tool_call>"),
        ("text_with_tool_calls", "keep", "drop"),
        ("tools_in_system_prompt", None, "## Tools\n{tools}"),
        ("tool_definition_form", "{tool}", "### {name}"),
    ]:
        new = dict(base, reconstruction={"max_seq_len": 8, key: now})
        old = dict(base, reconstruction={"max_seq_len": 8, key: was})
        assert _differences(old, new) == [f"orchestrator.reconstruction.{key} (was {was!r}, now {now!r})"]
        assert not _differences(base, new)  # the older file has no such key
