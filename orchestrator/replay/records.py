"""Replay's record model: errors naming file:line:field, bad records, and the field checks
every format parser shares (a bad shape is a RecordError with its field and reason code)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from distill.core.conversation import Conversation
from orchestrator.legacy_functions import LegacyError, is_legacy, modern_message, modern_tools
from orchestrator.lines import SHAREGPT_FIX, SHAREGPT_TURN, content_problem, json_text_hint, json_type, weight_ok

# Message keys passed on to reconstruction (a legacy function_call is one of the tool_calls first:
# orchestrator/legacy_functions.py); anything else (refusal, annotations, audio, ...) is dropped.
MESSAGE_KEYS = ("role", "content", "reasoning_content", "reasoning", "tool_calls", "tool_call_id", "name")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ReplayError(ValueError):
    """A problem with a replay input, naming the file, line and field, and the fix."""

    def __init__(self, file: str, line: int | None, field: str | None, problem: str, fix: str = ""):
        self.file, self.line, self.field, self.problem, self.fix = str(file), line, field, problem, fix
        self.reason: str | None = None  # set for a bad record (BadRecord.as_error)
        where = f"{file}:{line}" if line else str(file)
        msg = f"{where}: " + (f"field {field!r}: " if field else "") + problem
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class RecordError(Exception):
    """A bad record, before its location is known (the reader adds file and line).
    `reason` is its code in the summary's bad_record_reasons (see docs/replay.md)."""

    def __init__(self, field: str | None, problem: str, fix: str = "", reason: str = "bad_field"):
        super().__init__(problem)
        self.field, self.problem, self.fix, self.reason = field, problem, fix, reason


@dataclass
class BadRecord:
    """A line that could not be read; listed in replay_rejects.jsonl."""

    file: str
    line: int
    field: str | None
    error: str
    partial: bool = False  # a half-written last line (no trailing newline, not valid JSON)
    excerpt: str = ""
    reason: str = "bad_field"  # the code counted in the summary's bad_record_reasons
    hint: str = ""  # what the whole file is instead of JSON Lines (a CSV, pretty JSON: jsonl.shape_hint)

    def to_json(self) -> str:
        return json.dumps(
            {
                "file": self.file,
                "line": self.line,
                "field": self.field,
                "reason": self.reason,
                "error": self.error,
                "partial": self.partial,
                "excerpt": self.excerpt,
            },
            ensure_ascii=False,
        )

    def problem_and_fix(self) -> tuple[str, str]:
        """`error` cut at its first ". Fix: " (the fix "" where it names none)."""
        problem, _, fix = self.error.partition(". Fix: ")
        return problem, fix

    def as_error(self) -> ReplayError:
        """The error `on_error = "fail"` raises: the problem, plus how to go on without this record."""
        skip = 'or skip bad records with orchestrator.replay.on_error = "skip" (distill replay --on-error skip)'
        problem, fix = self.problem_and_fix()
        err = ReplayError(
            self.file, self.line, self.field, problem, f"{fix}; {skip}" if fix else f"correct the record, {skip}"
        )
        err.reason = self.reason  # the bad-record reason code (docs/replay.md, "Bad records")
        return err


def content_id(messages: list[dict[str, Any]], tools: Any) -> str:
    """A stable id for a conversation without one: a hash of its content."""
    blob = json.dumps([messages, tools], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "h" + hashlib.sha256(blob.encode("utf-8", "backslashreplace")).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Field checks shared by the format parsers
# ---------------------------------------------------------------------------


def normalize_message(m: Any, field: str) -> dict[str, Any]:
    """A chat message, its structure checked, reduced to the keys reconstruction reads.

    Only the shape is checked here (a bad shape is a bad record, reported with its field);
    what the student's template can take (roles, text-only parts, tool-call arguments) is
    judged by the Reconstructor and counted as a rejection reason.
    """
    if not isinstance(m, dict):
        raise RecordError(field, f"expected a message object, got {type(m).__name__}")
    role = m.get("role")
    if not isinstance(role, str) or not role:
        if "from" in m and "value" in m:
            raise RecordError(f"{field}.role", f"expected a role string, got {role!r}{SHAREGPT_TURN}", SHAREGPT_FIX)
        raise RecordError(f"{field}.role", f"expected a role string, got {role!r}")
    if is_legacy(m):  # OpenAI's legacy function calling: a tool call and its result
        try:
            m = modern_message(m)
        except LegacyError as e:
            raise RecordError(f"{field}.{e.key}", e.problem, e.fix) from None
        role = m["role"]
    content = m.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise RecordError(
            f"{field}.content", f"expected a string, null or a list of content parts, got {type(content).__name__}"
        )
    missing = content_problem(m, final=False)
    if missing:
        raise RecordError(
            f"{field}.content", missing, "give the message its text, or drop the record", "missing_content"
        )
    # OpenAI's newer "developer" role is the system prompt under another name.
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    for key in MESSAGE_KEYS[2:]:
        v = m.get(key)
        if v is None or (key == "tool_calls" and v == []):
            continue
        if key == "tool_calls" and not isinstance(v, list):
            raise RecordError(f"{field}.tool_calls", f"expected a list of tool calls, got {type(v).__name__}")
        if key != "tool_calls" and not isinstance(v, str):
            raise RecordError(f"{field}.{key}", f"expected a string, got {type(v).__name__}")
        out[key] = v
    if message_weight(m, field) == 0:
        out["weight"] = 0
    return out


def message_weight(m: dict, field: str) -> int:
    """A message's (ShareGPT turn's) `weight`, as in OpenAI's chat fine-tuning format: 0 = context only,
    not trained; 1, the default when absent. Any other value is a bad record naming `field.weight`.
    Only a 0 is kept on the message: rows that spell out the 1 keep the same content id."""
    w = m.get("weight")
    if not weight_ok(w):
        raise RecordError(f"{field}.weight", f"expected 0 or 1, got {w!r}", "use 0 (not trained) or 1 (trained)")
    return 0 if w == 0 else 1


def _messages(v: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise RecordError(
            field,
            "expected a non-empty list of messages"
            + (", got nothing" if v is None else ", got an empty list" if v == [] else f", got {json_type(v)}")
            + json_text_hint(v),
        )
    return [normalize_message(m, f"{field}[{i}]") for i, m in enumerate(v)]


def _answered(messages: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """A dataset conversation (chat), checked to end in something to train on (lines.content_problem).

    Not applied to teacher answers as received (recording, Batch API output): an empty answer there is
    what the teacher sent, not a malformed record; reconstruction rejects it (empty_assistant_turn),
    counted and listed, and an on_error = "fail" replay of a paid-for recording does not stop on it."""
    problem = content_problem(messages[-1], final=True)
    if problem:
        raise RecordError(
            f"{field}.content",
            problem,
            "give the final assistant message its answer, or drop the record",
            "empty_answer",
        )
    return messages


def record_tools(obj: dict) -> list[dict[str, Any]] | None:
    """A record's `tools`, or its legacy `functions` list as tools (orchestrator/legacy_functions.py)."""
    try:
        return _tools(modern_tools(obj.get("functions"), obj.get("tools")))
    except LegacyError as e:
        raise RecordError(e.key, e.problem, e.fix) from None


def _tools(v: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):  # ShareGPT datasets often store tools as a JSON string
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise RecordError(field, f"a string that is not valid JSON ({e.msg})") from None
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise RecordError(field, "expected a list of tool definitions (objects)")
    return v


def _opt_str(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None or isinstance(v, str):
        return v
    raise RecordError(key, f"expected a string or null, got {type(v).__name__}")


def _opt_reward(obj: dict, key: str = "reward") -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(key, f"expected a number or null, got {v!r}")
    if not math.isfinite(v):  # json reads NaN/Infinity; NaN passes min_reward and is no JSON in a shard
        raise RecordError(key, f"expected a finite number, got {v!r}", "give a number, or null for no reward")
    return float(v)


def _index(obj: dict, key: str = "sample_index") -> int:
    v = obj.get(key, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordError(key, f"expected a non-negative integer, got {v!r}")
    return v


def _id(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RecordError(key, f"expected a string or integer id, got {type(v).__name__}")
    return str(v)


def conversation(
    fmt: str,
    file: str,
    line: int,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    prompt_id: str,
    sample_index: int,
    finish_reason: str | None,
    reward: float | None,
    model: str | None,
    failed: str | None = None,
) -> Conversation:
    """The Conversation of one replayed record (its sample meta says where it was read)."""
    return Conversation(
        messages,
        tools,
        prompt_id,
        sample_index,
        finish_reason,
        reward,
        model,
        meta={"source": "replay", "format": fmt, "file": file, "line": line},
        format=fmt,
        file=file,
        line=line,
        failed=failed,
    )


def system_field(obj: dict) -> str | None:
    """A dataset record's optional top-level `system` string (sharegpt, prompt_completion); None when
    absent or empty."""
    system = obj.get("system")
    if system in (None, ""):
        return None
    if not isinstance(system, str):
        raise RecordError("system", f"expected a string, got {json_type(system)}")
    return system


def dataset_conversation(fmt: str, obj: dict, file: str, line: int, messages: list[dict[str, Any]]) -> Conversation:
    """The Conversation of a chat-dataset record (chat, sharegpt): tools, id (or a content hash), sample
    index, finish reason, reward and model read from the record's own optional fields."""
    both = [obj.get(k) for k in ("messages", "conversations")]
    if fmt != "prompt_completion" and None not in both and both[0] != both[1]:  # None: a table's absent column
        raise RecordError(
            "conversations",
            "the record holds both 'messages' and 'conversations', and they differ: which one to train on is unclear",
            "keep one of the two fields (or give both the same value)",
        )
    tools = record_tools(obj)
    prompt_id = _id(obj, "id") or content_id(messages, tools)
    return conversation(
        fmt,
        file,
        line,
        messages,
        tools,
        prompt_id,
        _index(obj),
        _opt_str(obj, "finish_reason"),
        _opt_reward(obj),
        _opt_str(obj, "model"),
    )
