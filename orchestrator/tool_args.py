"""Tool-call arguments in the shape the student's chat template expects.

Chat templates disagree on `function.arguments`: some serialise a dict
(`arguments | tojson`: Qwen, Llama 3), others paste the JSON string the API returned
(`'```json\\n' + arguments + '\\n```'`: DeepSeek V3/R1 and their distills). Some also
render tool calls only when the turn's content is null (`message['content'] is none`:
DeepSeek). `probe_tool_call_shape` finds out once per template, by rendering a probe
conversation in each shape; reconstruction then passes every tool call in that shape.
Arguments are always checked to be a JSON object first, whatever the shape.

Mistral's templates (7B v0.3, Nemo) also raise on a call id that is not 9 characters long, and
the model writes the id itself (`"id": "..."` in its `[TOOL_CALLS]`); OpenAI-compatible servers
send longer ones (`call_...`, `chatcmpl-tool-...`). The probe finds that out too (`short_ids`), and
reconstruction then passes each call id as 9 alphanumeric characters (`short_call_id`: its last 9
where those are such, else drawn from a hash of it), the same for the call and the tool message
that answers it: an id is only a handle linking the two.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from typing import Any, Callable

from distill.core.jsonl import json_type

_NAME = "zq_probe_tool"
_KEY = "zq_probe_key"
_VALUE = "zq probe value"


@dataclass(frozen=True)
class ToolCallShape:
    """How tool calls are passed to this template."""

    arguments_as_string: bool = False  # the JSON text instead of a dict
    null_content: bool = False  # content None (not "") on a tool-call turn with no content
    probed: bool = False  # whether some shape rendered the probe call
    short_ids: bool = False  # call ids as 9 alphanumeric characters (the template raises on others)
    drops_text: bool = False  # a turn with calls renders without its text (Llama 3's)

    def describe(self) -> str:
        if not self.probed:
            return "the template renders no tool call in any shape"
        return (
            f"arguments as a JSON {'string' if self.arguments_as_string else 'object'}, "
            f"empty content as {'null' if self.null_content else 'an empty string'}"
            + (", call ids of 9 alphanumeric characters" if self.short_ids else "")
            + (", a turn's text not rendered beside its calls" if self.drops_text else "")
        )


_ALNUM = string.ascii_letters + string.digits


def short_call_id(call_id: str) -> str:
    """`call_id`'s last 9 characters if they are ASCII letters and digits (what vLLM passes Mistral's
    tokenizers, and what Mistral Small 3.1's template keeps itself), else 9 such characters drawn from
    its SHA-256. The same id always gives the same one: a call and the tool message answering it stay linked."""
    tail = call_id[-9:]
    if len(tail) == 9 and tail.isascii() and tail.isalnum():
        return tail
    n = int.from_bytes(hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    out = []
    for _ in range(9):
        n, k = divmod(n, len(_ALNUM))
        out.append(_ALNUM[k])
    return "".join(out)


def _probe_call(as_string: bool) -> dict:
    """The probes' tool call, its arguments a dict or their JSON text."""
    args = {_KEY: _VALUE}
    return {
        "type": "function",
        "id": "zqprobe01",  # 9 characters: Mistral's templates insist
        "function": {"name": _NAME, "arguments": json.dumps(args) if as_string else args},
    }


def probe_tool_call_shape(render: Callable[[list[dict]], str]) -> ToolCallShape:
    """The first shape in which `render(messages)` shows the probe call's name and its
    argument, as JSON or as key and value, never as a Python repr (dict and "" first:
    today's shape, which most templates take)."""
    for as_string in (False, True):
        for null in (False, True):
            msgs = [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None if null else "", "tool_calls": [_probe_call(as_string)]},
            ]
            try:
                text = render(msgs)
            except Exception:  # noqa: BLE001 - this shape makes the template raise: try the next
                continue
            # the argument as JSON, or as its key and value (Qwen3-Coder's <parameter=k>v</parameter>),
            # but not a Python repr of a dict pasted as text ({'k': 'v'})
            as_json = f'"{_KEY}"' in text and f'"{_VALUE}"' in text
            as_fields = _KEY in text and _VALUE in text and f"'{_KEY}'" not in text
            if _NAME in text and (as_json or as_fields):
                return ToolCallShape(
                    as_string, null, True, _needs_short_ids(render, msgs), _drops_text(render, msgs, null)
                )
    return ToolCallShape()


def _drops_text(render: Callable[[list[dict]], str], msgs: list[dict], null: bool) -> bool:
    """Whether the template renders the probe call in a turn that also has text, without the text (Llama 3's).
    A template that renders calls only for null content (DeepSeek's) shows the text and not the calls: a
    different refusal (`null_content`)."""
    if null:
        return False
    text = "zq probe text"
    try:
        return text not in render([msgs[0], dict(msgs[-1], content=text)])
    except Exception:  # noqa: BLE001 - the template refuses text beside calls
        return True


def _needs_short_ids(render: Callable[[list[dict]], str], msgs: list[dict]) -> bool:
    """Whether the template raises on the probe call with a longer (OpenAI-style) or a shorter id
    than 9 characters, as Mistral's do (Mistral Small 3.1's takes a long id's last 9 itself)."""
    for call_id in ("call_zqprobe0001", "zq1"):
        call = dict(msgs[-1]["tool_calls"][0], id=call_id)
        try:
            render([msgs[0], dict(msgs[-1], tool_calls=[call])])
        except Exception:  # noqa: BLE001 - the 9-character id rendered, this one raises
            return True
    return False


def probe_renders_tool_results(render: Callable[[list[dict]], str], shape: ToolCallShape) -> bool:
    """Whether the template writes a tool message's content (OLMo 2's drops tool messages: the answer
    after a result would be trained without it), after a turn with text and, for a template that renders
    calls, after a call in its `shape` (a template may write results only there). A template that raises
    on the probes counts as rendering them: a conversation with a tool message then shows its own
    template_error."""
    result = "zq probe result"
    turns = [{"role": "assistant", "content": "Calling."}]
    if shape.probed:
        call = _probe_call(shape.arguments_as_string)
        turns.append({"role": "assistant", "content": None if shape.null_content else "", "tool_calls": [call]})
    raised = 0
    for turn in turns:
        msgs = [
            {"role": "user", "content": "Hi"},
            turn,
            {"role": "tool", "content": result, "tool_call_id": "zqprobe01", "name": _NAME},
            {"role": "assistant", "content": "Done."},
        ]
        try:
            if result in render(msgs):
                return True
        except Exception:  # noqa: BLE001 - the template refuses this shape: say nothing about it
            raised += 1
    return raised == len(turns)


def probe_renders_tools(render: Callable[[list[dict], list[dict]], str], tools: list[dict]) -> bool:
    """Whether the template shows the tool definitions passed as `tools` (`render(msgs, tools)`): the listed
    tool's name in its render of one user message. SmolLM3's reads them from `xml_tools`, Phi-4-mini's from
    a system message's `tools` field: passed as `tools` they vanish, and a student trained on its calls
    would learn to call tools it was never shown. A template that raises counts as showing them."""
    name = tools[0]["function"]["name"]
    try:
        return name in render([{"role": "user", "content": "Hi"}], tools)
    except Exception:  # noqa: BLE001 - the template refuses this shape: say nothing about it
        return True


def parse_arguments(raw: Any, where: str) -> tuple[dict | None, str | None]:
    """(arguments as a dict, the JSON text to paste), or (None, why not) when they are
    not a JSON object. A string is kept verbatim as the text (what the API returned); a blank one
    or null (what some servers send for a function without parameters, as for a missing
    "arguments") is the empty object "{}"."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, "{}"
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as e:
            return None, f"{where} arguments are not valid JSON ({e.msg} at char {e.pos})"
        except RecursionError:
            return None, f"{where} arguments are JSON nested too deeply to read"
        text = raw
    else:
        try:  # the template sees plain JSON data only
            text = json.dumps(raw, ensure_ascii=False)
            parsed = json.loads(text)
        except (TypeError, ValueError) as e:
            return None, f"{where} arguments are not JSON data ({e})"
        except RecursionError:
            return None, f"{where} arguments are nested too deeply to write as JSON"
    if not isinstance(parsed, dict):
        return None, f"{where} arguments are a JSON {json_type(parsed)}, expected an object"
    return parsed, text


CONTENT = "{content}"  # where a tool_calls_as_text form puts the turn's text


def place_calls(content: str, objs: list[dict], form: str) -> tuple[str, str, bool]:
    """(the turn's text, the calls' text in it, whether the calls come first) for a turn's `content` and
    calls written in `form`: where the form ends with "{content}" (LFM2's turns open with their call),
    the calls then the content; where it starts with it, the content then the rest of the form, as
    written; without it, the content, a newline when there is content, then the calls."""
    if form.endswith(CONTENT):
        text = calls_as_text(objs, form[: -len(CONTENT)])
        return text + content, text, True
    if form.startswith(CONTENT):
        text = calls_as_text(objs, form[len(CONTENT) :])
        return content + text, text, False
    text = ("\n" if content else "") + calls_as_text(objs, form)
    return content + text, text, False


def calls_as_text(objs: list[dict], form: str) -> str:
    """A turn's tool calls ({"name", "arguments"} objects) written in `form` (Reconstruction.tool_calls_as_text):
    "{call}" replaced by one call's JSON, the form repeated per call with a newline between; or "{calls}"
    by the JSON list of all of them. The JSON is written as json.dumps writes it, with the characters as
    they are (what the Hermes-style templates that do render calls write)."""
    if "{calls}" in form:
        return form.replace("{calls}", json.dumps(objs, ensure_ascii=False))
    return "\n".join(form.replace("{call}", json.dumps(o, ensure_ascii=False)) for o in objs)
