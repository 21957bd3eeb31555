"""File front end (`distill tokenize`): reconstruct every conversation of a JSONL file."""

from __future__ import annotations

import collections
import functools
import json
import os
import sys
from typing import TYPE_CHECKING

from distill.core.contract import atomic_write_text
from distill.core.student import TokenizerError
from distill.core.jsonl import Line, json_array_hint, read_jsonl, shape_hint, starts_json_array
from distill.core.conversation import Conversation
from orchestrator.build_pool import ParallelBuilder, offline_workers
from orchestrator.legacy_functions import LegacyError, modern_tools
from orchestrator.reconstruction.next_role import stop_warning
from orchestrator.reconstruction.reasons import Reject
from orchestrator.reconstruction.reconstructor import Reconstructor
from orchestrator.template_kwargs import check_template_kwargs
from orchestrator.thinking_syntax import ThinkingSyntaxError

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.core.config import Reconstruction
    from orchestrator.replay.formats import ParseContext

#: The rejection reason of each unreadable line's reason (distill/core/jsonl.py); JSON nested past
#: the recursion limit is invalid JSON to a reader.
_LINE_REASONS = {
    "invalid_utf8": "invalid_utf8",
    "invalid_json": "invalid_json",
    "too_deep": "invalid_json",
    "line_too_long": "line_too_long",
}


class TokenizeInputError(Exception):
    """An input `distill tokenize` cannot read at all (missing, a folder, not JSONL); the message names
    the file and the fix."""


def check_input(path: str) -> None:
    """Raise TokenizeInputError unless `path` is a readable file that may be JSONL (checked before
    the tokenizer loads, so a wrong path costs no wait)."""
    jsonl = 'one JSON object a line: {"messages": [...]}'
    if not os.path.exists(path):
        raise TokenizeInputError(f"{path} does not exist. Fix: pass the path of a JSONL file ({jsonl})")
    if os.path.isdir(path):
        raise TokenizeInputError(
            f"{path} is a folder; distill tokenize reads one JSONL file. Fix: pass one of its files, or "
            f"replay the whole folder: distill replay CONFIG {path} (docs/replay.md)"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TokenizeInputError(f"{path} cannot be read ({e.strerror}). Fix: check its permissions") from None
    if head == b"PAR1":
        raise TokenizeInputError(
            f"{path} is a Parquet file; distill tokenize reads JSONL ({jsonl}). Fix: replay it instead, "
            f"distill replay CONFIG {path} (its `dataset` reader reads Parquet; docs/replay.md), "
            "or convert it to JSONL first"
        )
    if head[:2] == b"\x1f\x8b":
        raise TokenizeInputError(
            f"{path} is gzip-compressed; distill tokenize reads plain JSONL. Fix: gunzip -k {path} and pass "
            f"the .jsonl, or replay it: distill replay CONFIG {path} (replay reads .jsonl.gz)"
        )


def tokenize_file(
    tokenizer_dir: str,
    input_path: str,
    output_path: str,
    cfg: "Reconstruction | None" = None,
    chat_template: str | None = None,
    workers: int | str = 0,
    batch_input: str | None = None,
) -> dict:
    """Reconstruct every conversation of a JSONL file; write samples and rejections as JSONL.

    Input lines: {"messages": [...], "tools": [...]?, "finish_reason": "..."?}, or lines of the other
    record formats replay reads (a distill recording, ShareGPT, prompt/completion), read as replay reads them.
    Output lines: {"prompt_ids", "completion_ids", "completion_mask", "line": N} per
    sample, or {"line": N, "error": "<reason>: <detail>"}. N is the 1-based input line.
    The output appears atomically (temp file + rename). Returns counts by reason. `chat_template`: a
    Jinja file replacing the tokenizer's template (`distill tokenize --chat-template`).
    `workers` (orchestrator.reconstruct_workers): worker processes building big batches beside
    this one ("auto": one per core; orchestrator/build_pool.py); the output does not depend on it.
    `batch_input`: the OpenAI Batch API input file whose requests the lines of a batch output file
    answer (format openai_batch, as replay reads it with orchestrator.replay.batch_input).
    """
    from distill.core.config import Reconstruction
    from distill.core.student import load_tokenizer
    from orchestrator.replay.formats import ParseContext

    check_input(input_path)
    ctx = ParseContext(batch=_batch_index(batch_input) if batch_input else None)
    cfg = cfg if cfg is not None else Reconstruction()
    tok = load_tokenizer(tokenizer_dir, chat_template)
    check_template_kwargs(tok, cfg.chat_template_kwargs)  # keys the template never reads: a ConfigError
    try:
        recon = Reconstructor(tok, cfg)
    except ThinkingSyntaxError as e:  # think_tags' <think> tags for a student that writes another syntax
        raise e.config_error() from None
    except ValueError as e:  # no end-of-turn token, a switch the template refuses: one line, as distill run says it
        where = (
            f"the chat template {chat_template}" if chat_template else f"the tokenizer {tokenizer_dir}'s chat template"
        )
        raise TokenizerError(f"{where} cannot be used to build samples: {e}") from None
    if warning := stop_warning(tok, recon.next_role):  # GLM-4: each turn ends with the next role token
        print(warning, file=sys.stderr)
    try:
        with ParallelBuilder(recon, offline_workers(workers)) as builder:
            counts, out_lines, hint = _reconstruct_lines(builder, input_path, ctx)
    finally:
        if ctx.batch is not None:
            ctx.batch.close()
    atomic_write_text(output_path, "".join(x + "\n" for x in out_lines))
    return _summary(input_path, output_path, counts, recon.stats) | ({"hint": hint} if hint else {})


def _batch_index(path: str):
    """The custom_id index of a Batch API input file; TokenizeInputError naming it when it is not one."""
    from orchestrator.replay.formats.openai_batch import BatchInputIndex
    from orchestrator.replay.records import ReplayError

    if not os.path.isfile(path):
        raise TokenizeInputError(
            f"the batch input file {path} (--batch-input, or orchestrator.replay.batch_input) is not a file. Fix: "
            "pass the batch's input file, the .jsonl uploaded to create the batch"
        )
    try:
        return BatchInputIndex([path])
    except ReplayError as e:
        raise TokenizeInputError(
            f"the batch input file (--batch-input, or orchestrator.replay.batch_input): {e}"
        ) from None


def _reconstruct_lines(
    builder: ParallelBuilder, input_path: str, ctx: "ParseContext"
) -> tuple[collections.Counter, list[str], str]:
    """The output lines of every input line, in order, the file's own counts, and what the
    file looks like when it is not JSON Lines (jsonl.shape_hint; "" when it is)."""
    hint = ""
    out_lines: list[str] = []
    counts: collections.Counter = collections.Counter()
    batch: list[tuple[int, Conversation]] = []

    def flush() -> None:
        # the output lines are made where each conversation was built (on every core)
        for res in builder.build([conv for _, conv in batch], functools.partial(_conv_lines, input_path)):
            if isinstance(res, Exception):  # as build_many would have raised it, in one process or several
                raise res
            out_lines.extend(res)
        batch.clear()

    for ln in read_jsonl(input_path, cut_only=True, limit_key="the line limit of distill tokenize"):
        n = ln.number
        if starts_json_array(ln):  # the whole file is wrong, not its first line
            raise TokenizeInputError(
                f"{input_path} is one JSON array, not JSON Lines (one conversation per line). "
                f"Fix: {json_array_hint(input_path)}"
            )
        if ln.blank:
            counts["blank_lines"] += 1
            continue
        counts["lines"] += 1
        convs, err = _parse_line(ln, input_path, ctx)
        if err is None and convs and convs[0].failed:  # a failed Batch API request: no answer to build
            err = Reject("batch_error", f"{input_path}:{n}: {convs[0].failed}")
        if err is not None and n == 1 and (hint := shape_hint(ln, input_path)):  # a CSV or pretty JSON file
            err = Reject(err.reason, f"{err.detail}. Fix: {hint}")
        if err is not None:
            flush()  # keep output in input order
            out_lines.append(json.dumps({"line": n, "error": f"{err.reason}: {err.detail}"}, ensure_ascii=False))
            counts[f"rejected:{err.reason}"] += 1
            continue
        batch += ((n, c) for c in convs)
        if len(batch) >= 256:
            flush()
    flush()
    return counts, out_lines, hint


def _conv_lines(input_path: str, conv: Conversation, result: tuple) -> list[str]:
    """ParallelBuilder's `post`: the output lines of one built conversation."""
    return _result_lines(conv.line, *result, input_path)


def _result_lines(n: int, samples, rejections, input_path: str) -> list[str]:
    """The output lines of input line n: its samples, then its rejections."""
    out = [
        json.dumps(
            {
                "prompt_ids": s.prompt_ids,
                "completion_ids": s.completion_ids,
                "completion_mask": s.completion_mask,
                "line": n,
            }
        )
        for s in samples
    ]
    for r in rejections:
        out.append(json.dumps({"line": n, "error": f"{r.reason}: {input_path}:{n}: {r.detail}"}, ensure_ascii=False))
    return out


def _summary(input_path: str, output_path: str, counts: collections.Counter, stats: collections.Counter) -> dict:
    """The counts tokenize_file returns: the file's own, plus the reconstructor's by reason."""
    for k, v in stats.items():
        if k != "conversations":
            counts[k] += v
    rejected = sum(v for k, v in counts.items() if k.startswith("rejected:"))
    return {
        "input": str(input_path),
        "output": str(output_path),
        "lines": counts.pop("lines", 0),
        "samples": counts.pop("samples", 0),
        "rejected": rejected,
        "by_reason": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("rejected:")},
        **{k: v for k, v in sorted(counts.items()) if not k.startswith("rejected:")},
    }


def _parse_line(ln: Line, path: str, ctx: "ParseContext") -> tuple[list[Conversation], Reject | None]:
    """The conversations of a non-blank line, or why there are none (read by distill/core/jsonl.py:
    a bad byte, bad JSON or an overlong line is that line's rejection, never a crash). A chat line
    ({"messages": [...]}, no "response") is read here; a line of another record format replay reads
    (a distill recording, ShareGPT, prompt/completion) by that format's parser, as replay reads it."""
    n = ln.number
    if ln.reason is not None:
        return [], Reject(_LINE_REASONS.get(ln.reason, ln.reason), f"{path}:{n}: {ln.problem}")
    rec = ln.value
    if isinstance(rec, dict) and isinstance(rec.get("messages"), list) and "response" not in rec:
        if rec.get("finish_reason") is not None and not isinstance(rec["finish_reason"], str):
            return [], Reject("invalid_line", f"{path}:{n}: 'finish_reason' must be a string")
        try:
            tools = modern_tools(rec.get("functions"), rec.get("tools"))
        except LegacyError as e:
            return [], Reject("invalid_message", f"{path}:{n}: {e}")
        conv = Conversation(
            rec["messages"], tools, sample_id=f"line{n}", finish_reason=rec.get("finish_reason"), line=n
        )
        return [conv], None
    if not isinstance(rec, dict):
        hint = (
            f" (got an array: if the file is one JSON array, {json_array_hint(path)})" if isinstance(rec, list) else ""
        )
        return [], Reject("invalid_line", f"{path}:{n}: expected an object with a 'messages' list{hint}")
    return _other_format(rec, path, n, ctx)


#: How a rejection names the format of a line that is not a chat line.
_FORMAT_NAMES = {
    "chat": "a chat line",
    "recording": "a distill recording line",
    "sharegpt": "a ShareGPT line",
    "prompt_completion": "a prompt/completion line",
}


def _other_format(rec: dict, path: str, n: int, ctx: "ParseContext") -> tuple[list[Conversation], Reject | None]:
    """A line that is not a chat line, read by the replay format it is in (orchestrator/replay/formats)."""
    from orchestrator.lines import json_text_hint, json_type
    from orchestrator.replay.formats import _mapping_hint, detect_format, parse
    from orchestrator.replay.records import RecordError

    fmt = ""
    try:
        fmt = detect_format(rec)
        if fmt == "openai_batch" and ctx.batch is None:
            return [], Reject(
                "invalid_line",
                f"{path}:{n}: an OpenAI Batch API output line; its request messages are in the batch input "
                "file (the .jsonl uploaded to create the batch). Fix: name it: distill tokenize --batch-input "
                "BATCH_INPUT.jsonl (or orchestrator.replay.batch_input in --config)",
            )
        if fmt == "chat":  # "messages" that is not a list
            raise RecordError(
                "messages", f"expected a list, got {json_type(rec['messages'])}{json_text_hint(rec['messages'])}"
            )
        return parse(fmt, rec, path, n, ctx), None
    except RecordError as e:
        if e.reason == "unknown_format":  # no format claims it
            keys = sorted(str(k) for k in rec)[:10]
            hint = _mapping_hint(rec)  # " (here perhaps columns = ...)" or ""
            maybe = "; " + hint.strip().removeprefix("(").removesuffix(")") if hint else ""
            return [], Reject(
                "invalid_line",
                f"{path}:{n}: expected an object with a 'messages' list, or a line in another format replay "
                "reads: 'conversations' (ShareGPT), 'prompt'+'completion', 'messages'+'response' (a distill "
                f"recording); got the keys {keys}. Fix: convert it, or replay it: distill replay maps other "
                f"column names with orchestrator.replay.columns (docs/replay.md){maybe}",
            )
        what = f"{_FORMAT_NAMES.get(fmt, fmt)}: " if fmt else ""
        field = f"{e.field}: " if e.field and fmt else ""
        fix = f". Fix: {e.fix}" if e.fix else ""
        return [], Reject("invalid_line", f"{path}:{n}: {what}{field}{e.problem}{fix}")
