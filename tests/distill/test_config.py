"""Run config: TOML parsing, overrides (CLI and env), unknown keys, mode validation, secrets."""

from __future__ import annotations

import glob
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.core.config import (
    ConfigError,
    RunConfig,
    api_key,
    load_config,
    parse_overrides,
    read_toml,
    redacted_dict,
    to_toml,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid_and_resolved():
    cfg = load_config(None)
    assert cfg.trainer.loss.type == "sft"
    # derived in resolve(): reconstruction length follows the trainer's sequence length
    assert cfg.orchestrator.reconstruction.max_seq_len == cfg.trainer.seq_len


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "examples" / "*.toml"))))
def test_every_example_parses(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # the SFT examples train with sft; examples/on_policy.toml with reverse_kl on the student's samples
    assert cfg.trainer.loss.type == ("reverse_kl" if cfg.on_policy.enabled else "sft")
    # and the resolved config round-trips through our TOML writer (what checkpoints store)
    again = load_config(write(tmp_path, to_toml(redacted_dict(cfg))))
    assert again.model_dump() == cfg.model_dump()


def test_examples_exist():
    assert (ROOT / "examples" / "quickstart.toml").is_file()


def test_toml_values_and_cli_overrides(tmp_path):
    p = write(
        tmp_path,
        """
output_dir = "runs/a"
[trainer.optim]
lr = 3e-4
warmup_steps = 2
[orchestrator.sampling]
temperature = 0.5
""",
    )
    cfg = load_config(
        p, ["--trainer.optim.lr", "1e-5", '--orchestrator.sampling.stop=["###"]', "--trainer.max-steps", "3"]
    )
    assert cfg.trainer.optim.lr == 1e-5  # CLI beats TOML
    assert cfg.trainer.optim.warmup_steps == 2  # untouched sibling survives the nested override
    assert cfg.trainer.max_steps == 3  # dashes accepted for underscores
    assert cfg.orchestrator.sampling.stop == ["###"]
    assert cfg.orchestrator.sampling.temperature == 0.5


def test_configs_loaded_from_threads_at_once_keep_their_own_toml(tmp_path):
    # The TOML data reaches pydantic-settings through a context variable, not a global.
    import threading

    paths = [
        write(tmp_path, name=f"cfg{i}.toml", text=f'output_dir = "runs/{i}"\n[trainer.optim]\nwarmup_steps = {i}\n')
        for i in range(8)
    ]
    barrier, got, errors = threading.Barrier(len(paths)), {}, []

    def load(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(20):
                cfg = load_config(paths[i])
                got.setdefault(i, set()).add((cfg.output_dir, cfg.trainer.optim.warmup_steps))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert got == {i: {(f"runs/{i}", i)} for i in range(len(paths))}


def test_env_overrides_toml_and_cli_overrides_env(tmp_path, monkeypatch):
    p = write(tmp_path, "[trainer]\nmax_steps = 5\nseq_len = 512\n")
    monkeypatch.setenv("DISTILL_TRAINER__MAX_STEPS", "7")
    assert load_config(p).trainer.max_steps == 7
    assert load_config(p).trainer.seq_len == 512
    assert load_config(p, ["--trainer.max_steps", "9"]).trainer.max_steps == 9


def test_an_env_var_naming_no_section_is_refused_not_ignored(tmp_path, monkeypatch):
    p = write(tmp_path, "[trainer]\nseq_len = 512\n")
    monkeypatch.setenv("DISTILL_TRAINR__MAX_STEPS", "3")
    monkeypatch.setenv("DISTILL_VERBOSE", "1")  # no section separator: not a config variable, left alone
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.source == "environment variable DISTILL_TRAINR__MAX_STEPS"
    assert "(did you mean DISTILL_TRAINER__...?): names no config section" in str(ei.value)
    monkeypatch.delenv("DISTILL_TRAINR__MAX_STEPS")
    monkeypatch.setenv("DISTILL_TRAINER__MAX_STEPS", "3")
    assert load_config(p).trainer.max_steps == 3


@pytest.mark.parametrize("var, meant", [("DISTILL_OUTPUTDIR", "DISTILL_OUTPUT_DIR"), ("DISTILL_SEEDS", "DISTILL_SEED")])
def test_a_misspelt_top_level_env_var_is_refused(tmp_path, monkeypatch, var, meant):
    """It had no effect: the run went to the config's output_dir. Other DISTILL_ variables still pass."""
    monkeypatch.setenv(var, "1")
    monkeypatch.setenv("DISTILL_VERBOSE", "1")
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, ""))
    assert f"{var} (did you mean {meant}?)" in str(ei.value) and "DISTILL_VERBOSE" not in str(ei.value)


def test_only_user_set_sampling_fields_are_sent(tmp_path):
    cfg = load_config(write(tmp_path, "[orchestrator.sampling]\ntemperature = 0.0\nmax_tokens = 16\n"))
    assert cfg.orchestrator.sampling.request_args() == {"temperature": 0.0, "max_tokens": 16}
    assert load_config(None).orchestrator.sampling.request_args() == {}


def test_override_parsing():
    assert parse_overrides(["--a.b", "1", "--a.c=true", "--d", "hello world", "--e", "[1, 2]"]) == {
        "a": {"b": 1, "c": True},
        "d": "hello world",
        "e": [1, 2],
    }
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--a.b"])
    with pytest.raises(ConfigError, match="expected --key.path"):
        parse_overrides(["a.b", "1"])


def test_unknown_keys_are_errors_with_their_path(tmp_path):
    p = write(tmp_path, "[trainer]\nmax_step = 3\n[orchestrator.sampling]\ntemprature = 1.0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    keys = {pr.key for pr in ei.value.problems}
    assert keys == {"trainer.max_step", "orchestrator.sampling.temprature"}
    assert "unknown key" in str(ei.value) and str(p) in str(ei.value)


@pytest.mark.parametrize(
    "toml, key, kind, owners",
    [
        (
            '[orchestrator.source]\ntype = "table"\npath = "t.csv"\nsize = 3\n',
            "size",
            "source type 'table'",
            "'reasoning_gym', 'jsonl', 'replay'",
        ),
        (
            '[orchestrator.source]\ntype = "jsonl"\npath = "p.jsonl"\nlimit = 3\n',
            "limit",
            "source type 'jsonl'",
            "'table', 'hf_dataset'",
        ),
        (
            '[orchestrator.source]\ntype = "jsonl"\npath = "p.jsonl"\ncolumns = {prompt = "q"}\n',
            "columns",
            "source type 'jsonl'",
            "'table', 'hf_dataset'",
        ),
        ('[trainer.loss]\ntype = "sft"\ngamma = 0.5\n', "gamma", "loss type 'sft'", "'iw_opd'"),
        ('[scorer]\ntype = "vllm"\necho_max_tokens = 0\n', "echo_max_tokens", "scorer type 'vllm'", "'echo'"),
    ],
)
def test_a_key_of_another_union_type_names_the_types_that_have_it(tmp_path, toml, key, kind, owners):
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, toml))
    section = {"loss": "trainer.loss", "source": "orchestrator.source", "scorer": "scorer"}[kind.split()[0]]
    (msg,) = [pr.message for pr in ei.value.problems if pr.key == f"{section}.{key}"]
    assert msg == (
        f"{section}.{key} is not a key of {kind}; it is one of type {owners}. Fix: remove it, or set "
        f"{section}.type to one of those if that is the {kind.split()[0]} you meant"
    ), msg
    assert "did you mean" not in msg


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--trainer.optim.lr", "-1", "--orchestrator.concurrency", "zero"])
    keys = {pr.key for pr in ei.value.problems}
    assert keys == {"trainer.optim.lr", "orchestrator.concurrency"}


@pytest.mark.parametrize(
    "toml, args, key",
    [
        ("[trainer]\nmax_steps = true\n", [], "trainer.max_steps"),  # int
        ("", ["--trainer.optim.lr", "true"], "trainer.optim.lr"),  # float
        (
            "",
            ["--orchestrator.budget.max_completion_tokens", "false"],
            "orchestrator.budget.max_completion_tokens",
        ),  # optional
    ],
)
def test_a_boolean_is_no_number(tmp_path, toml, args, key):
    """pydantic's lax mode would read `lr = true` as 1.0 and `max_steps = true` as 1: refused, naming the key
    and where it was set."""
    p = write(tmp_path, toml)
    with pytest.raises(ConfigError) as ei:
        load_config(p, args)
    [problem] = ei.value.problems
    assert problem.key == key and problem.message.startswith("expected a number, got the boolean"), problem
    assert ei.value.source == ("command line" if args else str(p))
    assert load_config(p, [*args[:1], "2"] if args else ["--trainer.max_steps", "2"])  # numbers still do
    assert load_config(None, ["--trainer.packing", "false"]).trainer.packing is False  # booleans where they belong


def test_a_cross_check_names_the_command_line_when_its_key_was_set_there(tmp_path):
    p = write(tmp_path, "[trainer]\nseq_len = 512\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, ["--trainer.loss.type", "grpo"])
    assert ei.value.source == "command line" and str(p) not in str(ei.value)
    assert "trainer.loss.type" in str(ei.value) and "[set on the command line]" in str(ei.value)


def test_toml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="line"):
        load_config(write(tmp_path, "[trainer\nmax_steps = 1\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_a_config_read_from_a_pipe(tmp_path, monkeypatch):
    """`distill run <(envsubst < cfg.toml)`: /dev/fd/N is a pipe, not a regular file; it was called missing."""
    import threading

    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("[trainer]\nmax_steps = 7\n"))
    writer.start()
    try:
        assert load_config(fifo).trainer.max_steps == 7
    finally:
        writer.join(10)
    # a relative chat template in it is read from the working folder, as the pipe has no folder of its own
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    monkeypatch.chdir(tmp_path.parent)  # proves the working folder is used (the fifo's own would be tmp_path)
    writer = threading.Thread(target=lambda: fifo.write_text(f'[student]\nchat_template = "{tmp_path.name}/t.jinja"\n'))
    writer.start()
    try:
        assert load_config(fifo).student.chat_template == str(tmp_path / "t.jinja")
    finally:
        writer.join(10)


@pytest.mark.parametrize(
    "toml, says",
    [
        (
            "[orchestrator.rollout_model]\nmodel = gpt-4o\n",
            'line 2, column 9): model = gpt-4o. Fix: a string value is quoted: model = "gpt-4o"',
        ),
        ("[trainer]\nrepeat = True\n", "Fix: TOML booleans are lowercase: repeat = true"),
        ("[trainer]\nmax_steps = 1\nmax_steps = 2\n", ": max_steps = 2. Fix the TOML syntax at that line"),
    ],
)
def test_a_toml_syntax_error_shows_its_line_and_the_usual_fix(tmp_path, toml, says):
    assert says in config_error(tmp_path, toml)


def config_error(tmp_path, toml: str) -> str:
    """The ConfigError message of a config file holding `toml` (it must fail)."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, toml))
    return str(e.value)


def test_a_config_that_is_not_utf8_says_so(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[orchestrator.rollout_model]\nmodel = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 41\). Fix: save it as UTF-8"):
        load_config(p)


@pytest.mark.parametrize(
    "key, meant",
    [
        ("batch_size", "trainer.samples_per_step"),
        ("learning_rate", "trainer.optim.lr"),
        ("max_seq_length", "trainer.seq_len"),
    ],
)
def test_another_trainers_name_for_a_key_suggests_ours(tmp_path, key, meant):
    assert f"did you mean {meant}?" in config_error(tmp_path, f"[trainer]\n{key} = 8\n")


def test_a_misspelt_table_is_matched_by_its_keys(tmp_path):
    """`[trainers] tensorboard = true` meant [trackers]: it was "did you mean trainer.seed?"."""
    assert "did you mean trackers.tensorboard?" in config_error(tmp_path, "[trainers]\ntensorboard = true\n")


@pytest.mark.parametrize(
    "toml, says",
    [
        (
            "[trackers.tensorbord]\n",
            "did you mean trackers.tensorboard? It is a setting, not a table. "
            "Fix: write tensorboard = ... under [trackers]",
        ),
        ("[seeds]\n", "did you mean seed? It is a setting, not a table. Fix: write seed = ... at the top of the file"),
        ("[trackers.tensorboard]\n", "trackers.tensorboard: is a setting, not a table ([trackers.tensorboard]). "),
        ("[trainer.max_steps]\nvalue = 3\n", "Fix: write max_steps = ... under [trainer]"),
        ("[trainer.loss.type]\n", "trainer.loss.type: is a setting, not a table"),  # was a TypeError traceback
        ("[orchestrator.source.type]\n", "orchestrator.source.type is a setting, not a table"),
        ('student = "builtin:smollm2-135m-instruct"\n', "student is a table, not a setting (got str "),
        ("trainer = 5\n", "Fix: write [trainer] and its keys below it"),
    ],
)
def test_a_table_where_a_setting_is_meant_is_told_so(tmp_path, toml, says):
    assert says in config_error(tmp_path, toml)


@pytest.mark.parametrize("section", ["student", "trainer", "trainer.loss", "orchestrator.source"])
def test_an_array_of_tables_where_one_table_is_read_says_single_brackets(tmp_path, section):
    """`[[trainer]]` (TOML's array of tables) gave pydantic's "Input should be a valid dictionary"."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f'[[{section}]]\ntype = "sft"\n'))
    assert f"{section} is written as a list of tables ([[{section}]], double brackets); it is one table. " in str(
        e.value
    ) and f"Fix: write [{section}] (single brackets)" in str(e.value)
    assert "Input should be" not in str(e.value)


def test_a_table_set_whole_on_the_command_line_or_in_a_variable_is_told_to_set_its_keys(tmp_path, monkeypatch):
    """No TOML brackets to correct there: the fix is in the form the value was given in."""
    p = write(tmp_path, "")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["--student", '[{"path": "x"}]'])
    assert "student is a table, not a setting" in str(e.value) and "e.g. --student.path VALUE" in str(e.value)
    assert "[[student]]" not in str(e.value) and "[set on the command line]" in str(e.value)
    monkeypatch.setenv("DISTILL_STUDENT", '[{"path": "x"}]')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "student is one table, not a list of them. Fix: set its keys one at a time, e.g. " in str(e.value)
    assert "DISTILL_STUDENT__PATH=VALUE" in str(e.value) and "double brackets" not in str(e.value)
    monkeypatch.delenv("DISTILL_STUDENT")
    monkeypatch.setenv("DISTILL_TRAINER__LOSS", '{"type": {"a": 1}}')  # a section's variable holds JSON
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "trainer.loss.type: is a setting, not a table" in str(e.value)
    assert "set it to one value, e.g. DISTILL_TRAINER__LOSS__TYPE=VALUE" in str(e.value)
    monkeypatch.delenv("DISTILL_TRAINER__LOSS")
    monkeypatch.setenv("DISTILL_STUDENT", "builtin:x")  # a top-level table's variable given a plain value
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "DISTILL_STUDENT: student is a table, not a setting (got str 'builtin:x')" in str(e.value)
    assert "e.g. DISTILL_STUDENT__PATH=VALUE" in str(e.value) and "not valid JSON" not in str(e.value)
    monkeypatch.setenv("DISTILL_STUDENT", '{"path": ')  # JSON cut short stays "not valid JSON"
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "DISTILL_STUDENT: is not valid JSON" in str(e.value)


@pytest.mark.parametrize(
    "toml, other",
    [
        ("[orchestrator.local_teacher]\nenabled = true\n", "orchestrator.local_teacher.enabled = true"),
        ('[orchestrator.source]\ntype = "replay"\npath = "x.jsonl"\n', 'orchestrator.source.type = "replay"'),
    ],
)
def test_the_batch_api_with_a_local_teacher_or_replay_is_refused_when_the_config_loads(tmp_path, toml, other):
    """It was refused only once the run dir was written (and the local teacher started)."""
    text = config_error(tmp_path, "[orchestrator.batch]\nenabled = true\n" + toml)
    assert f"orchestrator.batch.enabled: is true, which does not go with {other}" in text


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["--orchestrator.source", "replay"],
            "orchestrator.source is a table, not a setting (got str 'replay'). "
            "Fix: set its keys one at a time, e.g. --orchestrator.source.type VALUE; its kinds (one of 'reasoning_gym'",
        ),
        (["--scorer", "x"], "e.g. --scorer.type VALUE; its kinds (one of 'vllm', 'sglang', 'echo')"),
        (["--scorer.api_key_var", "X"], "[scorer] says which kind it is with its type key (one of 'vllm', "),
        (
            ["--orchestrator.source.type", "nope"],
            "orchestrator.source.type 'nope' is not a kind of "
            "[orchestrator.source] (one of 'reasoning_gym', 'jsonl', 'replay', 'table', 'hf_dataset')",
        ),
    ],
)
def test_a_table_keyed_on_type_is_told_its_kinds_not_pydantics_discriminator(tmp_path, overrides, says):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ""), overrides)
    assert says in str(e.value) and "discriminator" not in str(e.value) and "_source_tag" not in str(e.value)


# --- mode validation: external teacher => SFT only, no weight broadcast, no token client ---

FORBIDDEN = {
    "loss": ("trainer.loss.type", '[trainer.loss]\ntype = "reverse_kl"\n'),
    "broadcast": ("weight_broadcast.type", '[weight_broadcast]\ntype = "filesystem"\n'),
    "token_client": ("orchestrator.rollout_model.client", '[orchestrator.rollout_model]\nclient = "tokens"\n'),
    "token_ids_in_body": (
        "orchestrator.sampling.extra_body.prompt_token_ids",
        "[orchestrator.sampling]\nextra_body = {prompt_token_ids = [1, 2]}\n",
    ),
}


@pytest.mark.parametrize("r", range(1, len(FORBIDDEN) + 1))
def test_every_forbidden_combination_is_rejected_all_at_once(tmp_path, r):
    for combo in itertools.combinations(FORBIDDEN, r):
        # merge the TOML snippets of this combination (tables may repeat only once)
        text = "".join(FORBIDDEN[k][1] for k in combo)
        p = write(tmp_path, text, f"{'-'.join(combo)}.toml")
        with pytest.raises(ConfigError) as ei:
            load_config(p)
        keys = [pr.key for pr in ei.value.problems]
        assert sorted(keys) == sorted(FORBIDDEN[k][0] for k in combo), combo
        for pr in ei.value.problems:
            assert "Fix:" in pr.message and "external endpoint" in pr.message


@pytest.mark.parametrize("loss", ["forward_kl", "grpo", "dpo", "something_new"])
def test_any_non_sft_loss_is_rejected(loss):
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--trainer.loss.type", loss])
    assert [p.key for p in ei.value.problems] == ["trainer.loss.type"]
    assert loss in str(ei.value)


def test_mode_check_also_guards_python_construction():
    # Constructing the config in code cannot bypass the check either.
    with pytest.raises(Exception, match="trainer.loss.type"):
        RunConfig(trainer={"loss": {"type": "grpo"}})


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(
            None,
            [
                "--orchestrator.reconstruction.max_seq_len",
                "4096",
                "--trainer.seq_len",
                "1024",
                "--orchestrator.source.type",
                "jsonl",
                "--orchestrator.local_teacher.enabled",
                "true",
                "--orchestrator.local_teacher.port",
                "9000",
                "--orchestrator.budget.max_cost",
                "5",
            ],
        )
    keys = sorted(p.key for p in ei.value.problems)
    assert keys == sorted(
        [
            "orchestrator.reconstruction.max_seq_len",
            "orchestrator.source.path",
            "orchestrator.rollout_model.base_url",
            "orchestrator.budget.max_cost",
        ]
    )


def test_a_scorer_max_cost_without_a_price_is_refused_naming_the_key(tmp_path):
    """D4: like orchestrator.budget.max_cost; before, it was accepted and scoring never stopped."""
    base = '[scorer]\ntype = "vllm"\n[scorer.budget]\nmax_cost = 0.000001\n'
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, base))
    assert [p.key for p in ei.value.problems] == ["scorer.budget.max_cost"]
    assert "Fix: set scorer.budget.cost_per_1k_prompt" in ei.value.problems[0].message
    cfg = load_config(write(tmp_path, base + "cost_per_1k_prompt = 0.5\n", "priced.toml"))
    assert cfg.scorer is not None and cfg.scorer.budget.max_cost == 0.000001


@pytest.mark.parametrize("loss", ["topk_kl", "reverse_kl"])
def test_a_replay_without_a_teacher_does_not_name_the_default_url(loss):
    """D7: the default rollout_model.base_url was never set by the user; a replay has no teacher endpoint."""
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--orchestrator.source.type", "replay", "--trainer.loss.type", loss])
    msg = ei.value.problems[0].message
    assert "8765" not in msg and "external endpoint" not in msg
    assert 'replayed from files (orchestrator.source.type = "replay") that hold messages only' in msg
    with pytest.raises(ConfigError) as ei:  # a teacher the user did configure is still named
        load_config(
            None,
            ["--orchestrator.source.type", "replay", "--trainer.loss.type", loss]
            + ["--orchestrator.rollout_model.base_url", "http://teacher.example:9000/v1"],
        )
    assert "external endpoint (http://teacher.example:9000/v1)" in ei.value.problems[0].message


def test_replay_source_may_leave_its_path_to_the_command_line():
    """`distill replay CFG INPUT...` passes the inputs; replay itself names the key when there are none."""
    cfg = load_config(None, ["--orchestrator.source.type", "replay"])
    assert cfg.orchestrator.source.path is None


def test_local_teacher_replicas_derive_extra_urls():
    cfg = load_config(
        None, ["--orchestrator.local_teacher.enabled", "true", "--orchestrator.local_teacher.replicas", "3"]
    )
    assert cfg.orchestrator.rollout_model.extra_base_urls == ["http://127.0.0.1:8766/v1", "http://127.0.0.1:8767/v1"]


# --- secrets ---


def test_api_key_is_read_from_the_named_env_var_and_never_dumped(tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("MY_TEACHER_KEY", secret)
    p = write(
        tmp_path,
        """
[orchestrator.rollout_model]
base_url = "https://example.invalid/v1"
api_key_var = "MY_TEACHER_KEY"
headers = {Authorization = "Bearer sk-header-secret", X-Team = "ml"}
""",
    )
    cfg = load_config(p)
    assert api_key(cfg) == secret
    dumped = to_toml(redacted_dict(cfg))
    assert secret not in dumped and "sk-header-secret" not in dumped
    assert "MY_TEACHER_KEY" in dumped and '"X-Team" = "<redacted>"' in dumped  # every header value
    monkeypatch.delenv("MY_TEACHER_KEY")
    with pytest.raises(ConfigError, match="MY_TEACHER_KEY"):
        api_key(cfg)


def test_cli_dry_run_prints_resolved_config_redacted(tmp_path):
    p = write(
        tmp_path,
        """
[orchestrator.rollout_model]
base_url = "https://example.invalid/v1"
api_key_var = "K"
headers = {api-key = "sk-in-a-header"}
""",
    )
    env = dict(os.environ, K="sk-env-secret")
    out = subprocess.run(
        [sys.executable, "-m", "distill", "run", str(p), "--dry-run", "--trainer.optim.lr", "1e-5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "lr = 1e-05" in out.stdout
    assert "max_seq_len = 1024" in out.stdout  # resolved, not just echoed
    assert "sk-in-a-header" not in out.stdout and "sk-env-secret" not in out.stdout
    assert read_toml(write(tmp_path, out.stdout, "dumped.toml"))["orchestrator"]["rollout_model"]["headers"] == {
        "api-key": "<redacted>"
    }


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    p = write(tmp_path, '[trainer.loss]\ntype = "grpo"\n[weight_broadcast]\ntype = "nccl"\n')
    out = subprocess.run([sys.executable, "-m", "distill", "run", str(p)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "trainer.loss.type" in out.stderr and "weight_broadcast.type" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_module_imports_no_torch():
    code = "import sys, distill.core.config, distill.core.contract; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False False", out.stderr


def test_configuration_reference_is_generated_from_the_code():
    """docs/configuration.md is regenerated from config.py; every key has a meaning."""
    out = subprocess.run(
        [sys.executable, "scripts/gen_config_doc.py", "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    undocumented = [
        line
        for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
        if line.startswith("| `") and line.rstrip().endswith("|  |")
    ]
    assert not undocumented, undocumented


def test_cross_checks_that_would_deadlock_or_reject_everything():
    with pytest.raises(ConfigError) as ei:
        load_config(
            None,
            [
                "--trainer.samples_per_step",
                "600",
                "--trainer.eval_every",
                "5",
                "--orchestrator.reconstruction.train_roles",
                '["Assistant"]',
            ],
        )
    by_key = {p.key: p.message for p in ei.value.problems}
    assert set(by_key) == {"orchestrator.max_ahead", "trainer.eval_samples", "orchestrator.reconstruction.train_roles"}
    assert "max_ahead >= 600" in by_key["orchestrator.max_ahead"]
    cfg = load_config(
        None,
        [
            "--trainer.samples_per_step",
            "600",
            "--orchestrator.max_ahead",
            "700",
            "--trainer.eval_every",
            "5",
            "--trainer.eval_samples",
            "50",
        ],
    )
    assert cfg.orchestrator.max_ahead == 700


def test_redacted_dict_walks_nested_values_and_redacts_every_header(tmp_path):
    p = write(
        tmp_path,
        """
[orchestrator.rollout_model]
base_url = "https://example.invalid/v1"
api_key_var = "K"
headers = {Ocp-Apim-Subscription-Key = "sk-azure-hdr", X-Team = "ml"}

[orchestrator.sampling]
max_tokens = 64
extra_body = {min_tokens = 3, skip_special_tokens = false, provider = {api_key = "sk-nested", order = ["a"]}, routes = [{name = "r", access_token = "sk-in-list"}], bearer = "sk-flat"}
""",
    )
    d = redacted_dict(load_config(p))
    assert "sk-" not in to_toml(d)
    assert d["orchestrator"]["rollout_model"]["headers"] == {
        "Ocp-Apim-Subscription-Key": "<redacted>",
        "X-Team": "<redacted>",
    }
    assert d["orchestrator"]["rollout_model"]["api_key_var"] == "K"
    eb = d["orchestrator"]["sampling"]["extra_body"]
    assert eb["min_tokens"] == 3 and eb["skip_special_tokens"] is False and eb["bearer"] == "<redacted>"
    assert eb["provider"] == {"api_key": "<redacted>", "order": ["a"]}
    assert eb["routes"] == [{"name": "r", "access_token": "<redacted>"}]
    assert d["orchestrator"]["sampling"]["max_tokens"] == 64


def test_secret_key_rule_is_by_whole_parts():
    from distill.core.redact import is_secret_key

    for k in (
        "api_key",
        "apikey",
        "api-key",
        "API_KEY",
        "apiKey",
        "Authorization",
        "client_secret",
        "password",
        "Cookie",
        "token",
        "access_token",
        "x-auth-token",
        "bearer",
        "Ocp-Apim-Subscription-Key",
    ):
        assert is_secret_key(k), k
    for k in (
        "min_tokens",
        "max_new_tokens",
        "skip_special_tokens",
        "stop_token_ids",
        "max_tokens",
        "max_completion_tokens",
        "return_token_ids",
        "pad_token",
        "tokenizer",
        "tokens_per_minute",
        "api_key_var",
        "prompt_cache_key",
        "temperature",
    ):
        assert not is_secret_key(k), k


def test_values_that_look_like_keys_are_redacted_under_any_key():
    from distill.core.redact import looks_like_secret

    for v in (
        "sk-proj-Abc123DEF456ghi789",
        "Bearer abcdefgh12345678",
        "hf_abcdefghijklmnopqrstuv",
        "AKIAIOSFODNN7EXAMPLE",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        "xGXcVhdMsywEAFT42CtSOAsuU4m43TA6",
        "61e9bf11cbc932e4ea35aac65e7a8632",
    ):
        assert looks_like_secret(v), v
    for v in (
        "meta-llama-Meta-Llama-3-8B-Instruct",
        "HuggingFaceTB-SmolLM2-135M-Instruct-Q4_1",
        "gpt-4o-mini-2024-07-18",
        "http://127.0.0.1:8765/v1",
        "runs/ckpt-61e9bf11cbc932e4ea35aac65e7a8632",
        "sk-short",
        "auto",
        "orchestrator.rewards:gsm_symbolic_score",
        "You are a helpful assistant. Answer briefly and exactly.",
    ):
        assert not looks_like_secret(v), v
    cfg = load_config(None, ["--orchestrator.sampling.extra_body", '{route = "sk-body-Z9x8C7v6B5n4M3l2", top_k = 5}'])
    eb = redacted_dict(cfg)["orchestrator"]["sampling"]["extra_body"]
    assert eb == {"route": "<redacted>", "top_k": 5}
    assert cfg.orchestrator.sampling.extra_body["route"] == "sk-body-Z9x8C7v6B5n4M3l2"  # still sent as set


@pytest.mark.parametrize("value", ["sk-abc-123", "my-key", "9LIVES", "A B"])
def test_api_key_var_must_be_a_variable_name_and_is_never_echoed(value):
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--orchestrator.rollout_model.api_key_var", f'"{value}"'])
    assert [p.key for p in ei.value.problems] == ["orchestrator.rollout_model.api_key_var"]
    assert value not in str(ei.value)
    assert load_config(None, ["--orchestrator.rollout_model.api_key_var", "_My_KEY2"])


URL_SECRET = "sk-proj-SECRET123abcdef"


@pytest.mark.parametrize(
    "key, table",
    [
        ("orchestrator.rollout_model.base_url", {"orchestrator": {"rollout_model": {"base_url": "{u}"}}}),
        (
            "orchestrator.rollout_model.extra_base_urls",
            {"orchestrator": {"rollout_model": {"extra_base_urls": ["{u}"]}}},
        ),
        ("scorer.base_url", {"scorer": {"type": "echo", "base_url": "{u}"}}),
        ("on_policy.student_server.base_url", {"on_policy": {"student_server": {"type": "vllm", "base_url": "{u}"}}}),
    ],
)
@pytest.mark.parametrize("tail", [f"?api-key={URL_SECRET}", f"?api-version=1&{URL_SECRET}", f"#{URL_SECRET}"])
def test_base_url_with_a_query_or_fragment_is_refused_without_echoing_it(key, table, tail):
    import json

    data = json.loads(json.dumps(table).replace("{u}", "https://example.invalid/v1" + tail))
    with pytest.raises(ConfigError) as ei:
        load_config(None, data)
    assert [p.key for p in ei.value.problems] == [key]  # scorer.base_url, not scorer.echo.base_url
    msg = str(ei.value)
    assert "SECRET" not in msg and "not shown" in msg and "api_key_var" in msg
    assert "query string" in msg or "fragment" in msg


def test_base_url_query_from_the_environment_is_not_echoed(monkeypatch):
    monkeypatch.setenv("DISTILL_ORCHESTRATOR__ROLLOUT_MODEL__BASE_URL", f"https://h.invalid/v1?key={URL_SECRET}")
    with pytest.raises(ConfigError) as ei:
        load_config(None)
    assert "DISTILL_ORCHESTRATOR__ROLLOUT_MODEL__BASE_URL" in str(ei.value) and "SECRET" not in str(ei.value)


@pytest.mark.parametrize(
    "url, meant",
    [
        ("https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1"),
        ("http://127.0.0.1:8000/v1/completions/", "http://127.0.0.1:8000/v1"),
        ("https://h.invalid/openai/v1/chat/completions", "https://h.invalid/openai/v1"),
        (f"http://u:{URL_SECRET}@127.0.0.1:8000/v1/chat/completions", "http://u:***@127.0.0.1:8000/v1"),
    ],
)
def test_base_url_ending_in_a_request_path_suggests_the_base(url, meant):
    with pytest.raises(ConfigError) as ei:
        load_config(None, {"orchestrator": {"rollout_model": {"base_url": url}}})
    assert [p.key for p in ei.value.problems] == ["orchestrator.rollout_model.base_url"]
    assert f'did you mean "{meant}"?' in str(ei.value) and "SECRET" not in str(ei.value)


def test_other_url_mistakes_mask_the_password():
    with pytest.raises(ConfigError) as ei:
        load_config(None, {"orchestrator": {"rollout_model": {"base_url": f"ftp://u:{URL_SECRET}@h.invalid/v1"}}})
    assert "has scheme 'ftp'" in str(ei.value) and "SECRET" not in str(ei.value)


def test_unknown_keys_suggest_the_nearest_key_path(tmp_path):
    from distill.core.config.keypaths import key_paths, nearest_key

    paths = key_paths(RunConfig)
    assert "trainer.optim.lr" in paths and "orchestrator.rollout_model.api_key_var" in paths
    assert nearest_key("trainer.lr", paths) == "trainer.optim.lr"
    assert nearest_key("orchestrator.sampling.temprature", paths) == "orchestrator.sampling.temperature"
    assert nearest_key("trainer.max_step", paths) == "trainer.max_steps"
    assert nearest_key("orchestrator.concurency", paths) == "orchestrator.concurrency"
    assert nearest_key("zzz.qqq", paths) is None
    with pytest.raises(ConfigError, match="did you mean trainer.optim.lr"):
        load_config(write(tmp_path, "[trainer]\nlr = 1\n"))


def test_env_errors_name_the_variable_not_the_toml_file(tmp_path, monkeypatch):
    p = write(tmp_path, "[trainer]\nseq_len = 512\n")
    monkeypatch.setenv("DISTILL_TRAINER__MAX_STEPS", "abc")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.source == "environment variable DISTILL_TRAINER__MAX_STEPS" and str(p) not in str(ei.value)
    assert "trainer.max_steps" in str(ei.value)
    monkeypatch.setenv("DISTILL_TRAINER__MAX_STEPS", "3")
    monkeypatch.setenv("DISTILL_TRAINER__OPTIM", "{not json")
    with pytest.raises(ConfigError, match="DISTILL_TRAINER__OPTIM") as ei:
        load_config(p)
    assert str(p) not in str(ei.value)
    monkeypatch.delenv("DISTILL_TRAINER__OPTIM")
    with pytest.raises(ConfigError) as ei:  # a bad command-line value names the command line
        load_config(p, ["--trainer.seq_len", "4"])
    assert ei.value.source == "command line" and "[set on the command line]" in str(ei.value)
    with pytest.raises(ConfigError) as ei:  # and a bad TOML value the file
        load_config(write(tmp_path, "[trainer]\nseq_len = 4\n", "bad.toml"))
    assert ei.value.source == str(tmp_path / "bad.toml") and "[set" not in str(ei.value)


# --- on-policy losses (issue 15): refused for a messages-only teacher as before, and with a [scorer] ---


@pytest.mark.parametrize("loss", ["reverse_kl", "iw_opd", "kd_rl"])
def test_on_policy_losses_without_a_scorer_are_refused_as_any_non_sft_loss(loss):
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--trainer.loss.type", loss])
    assert [p.key for p in ei.value.problems] == ["trainer.loss.type"]
    msg = ei.value.problems[0].message
    assert f"{loss!r} is a known non-SFT loss" in msg and "returns messages only" in msg
    assert 'Fix: set trainer.loss.type = "sft"' in msg
    assert "or set on_policy.enabled = true with a [scorer]" in msg


@pytest.mark.parametrize("loss", ["reverse_kl", "iw_opd", "kd_rl"])
def test_on_policy_losses_with_a_scorer_are_refused_naming_on_policy_mode(tmp_path, loss):
    p = write(tmp_path, f'[trainer.loss]\ntype = "{loss}"\n[scorer]\ntype = "vllm"\ntop_k = 20\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert [pr.key for pr in ei.value.problems] == ["trainer.loss.type"]
    msg = ei.value.problems[0].message
    assert "the student's own samples" in msg and "on-policy mode, which is off (on_policy.enabled = false)" in msg
    assert "issue" not in msg  # no internal tracker reference
    assert "Fix: set on_policy.enabled = true" in msg and 'or trainer.loss.type = "topk_kl" or "sft"' in msg


def test_on_policy_loss_options_are_checked_and_documented_keys():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--trainer.loss.type", "iw_opd", "--trainer.loss.gamma", "-1"])
    assert "trainer.loss.gamma" in [p.key for p in ei.value.problems]
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["--trainer.loss.type", "kd_rl", "--trainer.loss.kd", "forward"])
    assert "trainer.loss.kd" in [p.key for p in ei.value.problems]


def test_a_scorer_field_error_is_named_without_its_type(monkeypatch):
    # pydantic puts the union's tag in the location (scorer.echo.top_k); the user wrote scorer.top_k
    monkeypatch.setenv("DISTILL_SCORER__TOP_K", "-2")
    with pytest.raises(ConfigError) as ei:
        load_config(None, {"scorer": {"type": "echo", "base_url": "http://127.0.0.1:1/v1", "timeout": 0}})
    msgs = {p.key: p.message for p in ei.value.problems}
    assert set(msgs) == {"scorer.top_k", "scorer.timeout"}
    assert msgs["scorer.top_k"].endswith("[set by environment variable DISTILL_SCORER__TOP_K]")


def test_a_type_switched_on_the_command_line_or_in_a_variable_drops_the_files_keys_of_the_old_kind(
    tmp_path, monkeypatch
):
    """`--orchestrator.source.type table` over the file's reasoning_gym table failed on its dataset and
    size (keys the table kind does not take); the keys both kinds take are kept."""
    toml = '[orchestrator.source]\ntype = "reasoning_gym"\ndataset = "gsm_symbolic"\nsize = 8\nsystem_prompt = "be brief"\n'
    p = write(tmp_path, toml)
    cfg = load_config(p, ["--orchestrator.source.type", "table", "--orchestrator.source.path", "x.csv"])
    src = cfg.orchestrator.source
    assert src.type == "table" and src.system_prompt == "be brief" and src.path.endswith("x.csv")
    monkeypatch.setenv("DISTILL_ORCHESTRATOR__SOURCE__TYPE", "hf_dataset")
    monkeypatch.setenv("DISTILL_ORCHESTRATOR__SOURCE__NAME", "org/prompts")
    cfg = load_config(p)
    assert cfg.orchestrator.source.type == "hf_dataset" and cfg.orchestrator.source.name == "org/prompts"
    monkeypatch.delenv("DISTILL_ORCHESTRATOR__SOURCE__TYPE")
    monkeypatch.delenv("DISTILL_ORCHESTRATOR__SOURCE__NAME")
    # the table set whole, as JSON, in one variable (of the table or of a table above it)
    monkeypatch.setenv("DISTILL_ORCHESTRATOR__SOURCE", '{"type": "hf_dataset", "name": "org/p2"}')
    src = load_config(p).orchestrator.source
    assert src.type == "hf_dataset" and src.name == "org/p2" and src.system_prompt == "be brief"
    monkeypatch.delenv("DISTILL_ORCHESTRATOR__SOURCE")
    monkeypatch.setenv("DISTILL_ORCHESTRATOR", '{"source": {"type": "table", "path": "y.csv"}}')
    assert load_config(p).orchestrator.source.path.endswith("y.csv")
    monkeypatch.delenv("DISTILL_ORCHESTRATOR")
    # the file's own kind, or a kind that does not exist, changes nothing: a wrong key is still told
    text = config_error(tmp_path, toml.replace('type = "reasoning_gym"', 'type = "table"'))
    assert "orchestrator.source.dataset is not a key of source type 'table'" in text
    with pytest.raises(ConfigError, match="'tabel' is not a kind of"):
        load_config(p, ["--orchestrator.source.type", "tabel"])
