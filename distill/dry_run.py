"""`distill run CONFIG --dry-run`: the resolved config, then every check a run makes before it asks the
teacher anything or trains a step, and nothing written to output_dir.

Checked, each as the run itself would report it (exit 1): what `preflight` checks (student, tokenizer,
chat template, files and folders, the API key's variable, output_dir and what an earlier run left
there); that the student's tokenizer and template can build samples (`make_reconstructor`), or in on-policy
mode render its prompts, with those reconstruction rejects counted (`usable_prompts`); that samples
already in output_dir were built with these settings (`check_built_with`, read only); every prompt of a
prompt file or table (`count_prompts`), and that a reasoning-gym dataset can be created; that each replay
input holds a first record that is not a refusal of the whole file. The run dir's locks were checked
before (cli._busy_first). A builtin or GGUF student's tokenizer may be converted into distill's cache,
as the run would. A problem does not stop the next check: all are said in one pass (the samples check,
which needs the student, is left out when preflight fails; the prompts' check when preflight named them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .built_with import check_built_with
from .cli_errors import user_message
from .config import RunConfig, redacted_dict, to_toml
from .core.redact import mask_known
from .preflight import preflight
from .run import make_reconstructor


def dry_run(cfg: RunConfig, no_resume: bool) -> int:
    """Print the config (secrets redacted) and raise what the run would raise before it starts."""
    print(to_toml(redacted_dict(cfg)), end="")
    sys.stdout.flush()  # the config before any problem on stderr
    found: list[Exception] = []
    started = _stage(found, preflight, cfg, "run", no_resume=no_resume)
    if started and not cfg.on_policy.enabled:
        _stage(found, _check_samples, cfg)  # the producer's samples: built from the teacher's messages
    told = found and any(p.key.startswith(("orchestrator.source", "input")) for p in getattr(found[0], "problems", []))
    if not told:  # preflight's problems name a missing prompt file or input already
        read = _stage(found, check_source, cfg)
        if read and started and cfg.on_policy.enabled:
            _stage(found, _check_prompts, cfg)  # the prompts the student would sample from
    for e in found[:-1]:  # every problem in one pass, each as the run would report it; the last raised
        print(f"distill: {mask_known(user_message(e) or str(e))}", file=sys.stderr)
    if found:
        raise found[-1]
    print("dry run: the config resolves and every check made before a run starts passed", file=sys.stderr)
    return 0


def _stage(found: list[Exception], check, *args, **kwargs) -> bool:
    """Run one check; a problem a user can fix (cli_errors: what distill prints as one line) is kept in
    `found` and the next check still runs. Whether this one passed."""
    try:
        check(*args, **kwargs)
        return True
    except Exception as e:
        if user_message(e) is None:  # a bug: its traceback, as cli.main shows it
            raise
        found.append(e)
        return False


def _check_samples(cfg: RunConfig) -> None:
    """The template can build samples, and samples already in output_dir were built with these settings."""
    recon = make_reconstructor(cfg)
    run_dir = Path(cfg.output_dir).expanduser()
    if run_dir.is_dir():
        check_built_with(cfg, run_dir, recon, write=False)


def _check_prompts(cfg: RunConfig) -> None:
    """On-policy mode: the student's template can render prompts (`make_reconstructor`), and what the loop
    does with them when it starts (on_policy_parts.usable_prompts): those reconstruction rejects counted
    on stderr, an OnPolicyError when too few are left; nothing written."""
    from .on_policy_parts import Renderer, load_prompt_pool, usable_prompts

    render = Renderer(make_reconstructor(cfg, prompts_only=True))
    usable_prompts(render, *load_prompt_pool(cfg), cfg, None)


def check_source(cfg: RunConfig) -> None:
    """Read the prompts (all of them, as a run does before its first request), or the first record of
    each replay input (a file that is no JSON Lines at all is refused at its first line)."""
    source = cfg.orchestrator.source
    if source.type != "replay":
        from orchestrator.prompts import count_prompts, load_prompts

        count_prompts(source)
        if source.type == "reasoning_gym":  # creating the dataset is what fails on a name it does not know
            next(iter(load_prompts(source)), None)
        return
    from orchestrator.replay import ReplayError, iter_conversations, resolve_inputs

    rc = cfg.orchestrator.replay
    for path in resolve_inputs([source.path] if source.path else []):
        if next(iter_conversations([path], source.format, rc.columns, max_line_bytes=rc.max_line_bytes), None) is None:
            raise ReplayError(path, None, None, "holds no record to replay (an empty file)", "give a file with records")
