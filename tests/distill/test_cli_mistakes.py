"""User mistakes through the real CLI: non-zero exit, one clear message naming the key or
file, no traceback, and nothing written to the run dir. Secrets put in the wrong field never
reach the terminal or any file of the run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def distill(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def base_toml(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "cfg.toml"
    cfg.write_text(f'output_dir = "{tmp / "run"}"\n' + extra)
    return cfg


def _setup_existing_run(tmp: Path) -> None:
    (tmp / "run" / "samples").mkdir(parents=True)
    (tmp / "run" / "samples" / "shard-000000.jsonl").write_text("{}\n")


def _setup_file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a folder\n")


def _setup_empty_dir(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def _setup_empty_prompts(tmp: Path) -> None:
    (tmp / "prompts.jsonl").write_text("\n\n")


def _setup_broken_tokenizer(tmp: Path) -> None:
    (tmp / "broken").mkdir()
    (tmp / "broken" / "tokenizer.json").write_text("{ not json\n")
    (tmp / "broken" / "tokenizer_config.json").write_text("{}\n")


def _setup_dangling_run_dir(tmp: Path) -> None:
    (tmp / "run").symlink_to(tmp / "moved-away")  # output_dir is a link whose target is gone


# id: (command, TOML text after output_dir, extra args, env, setup, exit code, [what stderr names])
MISTAKES = {
    "run_replay_without_inputs": (
        "run",
        '[orchestrator.source]\ntype = "replay"\n',
        [],
        {},
        None,
        1,
        ["orchestrator.source.path", "nothing to read"],
    ),
    "prompt_file_next_to_the_config": (  # relative paths are the working folder's: the file beside the config is named
        "rollout",
        '[orchestrator.source]\ntype = "jsonl"\npath = "prompts.jsonl"\n',
        [],
        {},
        _setup_empty_prompts,
        1,
        ["prompts.jsonl does not exist (relative paths are read from the working folder", "{tmp}/prompts.jsonl exists"],
    ),
    "replay_input_next_to_the_config": (
        "replay",
        '[orchestrator.source]\ntype = "replay"\npath = "prompts.jsonl"\n',
        [],
        {},
        _setup_empty_prompts,
        1,
        ["orchestrator.source.path: prompts.jsonl: does not exist (relative paths", "{tmp}/prompts.jsonl exists"],
    ),
    "prompt_file_empty": (
        "rollout",
        '[orchestrator.source]\ntype = "jsonl"\npath = "{tmp}/prompts.jsonl"\n',
        [],
        {},
        _setup_empty_prompts,
        1,
        ["orchestrator.source.path", "prompts.jsonl holds no prompt", "no request was sent"],
    ),
    "tokenizer_path_missing": (
        "rollout",
        '[student]\ntokenizer = "{tmp}/no-such-tokenizer"\n',
        [],
        {},
        None,
        1,
        ["student.tokenizer", "no-such-tokenizer", "does not exist"],
    ),
    "tokenizer_folder_empty": (
        "rollout",
        '[student]\ntokenizer = "{tmp}/empty"\n',
        [],
        {},
        _setup_empty_dir,
        1,
        ["student.tokenizer", "holds no tokenizer", "or point it at the folder with them"],
    ),
    "tokenizer_does_not_load": (
        "rollout",
        '[student]\ntokenizer = "{tmp}/broken"\n',
        [],
        {},
        _setup_broken_tokenizer,
        1,
        ["student.tokenizer", "broken", "does not load"],
    ),
    "student_hub_id": (
        "rollout",
        '[student]\npath = "HuggingFaceTB/SmolLM2-135M-Instruct"\n',
        [],
        {},
        None,
        1,
        ["student.path", "not in the local Hugging Face cache", "hf download", "huggingface-cli download"],
    ),
    "student_path_missing": (
        "run",
        '[student]\npath = "{tmp}/no-student"\n',
        [],
        {},
        None,
        1,
        ["student.path", "no-student", "does not exist"],
    ),
    "student_folder_next_to_the_config": (  # the hint of a relative path, as for the prompt file
        "rollout",
        '[student]\ntokenizer = "empty"\n',
        [],
        {},
        _setup_empty_dir,
        1,
        [
            "student.tokenizer",
            "empty does not exist (relative paths are read from the working folder",
            "{tmp}/empty exists",
        ],
    ),
    "student_not_a_model": (
        "train",
        '[student]\npath = "{tmp}/empty"\n',
        [],
        {},
        _setup_empty_dir,
        1,
        ["student.path", "config.json"],
    ),
    "reward_fn_no_colon": (
        "rollout",
        '[orchestrator]\nreward_fn = "nocolon"\n',
        [],
        {},
        None,
        2,
        ["orchestrator.reward_fn", "module:function"],
    ),
    "reward_fn_no_module": (
        "rollout",
        '[orchestrator]\nreward_fn = "no_such_module_xyz:score"\n',
        [],
        {},
        None,
        1,
        ["orchestrator.reward_fn", "no_such_module_xyz"],
    ),
    "reward_fn_no_function": (
        "rollout",
        '[orchestrator]\nreward_fn = "orchestrator.rewards:nope"\n',
        [],
        {},
        None,
        1,
        ["orchestrator.reward_fn", "nope"],
    ),
    "output_dir_under_file": (
        "rollout",
        "",
        ["--output_dir", "{tmp}/afile/run"],
        {},
        _setup_file,
        1,
        ["output_dir", "afile", "regular file"],
    ),
    "no_resume_on_existing_run": (
        "run",
        "",
        ["--no-resume"],
        {},
        _setup_existing_run,
        1,
        ["output_dir", "already holds a run", "samples", "without --no-resume"],
    ),
    "prompt_path_is_a_folder": (
        "rollout",
        '[orchestrator.source]\ntype = "jsonl"\npath = "{tmp}/empty"\n',
        [],
        {},
        _setup_empty_dir,
        1,
        ["orchestrator.source.path", "is a folder"],
    ),
    "prompt_path_missing": (
        "rollout",
        '[orchestrator.source]\ntype = "jsonl"\npath = "{tmp}/p.jsonl"\n',
        [],
        {},
        None,
        1,
        ["orchestrator.source.path", "p.jsonl", "does not exist"],
    ),
    "replay_input_missing": ("replay", "", ["{tmp}/nothing.jsonl"], {}, None, 1, ["nothing.jsonl", "does not exist"]),
    "train_without_samples": ("train", "", [], {}, None, 1, ["no samples folder", "distill rollout"]),
    "train_samples_is_a_file": (
        "train",
        "",
        ["--samples", "{tmp}/afile"],
        {},
        _setup_file,
        1,
        ["--samples: {tmp}/afile is a file; --samples takes a samples folder", "distill replay CONFIG FILE"],
    ),
    "unknown_key_cli": (
        "rollout",
        "",
        ["--trainer.lr", "1"],
        {},
        None,
        2,
        ["unknown key trainer.lr; did you mean trainer.optim.lr?"],
    ),
    "unknown_key_toml": (
        "rollout",
        "[trainer]\nlr = 1\n",
        [],
        {},
        None,
        2,
        ["unknown key trainer.lr; did you mean trainer.optim.lr?", "cfg.toml"],
    ),
    "bad_env_override": (
        "rollout",
        "",
        [],
        {"DISTILL_TRAINER__MAX_STEPS": "abc"},
        None,
        2,
        ["DISTILL_TRAINER__MAX_STEPS", "trainer.max_steps"],
    ),
    "bad_env_json": (
        "rollout",
        "",
        [],
        {"DISTILL_ORCHESTRATOR__SAMPLING__EXTRA_BODY": "{bad"},
        None,
        2,
        ["DISTILL_ORCHESTRATOR__SAMPLING__EXTRA_BODY", "not valid JSON"],
    ),
    "config_missing": ("run", None, [], {}, None, 2, ["cfg.toml", "does not exist"]),
    "teacher_key_unset": (
        "run",
        '[orchestrator.rollout_model]\napi_key_var = "DISTILL_TEST_UNSET_KEY"\n',
        [],
        {},
        None,
        1,
        ["orchestrator.rollout_model.api_key_var", "DISTILL_TEST_UNSET_KEY, which is not set", "Fix: export"],
    ),
    "teacher_key_smart_quote": (
        "rollout",
        '[orchestrator.rollout_model]\napi_key_var = "DISTILL_TEST_QUOTED_KEY"\n',
        [],
        {"DISTILL_TEST_QUOTED_KEY": "sk-test-1234567890\u201d"},
        None,
        1,
        ["orchestrator.rollout_model.api_key_var", "U+201D at position 19 of 19", "Fix:"],
    ),
    "teacher_key_as_model": (  # the key pasted where the model's name goes: refused, never shown
        "rollout",
        '[orchestrator.rollout_model]\nmodel = "sk-proj-DISTINCT0123456789abcdef"\n',
        [],
        {},
        None,
        2,
        ["orchestrator.rollout_model.model: looks like an API key", "api_key_var", "Fix:"],
    ),
    "scorer_key_as_model": (
        "score",
        '[scorer]\ntype = "vllm"\nmodel = "hf_DISTINCT0123456789abcdef"\n',
        [],
        {},
        None,
        2,
        ["scorer.model: looks like an API key", "scorer.api_key_var"],
    ),
    "wandb_key_as_run_name": (  # printed and sent to W&B's servers as the run's name: refused, never shown
        "train",
        '[wandb]\nname = "sk-or-v1-DISTINCT0123456789abcdef"\n',
        [],
        {},
        None,
        2,
        ["wandb.name: looks like an API key", "WANDB_API_KEY"],
    ),
    "key_as_trackio_run": (
        "train",
        '[trackers]\ntrackio_run = "hf_DISTINCT0123456789abcdef"\n',
        [],
        {},
        None,
        2,
        ["trackers.trackio_run: looks like an API key", "Fix:"],
    ),
    "output_dir_empty": (  # --output_dir "$OUT" with OUT unset: the run went into the working folder
        "rollout",
        "",
        ["--output_dir", ""],
        {},
        None,
        2,
        ["output_dir: is empty", "[set on the command line]"],
    ),
    "tracker_named_after_a_key_shaped_output_dir": (
        "train",
        "[trackers]\ntrackio = true\n",
        ["--output_dir", "{tmp}/sk-proj-DISTINCT0123456789abcdef"],
        {},
        None,
        2,
        ["output_dir: a part of it looks like an API key", "trackers.trackio_run would be named after it too"],
    ),
    "key_in_a_path": (  # refused up front: a path is printed and saved with the run's config and samples
        "rollout",
        "",
        ["--student.chat_template", "{tmp}/run-sk-proj-DISTINCT0123456789abcdef/t.jinja"],
        {},
        None,
        2,
        ["student.chat_template: a part of it looks like an API key", "rename that folder or file"],
    ),
    "key_shaped_output_dir": (  # printed and saved with the run's config even with no tracker
        "rollout",
        "",
        ["--output_dir", "{tmp}/run-sk-proj-DISTINCT0123456789abcdef.d/run"],
        {},
        None,
        2,
        ["output_dir: a part of it looks like an API key", "rename that folder or file"],
    ),
    "output_dir_dangling_link": (
        "rollout",
        "",
        [],
        {},
        _setup_dangling_run_dir,
        1,
        ["cannot use {tmp}/run: it is a link to {tmp}/moved-away, which does not exist"],
    ),
    "replay_unknown_column_cli": (
        "replay",
        "",
        ["{tmp}/x.jsonl", "--orchestrator.replay.columns", '{{msgs = "conversation"}}'],
        {},
        None,
        2,
        ["orchestrator.replay.columns: unknown field name(s) ['msgs']", "the keys are our names", "command line"],
    ),
    "replay_unknown_column_toml": (
        "replay",
        '[orchestrator.replay]\ncolumns = {{msgs = "conversation"}}\n',
        ["{tmp}/x.jsonl"],
        {},
        None,
        2,
        ["orchestrator.replay.columns: unknown field name(s) ['msgs']", "cfg.toml"],
    ),
    "replay_on_error_invalid": (
        "replay",
        "",
        ["{tmp}/x.jsonl", "--on-error", "ignore"],
        {},
        None,
        2,
        ["--on-error must be skip or fail, got 'ignore'", "Fix: --on-error skip"],
    ),
    "replay_on_error_without_value": (
        "replay",
        "",
        ["{tmp}/x.jsonl", "--on-error"],
        {},
        None,
        2,
        ["--on-error needs a value"],
    ),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_mistake_fails_with_one_clear_message_and_writes_nothing(case, tmp_path):
    command, toml, args, env, setup, code, names = MISTAKES[case]
    if setup:
        setup(tmp_path)
    cfg = base_toml(tmp_path, toml.format(tmp=tmp_path)) if toml is not None else tmp_path / "cfg.toml"
    had_run_dir = (tmp_path / "run").exists()
    res = distill(command, cfg, *(a.format(tmp=tmp_path) for a in args), env=env)
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "None" not in res.stderr, res.stderr
    assert res.stderr.startswith("distill: ") and res.stderr.count("distill: ") == 1, res.stderr
    assert "DISTINCT" not in res.stderr + res.stdout  # a key pasted in a wrong field is not shown
    for name in names:
        assert name.format(tmp=tmp_path) in res.stderr, (name, res.stderr)
    if case.startswith("bad_env"):  # the variable is named, not the TOML file that is fine
        assert "cfg.toml" not in res.stderr
    # validated before anything is written: no run dir made, no config.toml in one that existed
    assert not (tmp_path / "run" / "config.toml").exists()
    assert (tmp_path / "run").exists() == had_run_dir


def test_config_commands_answer_help():
    own = {
        "run": ["--dry-run", "--no-resume"],
        "rollout": [],
        "replay": ["--on-error", "INPUT"],
        "train": ["--resume", "--samples"],
    }
    for command, flags in own.items():
        for h in ("--help", "-h"):
            res = distill(command, h)
            assert res.returncode == 0, res.stderr
            assert res.stdout.startswith(f"usage: distill {command} CONFIG")
            for flag in flags + ["--key.path VALUE", "DISTILL_", "--help"]:
                assert flag in res.stdout, (command, flag)
    # after the config path too, and without loading it
    assert distill("run", "no-such.toml", "--help").returncode == 0
    bare = distill("train")
    assert bare.returncode == 2 and "config path" in bare.stderr and "--help" in bare.stderr
    assert "Traceback" not in bare.stderr
    for command in ("tokenize", "inspect", "probe", "report"):
        res = distill(command, "--help")
        assert res.returncode == 0 and res.stdout.startswith(f"usage: distill {command}"), res.stderr


@pytest.mark.parametrize("value", ["sk-proj-Abc123DEF456ghi789", "my-teacher-key", "1KEY"])
def test_api_key_in_api_key_var_is_refused_without_echoing_it(tmp_path, value):
    cfg = base_toml(tmp_path, f'[orchestrator.rollout_model]\napi_key_var = "{value}"\n')
    for extra in ([], ["--dry-run"]):
        res = distill("run", cfg, *extra)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "orchestrator.rollout_model.api_key_var" in res.stderr
        assert "not an environment variable name" in res.stderr
        assert value not in res.stderr and value not in res.stdout
    env_var = {"DISTILL_ORCHESTRATOR__ROLLOUT_MODEL__API_KEY_VAR": value}
    res = distill("rollout", base_toml(tmp_path), env=env_var)
    assert res.returncode == 2 and value not in res.stderr + res.stdout
    assert "DISTILL_ORCHESTRATOR__ROLLOUT_MODEL__API_KEY_VAR" in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["run", "rollout", "train"])
def test_input_files_after_the_config_are_refused_where_only_replay_reads_them(tmp_path, command):
    """`distill run CFG data.jsonl` (copied from a replay command) ran on the config's source instead."""
    res = distill(command, base_toml(tmp_path), "data.jsonl", "--trainer.max_steps", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{command} takes one config path; unexpected argument(s): data.jsonl" in res.stderr
    assert "distill replay CONFIG FILE" in res.stderr and not (tmp_path / "run").exists()


def test_a_flag_given_a_value_is_refused_not_read_as_on(tmp_path):
    res = distill("run", base_toml(tmp_path), "--dry-run=no")
    assert res.returncode == 2 and "--dry-run takes no value (got --dry-run=no)" in res.stderr


def test_dry_run_checks_what_run_checks_before_it_starts(tmp_path):
    missing = tmp_path / "nope.jsonl"
    cfg = base_toml(tmp_path, f'[orchestrator.source]\ntype = "jsonl"\npath = "{missing}"\n')
    res = distill("run", cfg, "--dry-run")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f'path = "{missing}"' in res.stdout  # the resolved config first, as before
    assert "orchestrator.source.path" in res.stderr and "does not exist" in res.stderr
    missing.write_text('{"prompt": "fine"}\n{"prompt": \n')  # every line is read, as run reads it first
    res = distill("run", cfg, "--dry-run")
    assert res.returncode == 1 and f"{missing}:2: not valid JSON" in res.stderr, res.stderr
    res = distill("run", cfg, "--dry-run", "--student.path", tmp_path / "no-student")  # both said in one pass
    assert res.returncode == 1 and f"{missing}:2: not valid JSON" in res.stderr, res.stderr
    assert "run cannot start, 1 problem(s):\n  - student.path" in res.stderr and "Traceback" not in res.stderr
    res = distill("rollout", cfg)  # refused before the run dir is written (or a local teacher started)
    assert res.returncode == 1 and f"{missing}:2: not valid JSON" in res.stderr and not (tmp_path / "run").exists()
    _setup_existing_run(tmp_path)
    res = distill("run", base_toml(tmp_path), "--dry-run", "--no-resume")
    assert res.returncode == 1 and "already holds a run" in res.stderr
    res = distill("run", base_toml(tmp_path), "--dry-run")  # resuming it is fine
    assert res.returncode == 0 and "every check made before a run starts passed" in res.stderr, res.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["samples"]  # nothing written


def test_dry_run_checks_the_template_the_samples_so_far_and_the_inputs_as_the_run_would(tmp_path):
    """Each of these passed --dry-run and failed the run (QA pass 4)."""
    chat = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(chat) + "\n")
    cfg = base_toml(tmp_path, f'[orchestrator.source]\ntype = "replay"\npath = "{data}"\n')
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")  # no end-of-turn token
    res = distill("run", cfg, "--dry-run", "--student.chat_template", template)
    assert res.returncode == 1 and "cannot be used to build samples" in res.stderr, res.stderr
    assert distill("replay", cfg).returncode == 0  # samples built with the default train_roles
    res = distill("run", cfg, "--dry-run", "--orchestrator.reconstruction.train_roles", '["assistant", "user"]')
    assert res.returncode == 1 and "built with other settings" in res.stderr, res.stderr
    for text, says in [("", "holds no record to replay"), (json.dumps([chat]), "is one JSON array on one line")]:
        data.write_text(text)
        res = distill("run", cfg, "--dry-run", "--output_dir", tmp_path / "new")
        assert res.returncode == 1 and says in res.stderr, res.stderr
    res = distill("run", base_toml(tmp_path), "--dry-run", "--orchestrator.source.dataset", "nope_dataset")
    assert res.returncode == 1 and "reasoning-gym could not create 'nope_dataset'" in res.stderr, res.stderr
    assert not (tmp_path / "new").exists() and "Traceback" not in res.stderr


def test_dry_run_in_on_policy_mode_renders_the_prompts_as_the_loop_would(tmp_path):
    """On-policy mode renders every prompt with the student's reconstructor when the loop starts, leaving out
    (and counting) those it rejects: the dry run says the same, writes nothing, and fails where too few are left."""
    rows = [{"id": f"q{i}", "prompt": f"What is {i}+{i}?"} for i in range(4)] + [
        {"id": "bad", "prompt": "Say <|im_end|>"}
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = base_toml(
        tmp_path,
        f'[orchestrator.source]\ntype = "jsonl"\npath = "{tmp_path / "prompts.jsonl"}"\n'
        '[scorer]\ntype = "vllm"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        "[on_policy]\nenabled = true\nsamples_per_prompt = 2\n[trainer]\nsamples_per_step = 4\n"
        '[trainer.loss]\ntype = "reverse_kl"\n',
    )
    res = distill("run", cfg, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert (
        "on-policy: 1 of 5 prompts left out, as reconstruction would reject them (1 special_token_in_content"
        in res.stderr
    )
    res = distill("run", cfg, "--dry-run", "--trainer.samples_per_step", "10")
    assert res.returncode == 1 and "holds 4 training prompts the student can be given" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


URL_SECRET = "sk-proj-SECRET123abcdefghij"


def test_a_password_in_base_url_never_reaches_the_terminal_and_a_query_is_refused(tmp_path):
    url = f"http://user:{URL_SECRET}@127.0.0.1:18080/v1"
    res = distill("run", base_toml(tmp_path, f'[orchestrator.rollout_model]\nbase_url = "{url}"\n'), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "SECRET" not in res.stdout + res.stderr and 'base_url = "http://user:***@127.0.0.1:18080/v1"' in res.stdout
    for tail in (f"?api-key={URL_SECRET}", f"#{URL_SECRET}"):
        cfg = base_toml(tmp_path, f'[orchestrator.rollout_model]\nbase_url = "https://h.invalid/v1{tail}"\n')
        for extra in ([], ["--dry-run"]):
            res = distill("run", cfg, *extra)
            assert res.returncode == 2 and "Traceback" not in res.stderr
            assert "orchestrator.rollout_model.base_url" in res.stderr and "api_key_var" in res.stderr
            assert "SECRET" not in res.stdout + res.stderr
    cfg = base_toml(tmp_path, '[orchestrator.rollout_model]\nbase_url = "https://h.invalid/v1/chat/completions"\n')
    res = distill("run", cfg, "--dry-run")
    assert res.returncode == 2 and 'did you mean "https://h.invalid/v1"?' in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scorer", [[], ["--scorer", "vllm"]])
def test_probe_refuses_a_key_pasted_as_api_key_var_without_echoing_it(scorer):
    res = distill("probe", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-var", URL_SECRET, *scorer)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--api-key-var" in res.stderr and "not an environment variable name" in res.stderr
    assert "SECRET" not in res.stdout + res.stderr


def test_probe_refuses_a_query_in_the_url_and_masks_a_password():
    res = distill("probe", f"http://127.0.0.1:9/v1?api-key={URL_SECRET}", "--model", "m")
    assert res.returncode == 2 and "query string" in res.stderr and "Traceback" not in res.stderr
    assert "SECRET" not in res.stdout + res.stderr
    res = distill("probe", f"http://user:{URL_SECRET}@127.0.0.1:{free_port()}/v1", "--model", "m")
    assert res.returncode == 1 and "user:***@127.0.0.1" in res.stderr
    assert "SECRET" not in res.stdout + res.stderr


def test_keys_in_headers_and_extra_body_reach_the_teacher_but_no_file_or_terminal(tmp_path, smol_tokenizer_dir):
    from support.fault_server import FaultServer, write_prompts

    secrets = {
        "header": "sk-hdr-Q1w2E3r4T5y6U7i8",
        "body": "sk-body-Z9x8C7v6B5n4M3l2",
        "nested": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "random": "aZ3kP9qL2mX7vB4nR8tY1wE6",
    }
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 2)
    with FaultServer() as server:
        cfg = base_toml(
            tmp_path,
            f"""
[student]
tokenizer = "{smol_tokenizer_dir}"
[orchestrator.rollout_model]
base_url = "{server.base_url}"
model = "fault-teacher"
headers = {{X-Custom = "{secrets["header"]}"}}
[orchestrator.sampling]
max_tokens = 16
extra_body = {{route = "{secrets["body"]}", cache_id = "{secrets["random"]}", \
provider = {{order = ["a"], auth_line = ["{secrets["nested"]}"]}}}}
[orchestrator.source]
type = "jsonl"
path = "{prompts}"
""",
        )
        dry = distill("run", cfg, "--dry-run")
        res = distill("rollout", cfg)
        sent = server.log.entries
    assert dry.returncode == 0 and res.returncode == 0, dry.stderr + res.stderr
    assert sent and sent[0]["body"]["route"] == secrets["body"]  # sent as configured, only never written
    run_dir = tmp_path / "run"
    assert (run_dir / "recording.jsonl").is_file() and (run_dir / "config.toml").is_file()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    for name, secret in secrets.items():
        for text, where in [(dry.stdout + dry.stderr, "dry-run"), (res.stdout + res.stderr, "terminal")] + [
            (p.read_bytes().decode("utf-8", "replace"), str(p)) for p in files
        ]:
            assert secret not in text, (name, where)
    rec = json.loads((run_dir / "recording.jsonl").read_text().splitlines()[0])
    assert rec["sampling"]["extra_body"]["route"] == "<redacted>"
    assert rec["sampling"]["extra_body"]["provider"]["order"] == ["a"]  # ordinary values kept


def test_tokenizer_flag_mistakes_name_the_folder(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"messages": []}\n')
    for tok, says in [(tmp_path / "nope", "does not exist"), ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub id")]:
        res = distill("tokenize", "--tokenizer", tok, src, "-o", tmp_path / "out.jsonl")
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith("distill: ") and says in res.stderr and str(tok) in res.stderr


def test_every_subclass_of_a_user_error_is_a_user_error():
    """main() matches user errors by class name, so a subclass of a registered one (TableSourceError of
    PromptSourceError) must be registered too, or it escapes as a traceback."""
    import ast

    from distill.cli_errors import USER_ERRORS

    missing = []
    for pkg in ("distill", "orchestrator", "trainer"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                    if bases & USER_ERRORS and node.name not in USER_ERRORS:
                        missing.append(f"{f.relative_to(ROOT)}: {node.name}")
    assert "TableSourceError" in USER_ERRORS
    assert not missing, missing


def test_a_table_source_error_raised_after_preflight_is_one_line_exit_1(tmp_path):
    """The table is read at preflight; one that turns unreadable afterwards raises TableSourceError in
    the run: main() reports it like every user error (one line, exit 1, no traceback)."""
    import contextlib
    import io

    from distill import cli
    from distill.core.config import load_config
    from orchestrator.prompt_tables import open_table

    table = tmp_path / "t.csv"
    table.write_text("prompt\nhi\n")

    def read_then_lose_table(args):  # a real command body: the file goes away between checks and reading
        table.unlink()
        src = base_toml(tmp_path, f'[orchestrator.source]\ntype = "table"\npath = "{table}"\n')
        open_table(load_config(src).orchestrator.source)

    cli.COMMANDS["lose-table"] = read_then_lose_table
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["lose-table"])
    finally:
        del cli.COMMANDS["lose-table"]
    assert code == 1
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("distill: orchestrator.source.path: ")
    assert "does not exist" in err.getvalue()


@pytest.mark.parametrize(
    "model_path, names",
    [
        ("builtin:smollm2-135m-instruct-weak", ["is a student only", "has no GGUF"]),
        ("{tmp}/teacher.gguf", ["teacher.gguf does not exist"]),
    ],
)
def test_local_teacher_model_path_without_a_gguf_names_the_key_and_the_fix(tmp_path, model_path, names):
    res = distill(
        "rollout",
        base_toml(tmp_path),
        "--orchestrator.local_teacher.enabled",
        "true",
        "--orchestrator.local_teacher.model_path",
        model_path.format(tmp=tmp_path),
    )
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("distill: orchestrator.local_teacher.model_path: ") and res.stderr.count("\n") == 1
    for name in [*names, "Fix: set it to 'builtin:smollm2-135m-instruct'"]:
        assert name in res.stderr, (name, res.stderr)
    assert not list((tmp_path / "run").glob("samples/*.jsonl"))  # nothing rolled out


@pytest.mark.parametrize(
    "args,names",
    [
        (["repaly"], ["unknown command 'repaly' (did you mean 'replay'?)"]),
        (
            ["run", "examples/quickstart.toml", "--dry-rn", "--trainer.max_steps", "2"],
            ["--dry-rn (did you mean --dry-run?)"],
        ),
        (["rollout", "examples/quickstart.toml", "--no-resume"], ["unknown option --no-resume (its options:"]),
        (["rollout", "examples/quickstart.toml", "--seeds", "1"], ["unknown option --seeds (did you mean --seed?)"]),
        (["replay", "examples/data/chat.jsonl"], ["looks like a data file, not a TOML config", "distill replay"]),
        (["run", "{tmp}", "--dry-run"], ["is a folder. Fix: pass a TOML config path"]),
    ],
)
def test_misspelled_commands_options_and_a_data_file_first_are_usage_errors(tmp_path, args, names):
    res = distill(*(a.format(tmp=tmp_path) for a in args))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    for name in names:
        assert name.format(tmp=tmp_path) in res.stderr, (name, res.stderr)


def test_train_without_a_producer_says_it_waits_then_fails_naming_the_timeout(tmp_path):
    """`distill train` on a samples folder nobody writes (no DONE marker): a line says that it waits for
    a producer; after trainer.sample_timeout one `distill:` line names the key and the fix, exit 1."""
    (tmp_path / "run" / "samples").mkdir(parents=True)
    cfg = base_toml(tmp_path, "[trainer]\nmax_steps = 1\nsample_timeout = 1\n")
    res = distill("train", cfg)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "has 0 sample(s) and no DONE marker yet" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distill: no new samples in") and res.stderr.count("distill: ") == 1, res.stderr
    assert "trainer.sample_timeout" in last and "distill rollout CFG" in last


def test_paths_the_os_refuses_are_one_line_naming_the_path(tmp_path, smol_tokenizer_dir):
    """An output under a file, or in a folder the OS will not create (/proc): one `distill:` line naming the
    path and what to check, exit 1, no errno traceback."""
    (tmp_path / "afile").write_text("x\n")
    data = ROOT / "examples" / "data" / "chat.jsonl"
    res = distill("tokenize", "--tokenizer", smol_tokenizer_dir, data, "-o", tmp_path / "afile" / "out.jsonl")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("distill: ") == 1 and f"cannot use {tmp_path / 'afile'}: a file is there" in res.stderr
    cfg = base_toml(tmp_path, f'[orchestrator.source]\ntype = "replay"\npath = "{data}"\n')
    res = distill("replay", cfg, "--output_dir", "/proc/distill-no-such-run")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("distill: ") == 1 and "/proc/distill-no-such-run" in res.stderr
