"""Checks run by `distill run | rollout | replay | train` before anything is written.

`preflight(cfg, command, ...)` looks at everything that can be checked without a
teacher or a model: the student / tokenizer folders (a hub id where a folder is
expected is named as such), the online reward function, the output_dir, the prompt or
replay inputs, and whether the run dir's earlier content fits the resume flags. Every
problem is reported at once (key or file, and the fix) as one `PreflightError`; the
CLI prints it without a traceback and exits 1. Nothing is created or written here, so a
mistake leaves no half-made run dir (no config.toml) behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Problem, RunConfig, key_var_problems
from .model_files import model_folder_problem
from .resume_check import check_resume_config

#: Any of these marks a folder as holding a tokenizer transformers can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
#: What in an output_dir belongs to an earlier run.
RUN_CONTENT = ("recording.jsonl", "samples", "checkpoints")


class PreflightError(Exception):
    """Everything that would make the command fail, found before it starts."""

    def __init__(self, command: str, problems: list[Problem]):
        self.command, self.problems = command, problems
        lines = [f"{command} cannot start, {len(problems)} problem(s):"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def preflight(
    cfg: RunConfig,
    command: str,
    *,
    inputs: list[str] | None = None,
    no_resume: bool = False,
    resume: bool = False,
    samples: str | None = None,
) -> None:
    """Raise PreflightError listing every problem found (command: run | rollout | replay | train | score)."""
    problems: list[Problem] = []
    problems += check_student(cfg, need_model=command in ("run", "train"))
    problems += check_output_dir(cfg.output_dir)
    if command in ("run", "train") and cfg.trainer.lora.enabled:
        problems += check_lora()
    if command in ("run", "rollout", "replay"):
        problems += check_source(cfg, inputs if command == "replay" else None, replay=command == "replay")
    if command in ("run", "rollout") and cfg.orchestrator.source.type != "replay":  # the teacher's filter
        problems += check_reward_fn(cfg.orchestrator.reward_fn)
        problems += check_cache_dir(cfg.orchestrator.cache_dir)
        problems += key_var_problems(cfg.orchestrator.rollout_model.api_key_var, "orchestrator.rollout_model")
    problems += check_earlier_run(cfg.output_dir, command, no_resume=no_resume, resume=resume, samples=samples)
    problems += check_resume_config(cfg, command, resume)
    if command in ("run", "score"):
        problems += check_scorer_config(cfg, command, samples)
    if command in ("run", "train"):
        problems += check_trackers(cfg)
    if problems:
        raise PreflightError(command, problems)


def _folder(key: str, value: str, hint: str = "") -> tuple[Path | None, Problem | None]:
    from distill.core.student import hub_id_hint, hub_snapshot

    p = Path(value).expanduser()
    if p.is_dir():
        return p, None
    snapshot = hub_snapshot(value)  # "org/name" in the local Hugging Face cache
    if snapshot is not None:
        return snapshot, None
    if p.exists():
        return None, Problem(key, f"{value} is a file, not a folder. Fix: set {key} to the folder holding it")
    hub = hub_id_hint(value, key)
    if hub:
        return None, Problem(key, hub)
    return None, Problem(
        key,
        f"folder {value} does not exist{hint}. Fix: set {key} to an existing HF folder"
        + (' or "builtin:smollm2-135m-instruct"' if key == "student.path" else ""),
    )


def check_student(cfg: RunConfig, need_model: bool) -> list[Problem]:
    """The student folder (config.json when the model is needed) and its tokenizer folder (loads,
    has a chat template). The builtin student is checked for its package; it is converted later."""
    from distill.core.student import BUILTIN_PREFIX, _check_builtin, builtin_gguf_path, gguf_file, gguf_tokenizer_dir

    spec, tok_spec = cfg.student.path, cfg.student.tokenizer
    problems: list[Problem] = check_chat_template(cfg.student.chat_template)
    template = cfg.student.chat_template if not problems else None  # the tokenizer is checked with it
    if spec.startswith(BUILTIN_PREFIX):
        try:
            _check_builtin(spec)
            builtin_gguf_path()
        except (ValueError, FileNotFoundError) as e:
            problems.append(Problem("student.path", str(e)))
    elif (gguf := gguf_file(spec)) is not None:  # converted once
        folder, why = gguf_tokenizer_dir(gguf)
        if why:
            problems.append(Problem("student.path", why))
        elif not tok_spec:
            problems += check_tokenizer("student.path", folder, template)
    else:
        folder, problem = _folder("student.path", spec, next_to_config(cfg, spec))
        if problem:
            problems.append(problem)
        elif need_model and (why := model_folder_problem(spec, folder)):
            problems.append(Problem("student.path", why))
        if not tok_spec and folder is not None:
            problems += check_tokenizer("student.path", folder, template)
    if tok_spec:
        folder, problem = _folder("student.tokenizer", tok_spec, next_to_config(cfg, tok_spec))
        problems += [problem] if problem else check_tokenizer("student.tokenizer", folder, template)
    return problems


def check_lora() -> list[Problem]:
    """trainer.lora.enabled needs peft: found before a run asks the teacher anything."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        return [Problem("trainer.lora.enabled", "LoRA needs the peft package. Fix: pip install 'distill[lora]'")]
    return []


def check_chat_template(path: str | None) -> list[Problem]:
    """student.chat_template, when set, is a readable file holding a valid Jinja template."""
    if not path:
        return []
    from distill.core.student import CHAT_TEMPLATE_KEY, TokenizerError, read_chat_template

    try:
        read_chat_template(path)
    except TokenizerError as e:
        return [Problem(CHAT_TEMPLATE_KEY, str(e).removeprefix(f"{CHAT_TEMPLATE_KEY}: "))]
    return []


def check_tokenizer(key: str, folder: Path, chat_template: str | None = None) -> list[Problem]:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return [
            Problem(
                key,
                f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)}). Fix: copy the "
                "tokenizer files there (tokenizer.save_pretrained(DIR)) or "
                + ("point it at the folder with them" if key == "student.tokenizer" else "set student.tokenizer"),
            )
        ]
    from distill.core.student import load_tokenizer

    try:
        load_tokenizer(folder, chat_template)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; the message is what matters
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = first if isinstance(e, ValueError) else f"the tokenizer in {folder} does not load ({first})"
        return [Problem(key, why)]
    return []


def check_output_dir(output_dir: str) -> list[Problem]:
    """output_dir is a folder, or can be made one (no regular file on its path, writable parent)."""
    p = Path(output_dir).expanduser()
    if p.exists():
        if not p.is_dir():
            return [Problem("output_dir", f"{output_dir} is a file, not a folder. Fix: choose another output_dir")]
        if not os.access(p, os.W_OK | os.X_OK):
            return [Problem("output_dir", f"{output_dir} is not writable. Fix: choose another output_dir")]
        return []
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [
            Problem(
                "output_dir",
                f"{output_dir} would be under {parent}, which is a regular file. Fix: choose another output_dir",
            )
        ]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [
            Problem(
                "output_dir",
                f"{output_dir} cannot be created: {parent} is not writable. Fix: choose another output_dir",
            )
        ]
    return []


def next_to_config(cfg: RunConfig, value: str) -> str:
    """For a relative path missing from the working folder: a hint when it is there next to the config file."""
    p, here = Path(value).expanduser(), Path.cwd()
    beside = Path(cfg._config_dir) / p if cfg._config_dir else None
    if p.is_absolute() or beside is None or beside.parent == here or not beside.exists():
        return ""
    return (
        f" (relative paths are read from the working folder {here}, not from the config file's; "
        f"{beside} exists: set the path to it, or run distill from {cfg._config_dir})"
    )


def check_source(cfg: RunConfig, inputs: list[str] | None, replay: bool) -> list[Problem]:
    """The prompt file (jsonl source) or the replay inputs (files, folders or globs) exist."""
    src = cfg.orchestrator.source
    if replay or src.type == "replay":
        from orchestrator.replay import ReplayError, resolve_inputs

        patterns = list(inputs) if inputs else ([src.path] if src.path else [])
        if not patterns:
            return [
                Problem(
                    "orchestrator.source.path",
                    "is not set and no input file was given: replay has nothing to read. Fix: set "
                    'orchestrator.source.path = "FILE.jsonl" (files, folders or globs)'
                    + (", or pass input files: distill replay CONFIG INPUT..." if replay else ""),
                )
            ]
        try:
            resolve_inputs(patterns)
        except ReplayError as e:
            hint = "" if inputs else next_to_config(cfg, patterns[0])
            if hint:
                e = ReplayError(e.file, e.line, e.field, e.problem + hint, e.fix)
            return [Problem("orchestrator.source.path" if not inputs else "input", str(e))]
        return []
    if src.type in ("table", "hf_dataset"):  # readable, and every mapped column present: before anything is paid
        from orchestrator.prompt_tables import TableSourceError, check_columns, open_table

        try:
            check_columns(src, open_table(src))
        except TableSourceError as e:
            return [Problem(e.key, e.detail)]
        return []
    if src.type == "jsonl" and src.path:
        p = Path(src.path).expanduser()
        if p.is_dir():
            return [
                Problem(
                    "orchestrator.source.path",
                    f"{src.path} is a folder; a jsonl prompt source reads one file. Fix: set it to the .jsonl file",
                )
            ]
        if not p.is_file():
            return [
                Problem(
                    "orchestrator.source.path",
                    f"{src.path} does not exist{next_to_config(cfg, src.path)}. Fix: set it to your prompt .jsonl file",
                )
            ]
        if p.stat().st_size < 1 << 20 and not p.read_bytes().strip():  # a bigger one is counted by the scheduler
            from orchestrator.prompts import no_prompt

            return [Problem("orchestrator.source.path", no_prompt(src.path))]
    return []


def check_cache_dir(cache_dir: str | None) -> list[Problem]:
    """The request cache folder is a folder (or can be made one)."""
    if not cache_dir:
        return []
    p = Path(cache_dir).expanduser()
    if p.exists() and not p.is_dir():
        return [Problem("orchestrator.cache_dir", f"{cache_dir} is a file, not a folder. Fix: point it at a folder")]
    parent = next((a for a in [p, *p.parents] if a.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        return [Problem("orchestrator.cache_dir", f"{cache_dir} is not writable. Fix: choose a writable folder")]
    return []


def check_reward_fn(spec: str | None) -> list[Problem]:
    """The online filter's "module:function" imports and is callable."""
    if not spec:
        return []
    from orchestrator.rewards import load_reward_fn

    try:
        load_reward_fn(spec)
    except Exception as e:  # noqa: BLE001 - any import-time failure of the user's module is a user problem
        msg = str(e).removeprefix("orchestrator.reward_fn: ")
        return [
            Problem(
                "orchestrator.reward_fn",
                msg if isinstance(e, ValueError) else f"importing {spec!r} failed ({type(e).__name__}: {e})",
            )
        ]
    return []


def earlier_run_content(run_dir: Path) -> list[str]:
    """What in run_dir belongs to an earlier run (empty folders do not count)."""
    found = []
    for name in RUN_CONTENT:
        q = run_dir / name
        if q.is_file() and q.stat().st_size > 0 or q.is_dir() and any(q.iterdir()):
            found.append(name)
    return found


def check_earlier_run(
    output_dir: str, command: str, *, no_resume: bool, resume: bool, samples: str | None
) -> list[Problem]:
    """`run --no-resume` refuses a run dir holding an earlier run (it would mix two runs' samples,
    recordings and checkpoints); `train` without --resume refuses earlier checkpoints; `train`
    needs a samples folder."""
    run_dir = Path(output_dir).expanduser()
    if not run_dir.is_dir():
        found = []
    else:
        found = earlier_run_content(run_dir)
    if command == "run" and no_resume and found:
        return [
            Problem(
                "output_dir",
                f"{output_dir} already holds a run ({', '.join(found)}). Fix: rerun without "
                "--no-resume to resume it, or choose a new output_dir, or delete that folder",
            )
        ]
    if command == "train":
        problems = []
        if not resume and "checkpoints" in found:
            from trainer import checkpoint as ckpt_io  # train imports torch anyway

            if ckpt_io.latest(run_dir / "checkpoints") is not None:
                problems.append(
                    Problem(
                        "output_dir",
                        f"{run_dir / 'checkpoints'} holds checkpoints of an earlier "
                        "run. Fix: resume it (distill train --resume), or choose a new output_dir, "
                        "or delete that folder",
                    )
                )
        problems += no_samples_folder(samples, run_dir)
        return problems
    return []


def check_trackers(cfg: RunConfig) -> list[Problem]:
    """Every enabled tracker ([wandb], [trackers]) has its package installed."""
    import importlib.util

    from distill.core.config.schema_trackers import TRACKER_PACKAGES

    enabled = {
        "wandb.enabled": cfg.wandb.enabled,
        "trackers.tensorboard": cfg.trackers.tensorboard,
        "trackers.trackio": cfg.trackers.trackio,
    }
    return [
        Problem(
            key,
            f"is true but the {module} package is not installed. Fix: pip install {pip} "
            "(or pip install 'distill[trackers]'), or set it to false",
        )
        for key, (module, pip) in TRACKER_PACKAGES.items()
        if enabled[key] and importlib.util.find_spec(module) is None
    ]


def check_scorer_config(cfg: RunConfig, command: str, samples: str | None) -> list[Problem]:
    """`distill score` needs a [scorer] and a samples folder; with a [scorer], its key variable is set."""
    sc = cfg.scorer
    if sc is None:
        if command != "score":
            return []
        return [
            Problem(
                "scorer",
                'is not set: distill score has no teacher to ask. Fix: add a [scorer] section (type = "vllm", '
                "base_url, model; docs/scoring.md)",
            )
        ]
    problems = key_var_problems(sc.api_key_var, "scorer")
    if command == "score":
        problems += no_samples_folder(samples, Path(cfg.output_dir).expanduser())
    return problems


def no_samples_folder(samples: str | None, run_dir: Path) -> list[Problem]:
    """The samples folder `distill train` / `distill score` read (--samples, else OUTPUT_DIR/samples) is one."""
    sdir = Path(samples).expanduser() if samples else run_dir / "samples"
    if sdir.is_dir():
        return []
    what = (
        f"{sdir} is a file; --samples takes a samples folder (the shard files a rollout or replay writes)"
        if sdir.exists()
        else f"no samples folder {sdir}"
    )
    fix = "produce samples first (distill rollout / distill replay with the same output_dir), or pass --samples DIR" + (
        "; a file of conversations becomes samples with distill replay CONFIG FILE" if sdir.exists() else ""
    )
    return [Problem("--samples" if samples else "output_dir", f"{what}. Fix: {fix}")]
