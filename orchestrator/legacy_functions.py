"""OpenAI's legacy function calling, read as the tool calls it is.

Before tool calls, OpenAI's chat format wrote a call as the assistant message's `function_call`
({"name": ..., "arguments": "<JSON text>"}), the call's result as a message of role "function"
(with the function's `name`), and the functions on offer as the record's `functions` list (its
chat fine-tuning format too). Older datasets and servers still use it. It says the same as
`tool_calls` (one call, no id), role "tool" and `tools` (each definition wrapped as
{"type": "function", "function": ...}), so every path that reads messages converts it here:
replay's records, `distill tokenize`'s chat lines, `Reconstructor.build` and a teacher's answer
(orchestrator/kinds/chat.py). Without it a call was dropped from its turn (the turn trained
without the call it made) or rejected under a wrong reason, and a result's role was unknown.
A message or record that holds both spellings is refused: which one to train is unclear.
"""

from __future__ import annotations

from typing import Any


class LegacyError(ValueError):
    """A legacy field that cannot be read as its tool-call equivalent; `key` names the field."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(f"{problem}. Fix: {fix}")
        self.key, self.problem, self.fix = key, problem, fix


def is_legacy(m: Any) -> bool:
    """Whether a message uses the legacy spelling (role "function", or a `function_call`)."""
    return isinstance(m, dict) and (m.get("role") == "function" or m.get("function_call") is not None)


def as_tool_call(fc: Any) -> dict[str, Any]:
    """A legacy `function_call` as one tool call (arguments as given: checked with every tool call's)."""
    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str) or not fc["name"]:
        raise LegacyError(
            "function_call",
            "the legacy function_call is not an object with a function name",
            'write it as {"name": "...", "arguments": "{...}"}, or as tool_calls',
        )
    return {"type": "function", "function": {"name": fc["name"], "arguments": fc.get("arguments")}}


def modern_message(m: dict[str, Any]) -> dict[str, Any]:
    """`m` with role "function" as "tool" (its `name` kept) and a `function_call` as `tool_calls`;
    `m` itself when it has neither. Raises LegacyError."""
    if m.get("role") == "function":
        m = {**m, "role": "tool"}
    fc = m.get("function_call")
    if fc is None:
        return m
    if m.get("role") != "assistant":
        raise LegacyError(
            "function_call",
            f"a {m.get('role')!r} message holds a function_call; only an assistant message makes calls",
            "move the call to the assistant message that made it",
        )
    if m.get("tool_calls"):
        raise LegacyError(
            "function_call",
            "the message holds both tool_calls and the legacy function_call: which one it made is unclear",
            "keep one of the two",
        )
    out = {k: v for k, v in m.items() if k != "function_call"}
    out["tool_calls"] = [as_tool_call(fc)]
    return out


def modern_tools(functions: Any, tools: Any) -> Any:
    """`tools`, or the legacy `functions` list as tools when there are no tools. Raises LegacyError."""
    if functions is None or functions == [] or functions == "":
        return tools
    if tools is not None and tools != [] and tools != "":
        raise LegacyError(
            "functions",
            "the record holds both tools and the legacy functions list: which ones were offered is unclear",
            "keep one of the two",
        )
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise LegacyError(
            "functions", "the legacy functions field is not a list of function definitions (objects)", "fix or drop it"
        )
    return [chat_tool(f) for f in functions]


def chat_tool(t: dict) -> dict:
    """A tool definition in the chat-completions shape, {"type": "function", "function": {...}}, which
    inference servers take and render: a bare function definition (the legacy `functions` list's, and
    function-calling datasets') and the Responses API's flat {"type": "function", "name": ...} are
    wrapped; any other definition is returned as it is."""
    if "function" in t or "name" not in t or t.get("type", "function") != "function":
        return t
    return {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
