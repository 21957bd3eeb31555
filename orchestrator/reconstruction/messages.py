"""Message checks and normalisation: what the template sees, and what verification needs.

Roles, text-only content, tool calls (checked, then passed in the shape the template
expects: orchestrator/tool_args.py; ids made up, in order, only for a template that needs
them), reasoning placed per the `reasoning` policy, tools as plain JSON. The special-token-text
check is special_text.py. Everything here raises `Reject`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.content_parts import TEXT_PARTS, joined_thinking, thinking_text
from orchestrator.legacy_functions import LegacyError, chat_tool, is_legacy, modern_message
from orchestrator.lines import SHAREGPT_FIX, SHAREGPT_TURN, role_hint, weight_ok
from orchestrator.open_reasoning import CLOSE, THINK_FORM, take_thinking
from orchestrator.reconstruction.reasons import Reject
from orchestrator.tool_args import ToolCallShape, parse_arguments, place_calls, short_call_id

KNOWN_ROLES = ("system", "user", "assistant", "tool")
#: message fields besides role and content that reach the template (checked to be strings)
KEPT_KEYS = ("name", "tool_call_id")
_ROLES = frozenset(KNOWN_ROLES)


@dataclass(slots=True)
class Msg:
    """A normalised message: what the template sees, plus what verification needs."""

    data: dict[str, Any]  # passed to the template
    role: str
    content: str  # the teacher's content ("" when absent), verbatim but for open_reasoning.take_thinking
    placed_prefix: str  # text put before the content by the reasoning policy (think_tags)
    reasoning: str  # the teacher's reasoning where the policy places it ("" when absent, or with reasoning = "drop")
    weight: int = 1  # 0: not trained even if its role is in train_roles (OpenAI fine-tuning's "weight")
    # tool calls written as text beside the teacher's content (tool_calls_as_text): the end of `content`,
    # or its start when `calls_first` (a form ending with "{content}")
    placed_calls: str = ""
    calls_data: str = ""  # the teacher's part of placed_calls (the calls' JSON), checked for special-token text
    calls_first: bool = False
    dropped_text: bool = False  # the turn's text left out beside its calls (text_with_tool_calls = "drop")


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type", "text") not in TEXT_PARTS
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Reject(
                    "non_text_content", f"{where}: content part {j} is {kind!r}; only text parts are supported"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise Reject(
        "invalid_message",
        f"{where}: content is a {type(content).__name__}, expected a string, null or a list of text parts",
    )


def _answered_in_order(msgs: list[Msg]) -> list[Msg]:
    """For a template that needs every call and result linked by id (ToolCallShape.short_ids: Mistral's):
    a tool message naming no call answers the next call of the turn before it that no tool message has
    taken yet, in order (the convention of data without ids: the k-th result answers the k-th call).
    Calls without an id got one from their place (`_tool_calls`)."""
    pending: list[str] = []
    for m in msgs:
        if m.role == "assistant":
            pending = [c["id"] for c in m.data.get("tool_calls") or ()]
        elif m.role == "tool" and pending:
            answered = m.data.get("tool_call_id")
            if answered is None:
                m.data["tool_call_id"] = answered = pending[0]
            if answered in pending:  # a result naming another call (an earlier turn's) takes none of these
                pending.remove(answered)
        elif m.role != "tool":
            pending = []
    return msgs


def _kept_fields(m: dict, data: dict[str, Any], where: str, shape: ToolCallShape) -> dict[str, Any]:
    """`data` with the message's name and tool_call_id (checked to be strings; a call id shortened
    where the template needs short ones)."""
    for k in KEPT_KEYS:
        v = m.get(k)
        if v is not None:
            if not isinstance(v, str):
                raise Reject("invalid_message", f"{where}: {k} is a {type(v).__name__}, expected a string")
            data[k] = short_call_id(v) if k == "tool_call_id" and shape.short_ids else v
    return data


def _thinking_parts(m: dict, parts: list, where: str) -> tuple[dict, list]:
    """(the message with the reasoning of its thinking content parts as reasoning_content, the parts
    left): Mistral's and Anthropic's reasoning (orchestrator/content_parts.py). A message whose
    reasoning field says otherwise is rejected; a thinking part whose text cannot be read stays, for
    the content check to reject it (non_text_content)."""
    thought = joined_thinking(parts)
    if not thought:
        return m, parts
    field = m.get("reasoning_content") or m.get("reasoning")
    if isinstance(field, str) and field and field.strip() != thought.strip():
        raise Reject(
            "invalid_message",
            f"{where} has reasoning twice, and they differ: a reasoning field (starts {field[:30]!r}) and "
            f"thinking content parts (start {thought[:30]!r}). Fix: keep one of them",
        )
    return dict(m, reasoning_content=field or thought), [p for p in parts if thinking_text(p) is None]


def _tool_calls(raw: Any, where: str, shape: ToolCallShape) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise Reject("invalid_tool_call", f"{where}: tool_calls is a {type(raw).__name__}, expected a list")
    out = []
    for j, tc in enumerate(raw):
        fn = tc.get("function") if isinstance(tc, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise Reject("invalid_tool_call", f"{where}: tool_calls[{j}] has no function.name")
        args, text = parse_arguments(fn.get("arguments", {}), f"{where}: tool_calls[{j}] ({name})")
        if args is None:
            raise Reject("invalid_tool_arguments", text)
        call: dict[str, Any] = {
            "type": "function",
            "function": {"name": name, "arguments": text if shape.arguments_as_string else args},
        }
        if tc.get("id") is not None:
            call["id"] = short_call_id(str(tc["id"])) if shape.short_ids else str(tc["id"])
        elif shape.short_ids:  # the template raises without one: a handle drawn from the call's place
            call["id"] = short_call_id(f"{where}.tool_calls[{j}]")
        out.append(call)
    return out


def normalize_messages(
    messages: Any,
    reasoning_policy: str,
    shape: ToolCallShape = ToolCallShape(),
    places_reasoning: bool = False,
    call_form: str | None = None,
    drop_call_text: bool = False,
    reasoning_form: str | None = None,
    other_tags: tuple[tuple[str, str], ...] = (),
) -> list[Msg]:
    """Check `messages` and convert them to what the template sees (tool calls in
    `shape`, see orchestrator/tool_args.py, or written as text after the content in `call_form`:
    Reconstruction.tool_calls_as_text). A thinking block the teacher wrote inside an
    assistant's content (no reasoning field) is reasoning too: dropped with reasoning = "drop",
    moved to reasoning_content with "template" where the template places it (`places_reasoning`),
    else left in the content as written, or, with "think_tags" in another `reasoning_form` than
    <think> tags (Reconstruction.reasoning_form), written in that form. A block in `other_tags` (the
    student's own thinking syntax, when not <think> tags) is such a block too. Raises Reject."""
    moves = reasoning_policy == "drop" or (reasoning_policy == "template" and places_reasoning)
    moves = moves or (reasoning_policy == "think_tags" and reasoning_form not in (None, THINK_FORM))
    if not isinstance(messages, list) or not messages:
        raise Reject("invalid_message", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        # The usual shape, {"role": ..., "content": "<text>"} and nothing else, with a
        # non-empty content for an assistant: exactly what the checks below give it.
        if type(m) is dict and len(m) == 2:
            role, content = m.get("role"), m.get("content")
            plain = role != "assistant" or (
                content and not (moves and type(content) is str and _closes(content, other_tags))
            )
            if type(content) is str and type(role) is str and role in _ROLES and plain:
                out.append(Msg({"role": role, "content": content}, role, content, "", ""))
                continue
        where = f"messages[{i}]"
        m = _with_role(m, where)
        role = "system" if m["role"] == "developer" else m["role"]  # OpenAI's newer name for it (as replay reads it)
        if role not in KNOWN_ROLES:
            raise Reject(
                "unknown_role", f"{where} has role {role!r}{role_hint(role)}; known roles are {', '.join(KNOWN_ROLES)}"
            )
        content = m.get("content")
        if content is None and role != "assistant":  # as replay's missing_content: not an empty turn
            raise Reject(
                "invalid_message",
                f"{where} ({role}) has no content (null or missing); only an assistant message may have none. "
                'Give its text ("" for an empty one) or drop the message',
            )
        if type(content) is not str:  # the usual case needs no call
            if role == "assistant" and isinstance(content, list):  # reasoning as parts of its own
                m, content = _thinking_parts(m, content, where)
            content = _text_content(content, where)
        data = _kept_fields(m, {"role": role, "content": content}, where, shape)
        if role == "assistant":
            form = reasoning_form or THINK_FORM
            args = (reasoning_policy, shape, moves, call_form, drop_call_text, form, other_tags)
            out.append(_assistant(m, data, where, *args))
        else:
            out.append(Msg(data, role, content, "", "", _weight(m.get("weight"), where)))
    return _answered_in_order(out) if shape.short_ids else out


def _closes(content: str, other_tags: tuple[tuple[str, str], ...]) -> bool:
    """Whether `content` holds a closing thinking tag: </think>, or one of `other_tags`'."""
    return CLOSE in content or any(closing in content for _, closing in other_tags)


def _with_role(m: Any, where: str) -> dict:
    """`m`, checked to be an object with a string role; OpenAI's legacy function calling read as the
    tool call and tool message it is (orchestrator/legacy_functions.py). Raises Reject."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        turn = isinstance(m, dict) and "from" in m and "value" in m
        raise Reject(
            "invalid_message",
            f"{where} is not an object with a string 'role'"
            + (f"{SHAREGPT_TURN}. Fix: {SHAREGPT_FIX}" if turn else ""),
        )
    if not is_legacy(m):
        return m
    try:
        return modern_message(m)
    except LegacyError as e:
        raise Reject("invalid_tool_call", f"{where}: {e}") from None


# size: one message's fields in order (reasoning, calls, their text, empty turn, reasoning policy)
def _assistant(
    m: dict,
    data: dict[str, Any],
    where: str,
    policy: str,
    shape: ToolCallShape,
    moves: bool,
    form: str | None,
    drop_call_text: bool = False,
    reasoning_form: str = THINK_FORM,
    tags: tuple[tuple[str, str], ...] = (),
) -> Msg:
    """An assistant message: tool calls in `shape` (or as text after the content in `form`), reasoning
    placed per `policy` (think_tags: in `reasoning_form`; a thinking block inside content taken out of it
    first when `moves`); `data` holds its role and text content. Text beside calls that the template cannot show is dropped
    when `drop_call_text`, else the turn is rejected naming the switch."""
    content = data["content"]
    r = m.get("reasoning_content") or m.get("reasoning") or ""
    if not isinstance(r, str):
        raise Reject("invalid_message", f"{where}: reasoning is a {type(r).__name__}, expected a string")
    r, content = take_thinking(r, content, moves and (policy == "drop" or not r), tags)
    data["content"] = content
    calls = _tool_calls(m["tool_calls"], where, ToolCallShape() if form else shape) if m.get("tool_calls") else []
    placed = data_part = ""
    dropped = first = False
    if calls and form:  # written as the student writes them, beside the content: trained as text
        objs = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
        content, placed, first = place_calls(content, objs, form)
        data_part = json.dumps(objs, ensure_ascii=False)
        data["content"] = content
    elif calls:
        data["tool_calls"] = calls
        dropped = _text_beside_calls(content, shape, drop_call_text, where)
        if dropped:
            content = data["content"] = ""
        if not content and shape.null_content:
            data["content"] = None  # the template renders tool calls only for null content
    if not content and not calls:
        if r:  # the teacher thought and answered nothing: training on it teaches an empty answer
            raise Reject(
                "empty_assistant_turn",
                f"{where} is an assistant turn with reasoning but no answer (no content, no tool calls); "
                "often the teacher ran out of tokens while thinking (in a rollout: raise orchestrator.sampling.max_tokens)",
            )
        raise Reject("empty_assistant_turn", f"{where} is an assistant turn with no content and no tool calls")
    prefix = reasoning = ""
    if r and policy == "template":
        # both names, as transformers' apply_chat_template aliases them
        data["reasoning_content"] = data["thinking"] = reasoning = r
    elif r and policy == "think_tags":
        reasoning = r
        prefix = reasoning_form.replace("{reasoning}", r)
        data["content"] = prefix + content
    weight = _weight(m.get("weight"), where)
    return Msg(data, "assistant", content, prefix, reasoning, weight, placed, data_part, first, dropped)


def without_reasoning_fields(message: dict) -> dict:
    """`message` without the reasoning fields `_assistant` sets under reasoning = "template" (both names)."""
    return {k: v for k, v in message.items() if k not in ("reasoning_content", "thinking")}


def _text_beside_calls(content: str, shape: ToolCallShape, drop: bool, where: str) -> bool:
    """Whether to drop a tool-call turn's text, which the template cannot show beside the calls
    (ToolCallShape.drops_text, null_content); raises Reject for such text when not `drop`."""
    if not content or not (shape.drops_text or shape.null_content):
        return False
    if drop:
        return True
    if shape.null_content:
        return False  # the calls are then missing from the render: tool_calls_not_rendered, naming the switch
    raise Reject(
        "template_alters_content",
        f"{where}: the student's chat template renders a turn with tool calls without its text (Llama 3's "
        f"does), so the student would not learn the text (starts {content[:30]!r}) it writes beside its calls. "
        'Fix: set orchestrator.reconstruction.text_with_tool_calls = "drop" to train the calls alone, or use a '
        "student whose template renders both",
    )


def strip_contents(messages: Any) -> Any:
    """Policy content_whitespace = "strip": a copy of `messages` whose text contents (a string, or a
    list of text parts, joined) have no outer whitespace; anything else is left for the checks."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        c = m.get("content") if isinstance(m, dict) else None
        thinking: list = []
        if isinstance(c, list):
            if m.get("role") == "assistant":  # reasoning parts stay as they are (`_thinking_parts`)
                thinking = [p for p in c if thinking_text(p) is not None]
                c = [p for p in c if thinking_text(p) is None]
            try:
                c = _text_content(c, "")
            except Reject:
                pass  # a part that is not text: normalize_messages rejects it, naming the message
        if isinstance(c, str):
            c = c.strip()
            out.append(dict(m, content=[*thinking, {"type": "text", "text": c}] if thinking else c))
        else:
            out.append(m)
    return out


def _weight(w: Any, where: str) -> int:
    """A message's "weight" (OpenAI's chat fine-tuning format): 1 (or none) trains it, 0 keeps it as context only."""
    if not weight_ok(w):
        raise Reject(
            "invalid_message",
            f"{where}: weight is {w!r}; it may be 0 (the turn is context, not trained) or 1 (trained, the default)",
        )
    return 1 if w is None else w


def plain_tools(tools: Any) -> list[dict] | None:
    """Tools as plain JSON data in the chat-completions shape (what the template may see: a bare function
    definition wrapped, as an inference server's request has it; legacy_functions.chat_tool), or a
    rejection."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise Reject("invalid_message", "tools must be a list of objects (JSON schemas)")
    try:
        return [chat_tool(t) for t in json.loads(json.dumps(tools))]
    except (TypeError, ValueError) as e:
        raise Reject("invalid_message", f"tools are not JSON data ({e})") from None
    except RecursionError:
        raise Reject("invalid_message", "tools are nested too deeply to write as JSON") from None


def where_not_unicode(messages: list, tools: Any) -> str:
    """Which message (or the tools) holds text that cannot be UTF-8 encoded."""
    for i, m in enumerate(messages):
        try:
            json.dumps(m, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            return f"messages[{i}]"
    return "tools" if tools else "the rendered text"
