"""Templates whose assistant turn ends at the next message's role token (GLM-4).

GLM-4's templates (glm-4-9b-chat, GLM-4.5, GLM-4.6) write nothing after an
assistant turn: `<|assistant|>\\nA` ends the render. The model stops by emitting the role
token of the message that comes next - `<|user|>` after an answer, `<|observation|>` after
tool calls; both are eos ids in its generation config - and the template writes that token
only when such a message follows. So the turn the student emits is A then that token, and
that is what GLM's own fine-tuning code trains (the token after each assistant message).

`probe_next_role` finds that token from renders, never by name: the probe conversation
ending with an assistant turn is rendered alone and with a user message after it (for a
tool-call turn: a tool result after it); the second must start with the first, and what it
adds must start with a special token (after spaces or newlines the template writes before
it). `NextRole.after(message)` is the text through that token, and `PrefixRenders.render`
appends it to every render that ends with an assistant turn: reconstruction then works on
the template as if it ended each assistant turn with that token, which it does wherever a
message follows. Proven for the probe conversation; each turn's own render is then checked
as any turn is (its end token, the chaining proof), so a template that wrote something else
before the next role in some conversation gives a rejection, not a wrong sample.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.reconstruction.end_of_turn import SENTINEL

_HEADS = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
)
_CALL_ID = "call_zq0"
_USER = {"role": "user", "content": "Hi"}


def _call_turn(arguments) -> list[dict]:
    call = {"id": _CALL_ID, "type": "function", "function": {"name": "zq_probe_fn", "arguments": arguments}}
    return [
        {"role": "assistant", "content": SENTINEL, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": _CALL_ID, "name": "zq_probe_fn", "content": "R"},
    ]


@dataclass(frozen=True, slots=True)
class NextRole:
    answer: str  # spaces + the role token after an answer (GLM: "<|user|>")
    calls: str | None  # the same after a tool-call turn ("<|observation|>"); None: not proven

    def after(self, message: dict) -> str:
        """The text that ends this assistant turn when no message follows it in the render."""
        if message.get("tool_calls"):
            return self.calls or ""
        return self.answer


def probe_next_role(render: Callable[..., str], added: list[str]) -> NextRole | None:
    """The NextRole of a template that renders nothing but whitespace after a final answer: `render(messages,
    tools, add_generation_prompt)`, `added` the tokenizer's added tokens (longest first). None for a template
    that writes more there (an end token: end_of_turn.py), or when no probe proves the token after an answer."""
    for head in _HEADS:
        answered = head + [{"role": "assistant", "content": SENTINEL}]
        try:
            alone = render(answered, None, False)
        except Exception:  # noqa: BLE001 - try the next head
            continue
        if SENTINEL not in alone:
            continue
        if alone[alone.rindex(SENTINEL) + len(SENTINEL) :].strip():
            return None  # the template ends the turn itself
        answer = _added_after(render, answered, _USER, added, alone)
        if answer is None:
            continue
        calls = None
        for arguments in ({"zq_key": "v"}, '{"zq_key": "v"}'):  # dict-pasting and string-pasting templates
            turn = _call_turn(arguments)
            calls = _added_after(render, head + turn[:1], turn[1], added)
            if calls is not None:
                break
        return NextRole(answer, calls)
    return None


def _added_after(render, msgs: list[dict], following: dict, added: list[str], alone: str | None = None) -> str | None:
    """What a render of `msgs` plus the `following` message adds right after the render of `msgs` (`alone`,
    when already rendered), through its first special token (spaces or newlines before it included); None if
    the renders fail, the first is not a prefix of the second, or no special token comes first."""
    try:
        alone = render(msgs, None, False) if alone is None else alone
        more = render(msgs + [following], None, False)
    except Exception:  # noqa: BLE001 - not proven
        return None
    if SENTINEL not in alone or not more.startswith(alone):
        return None
    rest = more[len(alone) :]
    spaced = rest.lstrip(" \n")
    tok = next((t for t in added if spaced.startswith(t)), None)
    return None if tok is None else rest[: len(rest) - len(spaced)] + tok


def stop_warning(tokenizer: Any, next_role: NextRole | None, model_dir: str | Path | None = None) -> str | None:
    """A warning when the student's generation_config.json does not list the tokens that end its turns as
    eos ids: trained as the turn's end, the student would not stop at them when it generates. None when it
    lists them all (GLM-4's own does), or for a template without a next role. The file read is the model
    folder's (`model_dir`, what generate and vLLM read) when given, else the tokenizer's."""
    if next_role is None:
        return None
    tokens = [t.strip(" \n") for t in (next_role.answer, next_role.calls) if t]
    folder = model_dir if model_dir is not None else str(getattr(tokenizer, "name_or_path", "") or ".")
    config = Path(folder) / "generation_config.json"
    try:
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        eos = None
    ids = set(eos if isinstance(eos, list) else [eos])
    missing = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) not in ids]
    if not missing:
        return None
    found = f"does not list {', '.join(missing)} in eos_token_id" if config.is_file() else "does not exist"
    return (
        "warning: the student's chat template ends each assistant turn at the next message's role token "
        f"({', '.join(tokens)}), and reconstruction trains it as the turn's end; {config} {found}, so the "
        "student may not stop there when it generates. Fix: list their ids in eos_token_id there (GLM-4's own "
        "generation_config.json does), or stop generation at them"
    )
