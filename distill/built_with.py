"""The samples of one run dir are built one way: a rerun with another student tokenizer, chat template or
[orchestrator.reconstruction] is refused before it adds a sample.

A rerun resumes: the samples already published stay, only the rest are built. Built with other settings,
the folder would hold two renderings of the conversations (other prompt ids, other masks) and a trainer
would train on the mixture in silence. So the producer saves what it builds with in
OUTPUT_DIR/samples_built_with.json (fingerprints of the tokenizer and of the template with the values it
is rendered with, and the reconstruction settings) and a rerun compares. The fingerprints are of what
builds the samples, not of paths: the same files under another path (a checkpoint of the same student)
build the same samples and pass. A run dir from before this file existed is not compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distill.core.config import RunConfig, redacted_dict
from distill.core.contract import atomic_write_text, list_shards

FILE = "samples_built_with.json"
#: The [orchestrator.reconstruction] keys that change how a conversation is rendered or masked. The others
#: (max_seq_len, overlong, truncated, special_tokens_in_content) only decide which samples are kept or how
#: far one is cut: a folder built partly under each value still holds one rendering, so they may change
#: (max_seq_len upwards only: a trainer of a lower limit would refuse the longer samples published before).
RENDERING = (
    "train_roles",
    "on_history_rewrite",
    "reasoning",
    "reasoning_form",
    "chat_template_kwargs",
    "system_prompt",
    "content_whitespace",
    "tool_calls_as_text",
    "text_with_tool_calls",
    "tools_in_system_prompt",
    "tool_definition_form",
)


class SamplesBuiltOtherwise(Exception):
    """The run dir's samples were built with other settings than this run's (a user error: named, with the fix)."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def vocab_sha256(vocab: dict[str, int], below: int | None = None) -> str:
    """A fingerprint of what each token id means (a tokenizer's get_vocab(): the vocabulary with the added
    tokens; ids < `below` only when given): what a trainer needs to agree on with the tokenizer that built
    its samples."""
    items = sorted((kv for kv in vocab.items() if below is None or kv[1] < below), key=lambda kv: kv[1])
    return _sha(json.dumps(items, ensure_ascii=False))


def check_train_vocab(cfg: RunConfig, samples: Path) -> None:
    """`distill train`: refuse samples built with a tokenizer whose ids mean other text than the student's
    (their ids would all be read as other tokens: a wrong model in silence). Samples without the file
    (another tool, an older run) are not compared. The file describes its run dir's `samples` folder only,
    reached through whatever link or relative path."""
    folder = Path(samples).expanduser().resolve()
    if folder.name != "samples":  # a folder kept elsewhere in a run dir: not what the file describes
        return
    path = folder.parent / FILE
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        want, size = old["vocab_sha256"], int(old["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    from distill.core.student import student_tokenizer

    # ids the samples can hold mean the same: a student whose tokenizer only adds tokens after them passes
    if vocab_sha256(student_tokenizer(cfg.student).get_vocab(), below=size) == want:
        return
    was = old.get("student") or {}
    raise SamplesBuiltOtherwise(
        f"the samples in {samples} were built with another vocabulary than this student's (they were built "
        f"with student.path = {was.get('path')!r}, student.tokenizer = {was.get('tokenizer')!r}; this run has "
        f"{cfg.student.path!r}, {cfg.student.tokenizer!r}): their token ids would be read as other tokens. Fix: "
        "train the student whose tokenizer built them, or build the samples for this student from the recorded "
        "answers (copy recording.jsonl into a new run dir and run distill rollout there with this student)"
    )


def template_code(source: str) -> str:
    """A chat template as what renders: its Jinja tokens without comments and the whitespace inside
    tags, adjacent text joined. A comment-only edit keeps it; any edit that changes a rendering changes
    it (the lexer applies whitespace control, `-` and trim/lstrip_blocks, to the text tokens). The
    source itself where transformers' compiler is not there."""
    try:
        from jinja2.lexer import ignored_tokens
        from transformers.utils.chat_template_utils import _compile_jinja_template

        out: list[list[str]] = []
        for _, kind, value in _compile_jinja_template(source).environment.lex(source):
            if kind in ignored_tokens:
                continue
            if kind == "data" and out and out[-1][0] == "data":
                out[-1][1] += value
            else:
                out.append([kind, value])
        return json.dumps(out, ensure_ascii=False)
    except Exception:  # noqa: BLE001 - an older transformers or jinja: the text, as before
        return source


def built_with(cfg: RunConfig, recon: Any) -> dict:
    """What decides the samples: the student's tokenizer and chat template (as fingerprints, with the
    paths they came from for the message) and every [orchestrator.reconstruction] setting."""
    vocab = recon.tokenizer.get_vocab()  # built once: a dict of every token (150k for Qwen)
    # the values it renders with besides chat_template_kwargs (a reconstruction key, compared by name)
    kwargs = json.dumps(recon.tokenizer.special_tokens_map, sort_keys=True, default=str)
    shown = redacted_dict(cfg)  # the file is kept in the run dir: no secret in it, as in config.toml
    reconstruction = shown["orchestrator"]["reconstruction"]
    reconstruction["max_seq_len"] = recon.max_seq_len  # the one in effect (trainer.seq_len when unset)
    return {
        "student": {k: shown["student"].get(k) for k in ("path", "tokenizer", "chat_template")},
        "tokenizer_sha256": _sha(recon.backend.to_str()),  # the Reconstructor has refused a slow tokenizer
        "vocab_sha256": vocab_sha256(vocab),
        "vocab_size": max(vocab.values(), default=-1) + 1,  # ids may have gaps
        "chat_template_sha256": _sha(recon.template + "\n" + kwargs),  # compared for files without the next
        "chat_template_code_sha256": _sha(template_code(recon.template) + "\n" + kwargs),
        "reconstruction": reconstruction,
    }


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    was, now = old.get("student", {}), new["student"]
    if old.get("tokenizer_sha256") not in (None, new["tokenizer_sha256"]):
        out.append(
            f"the student's tokenizer (was from student.path = {was.get('path')!r}, student.tokenizer = "
            f"{was.get('tokenizer')!r}; now {now['path']!r}, {now['tokenizer']!r}: other token ids)"
        )
    key = "chat_template_code_sha256" if "chat_template_code_sha256" in old else "chat_template_sha256"
    if old.get(key) not in (None, new[key]):  # (files written before the code fingerprint: the text's)
        if was.get("chat_template") is None and now["chat_template"] is None:
            where = "the one in the student's tokenizer folder, student.chat_template unset both times"
        else:
            where = f"student.chat_template was {was.get('chat_template')!r}, now {now['chat_template']!r}"
        out.append(f"the student's chat template ({where}; the template text or the values it renders with differ)")
    saved = old.get("reconstruction", {})
    was_len, now_len = saved.get("max_seq_len"), new["reconstruction"]["max_seq_len"]
    if isinstance(was_len, int) and isinstance(now_len, int) and now_len < was_len:
        out.append(
            f"orchestrator.reconstruction.max_seq_len (trainer.seq_len when unset) was {was_len}, now {now_len}: "
            "samples published under the longer limit would be too long for a trainer of the new one (it may "
            "be raised on a rerun, not lowered)"
        )
    for key, value in new["reconstruction"].items():
        if key in RENDERING and key in saved and saved[key] != value:
            out.append(f"orchestrator.reconstruction.{key} (was {saved[key]!r}, now {value!r})")
    return out


def check_built_with(cfg: RunConfig, run_dir: Path, recon: Any, write: bool = True) -> None:
    """Refuse a rerun whose samples would be built otherwise than the published ones; else (re)write the
    file (unless `write` is False: --dry-run). Called by the producer before it publishes anything."""
    path = Path(run_dir) / FILE
    now = built_with(cfg, recon)
    shards = list_shards(Path(run_dir) / "samples") if (Path(run_dir) / "samples").is_dir() else []
    if shards and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        diffs = _differences(old, now) if isinstance(old, dict) else []
        if diffs:
            recording = Path(run_dir) / "recording.jsonl"
            again = (
                f"from the recorded answers, without asking the teacher again for them: copy {recording} into "
                "NEW_DIR and rerun with --output_dir NEW_DIR (each recorded answer is rebuilt, only the rest is asked)"
                if recording.is_file()
                else "--output_dir NEW_DIR"
            )
            raise SamplesBuiltOtherwise(
                f"{Path(run_dir) / 'samples'} holds {len(shards)} shard(s) built with other settings than this "
                f"run's: {'; '.join(diffs)}. Resuming would mix two renderings of the conversations in one "
                f"samples folder. Fix: rerun with the earlier settings ({path} names them), or build every "
                f"sample with the new ones into another run dir, {again}"
            )
        if old == now:
            return
    if write:
        atomic_write_text(path, json.dumps(now, indent=1) + "\n")
