"""student.chat_template: a Jinja file replaces the student tokenizer's chat template everywhere the student's
template is used (reconstruction, prompt rendering, `distill tokenize`, `distill inspect`, the trainer) and
every checkpoint's tokenizer carries it. Real SmolLM2 tokenizer, real template text (tests/templates/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill.core.config import load_config
from distill.core.prompt_render import render_prompt
from distill.core.student import TokenizerError, load_tokenizer, read_chat_template
from distill.preflight import check_student
from distill.run import make_reconstructor

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
#: ChatML with a system message folded into the first user turn: not SmolLM2's own template (which keeps
#: the system turn, and adds a default one when there is none).
FOLDED = TEMPLATES / "chatml_system_folded.jinja"
CONV = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def _config(tmp_path: Path, smol_tokenizer_dir, template: str | None) -> Path:
    """A run config in tmp/cfg/ whose student.chat_template is `template` (relative to it)."""
    (tmp_path / "cfg" / "tpl").mkdir(parents=True)
    shutil.copy(FOLDED, tmp_path / "cfg" / "tpl" / "folded.jinja")
    line = f'chat_template = "{template}"\n' if template else ""
    f = tmp_path / "cfg" / "run.toml"
    f.write_text(f'[student]\ntokenizer = "{smol_tokenizer_dir}"\n{line}')
    return f


def _build(recon):
    samples, rejections = recon.build(CONV, sample_id="c/0")
    assert rejections == [] and len(samples) == 1
    return samples[0]


def test_reconstruction_uses_the_template_file(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    cfg = load_config(_config(tmp_path, smol_tokenizer_dir, "tpl/folded.jinja"))
    assert cfg.student.chat_template == str(tmp_path / "cfg" / "tpl" / "folded.jinja")  # relative to the file
    own = _build(make_reconstructor(load_config(_config(tmp_path / "own", smol_tokenizer_dir, None))))
    over = _build(make_reconstructor(cfg))
    folded_tok = load_tokenizer(smol_tokenizer_dir, FOLDED)
    expected = folded_tok.apply_chat_template(CONV, tokenize=False).removesuffix("\n")  # the sample ends at <|im_end|>
    assert smol_tokenizer.decode(over.prompt_ids + over.completion_ids) == expected
    assert smol_tokenizer.decode(own.prompt_ids + own.completion_ids) != expected
    # the system message is folded into the user turn: no system turn in the prompt, and the trained tokens
    # are the two answers (each with its <|im_end|>) in both, at other positions
    assert "<|im_start|>system" not in smol_tokenizer.decode(over.prompt_ids)
    assert "<|im_start|>system" in smol_tokenizer.decode(own.prompt_ids)
    assert len(over.prompt_ids) != len(own.prompt_ids)
    trained = [t for t, m in zip(over.completion_ids, over.completion_mask) if m]
    assert trained == [t for t, m in zip(own.completion_ids, own.completion_mask) if m]
    assert over.completion_mask == own.completion_mask
    # the trainer side renders prompts with the same template (on-policy sampling)
    assert render_prompt(folded_tok, CONV[:2]) == over.prompt_ids[: len(render_prompt(folded_tok, CONV[:2]))]
    assert render_prompt(folded_tok, CONV[:2]) != render_prompt(smol_tokenizer, CONV[:2])


def test_bad_template_files_are_one_config_error_naming_the_key(tmp_path, smol_tokenizer_dir):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }\n")  # unclosed: invalid Jinja
    with pytest.raises(TokenizerError, match=r"student\.chat_template: .*bad\.jinja line 1 is not a valid Jinja"):
        read_chat_template(bad)
    with pytest.raises(TokenizerError, match=r"student\.chat_template: the chat template file .* does not exist"):
        load_tokenizer(smol_tokenizer_dir, tmp_path / "missing.jinja")
    (tmp_path / "empty.jinja").write_text("\n")
    with pytest.raises(TokenizerError, match="is empty"):
        read_chat_template(tmp_path / "empty.jinja")
    for f in (bad, tmp_path / "missing.jinja"):
        cfg = load_config(None, {"student": {"tokenizer": str(smol_tokenizer_dir), "chat_template": str(f)}})
        problems = check_student(cfg, need_model=False)
        assert [p.key for p in problems] == ["student.chat_template"]
        assert "Fix:" in problems[0].message


def test_the_checkpoint_carries_the_template(tmp_path, tiny_student_dir, smol_tokenizer):
    from transformers import AutoTokenizer

    from support.trainer_helpers import make_samples, write_samples
    from trainer.train import train

    run = tmp_path / "run"
    write_samples(run / "samples", make_samples(smol_tokenizer, 4))
    over = {
        "student": {"path": str(tiny_student_dir), "chat_template": str(FOLDED)},
        "trainer": {"max_steps": 1, "samples_per_step": 4, "seq_len": 128, "device": "cpu"},
    }
    out = train(load_config(None, over), run, progress=False)
    ckpt = Path(out["checkpoint"])
    assert AutoTokenizer.from_pretrained(ckpt).chat_template == FOLDED.read_text()
    assert load_tokenizer(ckpt).chat_template == FOLDED.read_text()  # a resumed run or a user gets it back
    saved = (ckpt / "chat_template.jinja").read_text() if (ckpt / "chat_template.jinja").is_file() else None
    saved = saved or json.loads((ckpt / "tokenizer_config.json").read_text()).get("chat_template")
    assert saved == FOLDED.read_text()


def test_tokenize_cli_takes_a_template(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    from distill.cli import main

    (tmp_path / "in.jsonl").write_text(json.dumps({"messages": CONV}) + "\n")
    for name, extra in (("own", []), ("over", ["--chat-template", str(FOLDED)])):
        argv = ["tokenize", "--tokenizer", str(smol_tokenizer_dir), str(tmp_path / "in.jsonl")]
        assert main([*argv, "-o", str(tmp_path / f"{name}.jsonl"), *extra]) == 0
    own, over = (json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in ("own", "over"))
    folded = load_tokenizer(smol_tokenizer_dir, FOLDED).apply_chat_template(CONV, tokenize=False).removesuffix("\n")
    assert smol_tokenizer.decode(over["prompt_ids"] + over["completion_ids"]) == folded
    assert over["prompt_ids"] != own["prompt_ids"]
    bad = ["tokenize", "--tokenizer", str(smol_tokenizer_dir), str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as e:  # a usage error, named as the option given (test_cli_tokenize.py)
        main([*bad, "--chat-template", str(tmp_path / "nope.jinja")])
    assert e.value.code == 2


def test_inspect_uses_the_runs_template_and_refuses_a_bad_one(tmp_path, smol_tokenizer_dir, smol_tokenizer, capsys):
    from distill.cli import main
    from distill.run import prepare_run_dir
    from support.trainer_helpers import make_samples, write_samples

    cfg = load_config(_config(tmp_path, smol_tokenizer_dir, "tpl/folded.jinja"), {"output_dir": str(tmp_path / "r")})
    run = prepare_run_dir(cfg, "rollout", ("sample",))  # its config.toml keeps the template's absolute path
    assert load_config(run / "config.toml").student.chat_template == cfg.student.chat_template
    write_samples(run / "samples", make_samples(smol_tokenizer, 2))
    assert main(["inspect", str(run), "--no-color"]) == 0
    (tmp_path / "cfg" / "tpl" / "folded.jinja").unlink()  # the run's template is gone: one clear error
    capsys.readouterr()
    assert main(["inspect", str(run), "--no-color"]) == 1
    err = capsys.readouterr().err
    assert "student.chat_template" in err and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "template, kwargs, unread",
    [
        ("deepseek_v3_1.jinja", {"enable_thinking": True}, ["enable_thinking"]),  # V3.1's switch is `thinking`
        ("qwen3.jinja", {"enable_thinkng": False}, ["enable_thinkng"]),  # a misspelling
        ("qwen3.jinja", {"enable_thinking": False, "thinking": True}, ["thinking"]),
        ("chatml_system_folded.jinja", {"enable_thinking": False}, ["enable_thinking"]),  # no switch at all
        ("qwen3.jinja", {"enable_thinking": False}, []),
        ("chatml_generation.jinja", {}, []),
        ("deepseek_v3_1.jinja", {"thinking": True}, []),
        ("llama3_1.jinja", {"date_string": "26 Jul 2024", "builtin_tools": ["ipython"]}, []),
    ],
)
def test_template_kwargs_the_template_never_reads_are_a_config_error(
    tmp_path, smol_tokenizer_dir, template, kwargs, unread
):
    """orchestrator.reconstruction.chat_template_kwargs reach the student's template only by the names it reads:
    any other key changed nothing, silently (a run "without thinking" trained with it). Now a ConfigError per key,
    naming the names the template reads."""
    from distill.core.config import ConfigError

    (tmp_path / "cfg").mkdir()
    shutil.copy(TEMPLATES / template, tmp_path / "cfg" / template)
    pairs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in kwargs.items())
    f = tmp_path / "cfg" / "run.toml"
    f.write_text(
        f'[student]\ntokenizer = "{smol_tokenizer_dir}"\nchat_template = "{template}"\n'
        f"[orchestrator.reconstruction]\nchat_template_kwargs = {{ {pairs} }}\n"
    )
    cfg = load_config(f)
    if not unread:
        try:
            make_reconstructor(cfg)
        except TokenizerError as e:  # past the check: SmolLM2's tokenizer lacks DeepSeek's and Llama's end tokens
            assert "end-of-turn token" in str(e)
        return
    with pytest.raises(ConfigError) as e:
        make_reconstructor(cfg)
    assert [p.key for p in e.value.problems] == [
        f"orchestrator.reconstruction.chat_template_kwargs.{k}" for k in unread
    ]
    assert "is never read by the student's chat template" in str(e.value)
    if template == "deepseek_v3_1.jinja":
        assert "thinking" in e.value.problems[0].message.split("the names it reads: ")[1]


def test_tokenize_cli_refuses_a_template_kwarg_its_template_never_reads(tmp_path, smol_tokenizer_dir, capsys):
    from distill.cli import main

    (tmp_path / "in.jsonl").write_text(json.dumps({"messages": CONV}) + "\n")
    cfg = tmp_path / "run.toml"
    cfg.write_text("[orchestrator.reconstruction]\nchat_template_kwargs = { enable_thinking = false }\n")
    argv = ["tokenize", "--tokenizer", str(smol_tokenizer_dir), str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o")]
    assert main([*argv, "--config", str(cfg)]) == 2  # SmolLM2's template has no thinking switch
    err = capsys.readouterr().err
    assert "chat_template_kwargs.enable_thinking: is never read" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    qwen3 = TEMPLATES / "qwen3.jinja"  # reads it
    assert main([*argv, "--config", str(cfg), "--chat-template", str(qwen3)]) == 0


def test_think_tags_for_a_student_with_another_thinking_syntax_is_a_config_error(tmp_path, smol_tokenizer_dir, capsys):
    """reasoning = "think_tags" with reasoning_form unset writes <think> tags; a student template that writes
    [THINK] blocks (Magistral, Ministral 3) and never <think> would learn a syntax it does not use: one config
    error naming orchestrator.reconstruction.reasoning_form and the form to set, before anything is written.
    Setting the form (or <think> tags explicitly) runs."""
    from distill.cli import main

    template = tmp_path / "think.jinja"  # ChatML whose assistant turns write reasoning as [THINK]...[/THINK]
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.reasoning_content %}{{ '[THINK]' + m.reasoning_content + '[/THINK]' }}{% endif %}"
        "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    reasoned = [*CONV[:2], dict(CONV[2], reasoning_content="France's capital.")]
    (tmp_path / "in.jsonl").write_text(json.dumps({"messages": reasoned}) + "\n")
    argv = ["tokenize", "--tokenizer", str(smol_tokenizer_dir), str(tmp_path / "in.jsonl"), "--chat-template"]
    argv += [str(template), "--config"]
    cfg = tmp_path / "run.toml"
    cfg.write_text('[orchestrator.reconstruction]\nreasoning = "think_tags"\n')
    assert main([*argv, str(cfg), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "orchestrator.reconstruction.reasoning_form" in err and "'[THINK]{reasoning}[/THINK]'" in err
    assert 'set reasoning = "template"' in err and "Traceback" not in err and not (tmp_path / "o").exists()
    cfg.write_text(
        '[orchestrator.reconstruction]\nreasoning = "think_tags"\nreasoning_form = "[THINK]{reasoning}[/THINK]"\n'
    )
    assert main([*argv, str(cfg), "-o", str(tmp_path / "o")]) == 0
    from distill.core.config import ConfigError

    run = tmp_path / "cfg" / "run.toml"  # the run's path (distill run, rollout, replay: make_reconstructor)
    run.parent.mkdir()
    run.write_text(
        f'[student]\ntokenizer = "{smol_tokenizer_dir}"\nchat_template = "{template}"\n'
        '[orchestrator.reconstruction]\nreasoning = "think_tags"\n'
    )
    with pytest.raises(ConfigError) as e:
        make_reconstructor(load_config(run))
    assert [p.key for p in e.value.problems] == ["orchestrator.reconstruction.reasoning_form"]
