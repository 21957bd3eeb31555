"""Offline replay: recorded conversations -> student training samples, with no teacher.

Reads conversations that were already paid for (our own teacher recordings, chat
JSONL, ShareGPT, OpenAI Batch API output paired with its input file, or local
Parquet/JSONL datasets through `datasets`), applies the `[orchestrator.replay]`
filters, rebuilds each conversation in the student's own tokens with the
`Reconstructor`, and publishes the samples through `ShardWriter` exactly as a live
rollout does. Nothing here opens a network connection.

Properties kept here (and tested in tests/test_replay*.py):
- Streaming: inputs are read one line (or dataset row) at a time; memory does not
  grow with the file size (OpenAI Batch pairing keeps one small index entry per
  request of the batch *input* file).
- Deterministic: the same inputs and tokenizer give byte-identical sample shards.
- Messages, not teacher tokens: one recording replays for any student tokenizer.
- Bad records stop the replay with file, line and field (`on_error = "fail"`) or
  are skipped and listed in run_dir/replay_rejects.jsonl (`on_error = "skip"`).
  A half-written last line (a crash mid-append) is always skipped and reported.

Entry points: `replay(cfg, run_dir, reconstructor, ...)` (what `distill replay` and
`[orchestrator.source] type = "replay"` call) and `iter_conversations(...)`, the
reading + parsing half on its own.

Modules: records (errors, bad records, shared field checks), reading (paths, JSONL lines),
formats/ (the registry: one module per format, each a detector + a parser), inputs
(records -> Conversations), filters, driver (the run, through orchestrator/sink.py).
"""

from distill.core.conversation import Conversation
from orchestrator.replay.driver import (
    ON_ERROR,
    REPLAY_BATCH,
    REPLAY_BATCH_BYTES,
    replay,
)
from orchestrator.content_parts import text_of
from orchestrator.replay.filters import assistant_text, make_filter
from orchestrator.replay.formats import FORMATS, Format, ParseContext, detect_format
from orchestrator.replay.formats.dataset import DATASET_SUFFIXES
from orchestrator.replay.formats.dataset import read as iter_dataset
from orchestrator.replay.formats.openai_batch import BatchInputIndex
from orchestrator.replay.formats.sharegpt import SHAREGPT_ROLES, SHAREGPT_TOOL_CALL
from orchestrator.replay.inputs import COLUMN_NAMES, iter_conversations
from orchestrator.replay.reading import Line, iter_jsonl, resolve_inputs
from orchestrator.replay.records import (
    MESSAGE_KEYS,
    BadRecord,
    RecordError,
    ReplayError,
    content_id,
    normalize_message,
)

__all__ = [
    "COLUMN_NAMES",
    "DATASET_SUFFIXES",
    "FORMATS",
    "MESSAGE_KEYS",
    "ON_ERROR",
    "REPLAY_BATCH",
    "REPLAY_BATCH_BYTES",
    "SHAREGPT_ROLES",
    "SHAREGPT_TOOL_CALL",
    "BadRecord",
    "BatchInputIndex",
    "Conversation",
    "Format",
    "Line",
    "ParseContext",
    "RecordError",
    "ReplayError",
    "assistant_text",
    "content_id",
    "detect_format",
    "iter_conversations",
    "iter_dataset",
    "iter_jsonl",
    "make_filter",
    "normalize_message",
    "replay",
    "resolve_inputs",
    "text_of",
]
