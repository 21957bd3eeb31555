"""The replay format registry: format name -> (detector, parser), one module per format.

A record format is a module with `detect(obj) -> bool` (does this JSON object look like one of
mine? may raise RecordError for a record that is recognisably mine but unusable) and
`parse(obj, file, line, ctx) -> list[Conversation]` (raises RecordError naming the field).
A file format (`dataset`) instead has `reads_file(path)` and `read(path)`, which yields rows
that are then detected and parsed as record formats.

Format "auto" asks the detectors in registry order and takes the first that says yes.
Adding a format: its module, one line in FORMATS, its name in distill/core/formats.py
(docs/replay.md, "Adding a replay format").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from distill.core.conversation import Conversation
from distill.core.formats import REPLAY_FORMATS
from orchestrator.lines import json_type
from orchestrator.replay.formats import chat, dataset, openai_batch, prompt_completion, recording, sharegpt
from orchestrator.replay.records import RecordError


@dataclass(frozen=True)
class Format:
    # Record formats: whether a JSON object is one of this format's records (format "auto"),
    # and its conversations.
    detect: Callable[[dict], bool] | None = None
    parse: Callable[[dict, str, int, Any], list[Conversation]] | None = None
    # File formats: whether "auto" reads a file with `read` (by its name), and the rows of that file.
    reads_file: Callable[[str], bool] | None = None
    read: Callable[[str], Iterator[Any]] | None = None


#: Detection order is this order (a Batch API line has "custom_id" first; a recording line holds
#: "messages" too, so it is asked before chat).
FORMATS: dict[str, Format] = {
    "openai_batch": Format(openai_batch.detect, openai_batch.parse),
    "recording": Format(recording.detect, recording.parse),
    "chat": Format(chat.detect, chat.parse),
    "sharegpt": Format(sharegpt.detect, sharegpt.parse),
    "prompt_completion": Format(prompt_completion.detect, prompt_completion.parse),
    "dataset": Format(reads_file=dataset.reads_file, read=dataset.read),
}
# The config schema (leaf layer) lists the same names: orchestrator.source.format's choices.
assert set(FORMATS) == set(REPLAY_FORMATS), "register the format's name in distill/core/formats.py too"


@dataclass
class ParseContext:
    """What a parser may need besides the record: the Batch API input index (format openai_batch)."""

    batch: Any = None


def file_reader(path: str, fmt: str) -> Callable[[str], Iterator[Any]] | None:
    """The file format that reads `path` (format `fmt`), or None: JSONL, one record a line."""
    for name, f in FORMATS.items():
        if f.read is not None and (fmt == name or (fmt == "auto" and f.reads_file is not None and f.reads_file(path))):
            return f.read
    return None


def detect_format(obj: Any) -> str:
    """Which format one record is in (for format = "auto")."""
    if not isinstance(obj, dict):  # (a file that is one JSON array on one line: reading.iter_jsonl says so)
        raise RecordError(None, f"expected a JSON object per line, got {json_type(obj)}", reason="not_an_object")
    for name, f in FORMATS.items():
        if f.detect is not None and f.detect(obj):
            return name
    keys = sorted(str(k) for k in obj)[:10]
    raise RecordError(
        None,
        f"cannot tell the format from the keys {keys}",
        reason="unknown_format",
        fix="expected 'messages' (chat), 'conversations' (ShareGPT), 'prompt'+'completion' (TRL), 'messages'+'response' "
        "(distill recording) or 'custom_id'+'response' (OpenAI batch output); map other column "
        "names with orchestrator.replay.columns" + _mapping_hint(obj) + ", or set orchestrator.source.format",
    )


# Common names of a single-turn dataset's two text columns (Alpaca, GSM8K, Dolly, ...), most likely first.
_PROMPT_NAMES = ("instruction", "question", "query", "problem", "input", "text")
_COMPLETION_NAMES = ("output", "answer", "response", "solution", "target", "chosen")


def _mapping_hint(obj: dict) -> str:
    """A ready `columns` line when the record has a likely prompt and completion column of strings."""
    prompt = next((k for k in _PROMPT_NAMES if isinstance(obj.get(k), str)), None)
    completion = next((k for k in _COMPLETION_NAMES if isinstance(obj.get(k), str)), None)
    if prompt is None or completion is None:
        return ""
    also = ""
    if prompt != "input" and obj.get("input"):  # Alpaca: the instruction's context, in a third column
        also = "; its 'input' column would be left out: join it to the instruction first"
    return f' (here perhaps columns = {{prompt = "{prompt}", completion = "{completion}"}}{also})'


def parse(kind: str, obj: dict, file: str, line: int, ctx: ParseContext) -> list[Conversation]:
    """The conversations of one record of format `kind`."""
    parser = FORMATS[kind].parse
    assert parser is not None, kind
    return parser(obj, file, line, ctx)
