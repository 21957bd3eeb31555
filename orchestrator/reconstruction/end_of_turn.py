"""How the student's chat template ends an assistant turn, worked out once from probe renders.

A probe conversation whose assistant content is a sentinel is rendered; what follows the
sentinel is: spaces or newlines the template writes before the end token (Llama 2's
`' ' + eos_token`, Nemotron's "\\n"), the end token (an added token, or else the eos
token), the closing tokens, and the constant final text (`final_tail`, never trained).

The closing tokens are special tokens the template writes right after the end token of
*every* assistant turn, up to and including the eos token: Cohere's Command R7B and Aya end
an answer `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`, and the model stops at the second (its
eos), so it emits both and both are trained. Proven from two renders, never guessed: they
follow the end token at the end of the probe conversation and also where a user turn
follows it (a token only the end of a conversation gets, such as an eos some templates
append after the last turn, is not the turn's); without the eos among them (a template
that always appends the next turn's header, say) there are none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SENTINEL = "\u2063Zq7xSENTINELx7qZ\u2063"

# A tools list for probing a template that renders nothing without one (Hermes' "tool_use"
# template iterates over `tools` unconditionally): tried only when every probe without
# tools raised. Its name differs from tool_args' probe call, so a listed tool is never
# mistaken for a rendered call.
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "zq_listed_tool",
            "description": "probe",
            "parameters": {
                "type": "object",
                "properties": {"zq_listed_key": {"type": "string", "description": "probe"}},
            },
        },
    }
]

_HEADS = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
)


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    token: str  # the end-of-turn token
    spaces: str  # spaces/newlines the template puts between the content and the token
    closing: str  # special tokens after it in every turn, through the eos (Command R's <|END_OF_TURN_TOKEN|>)
    tail: str  # the constant text after the last turn's end (and closing), not trained
    probe_tools: list[dict] | None  # PROBE_TOOLS if the template renders nothing without tools
    probe_render: str  # the probe conversation as rendered


def probe_end_of_turn(render: Callable[..., str], added: list[str], eos: str | None) -> EndOfTurn:
    """The EndOfTurn of a template: `render(messages, tools, add_generation_prompt)`, `added`
    the tokenizer's added tokens' text (longest first). ValueError saying why when no probe
    render ends its assistant turn with a special token."""
    errors = []
    rendered = False  # some probe rendered: a tools list is not what the template lacks
    for tools in (None, PROBE_TOOLS):
        for head in _HEADS if not rendered else ():
            try:
                text = render(head + [{"role": "assistant", "content": SENTINEL}], tools, False)
            except Exception as e:  # noqa: BLE001 - any template error: try the next probe
                errors.append(f"{type(e).__name__}: {e}" + (" (with a tools list)" if tools else ""))
                continue
            rendered = True
            if SENTINEL not in text:
                errors.append("the template does not render assistant content")
                continue
            after = text[text.rindex(SENTINEL) + len(SENTINEL) :]
            spaced = after.lstrip(" \n")  # spaces before the token are part of the turn
            for tok in added + [eos or ""]:
                if tok and spaced.startswith(tok):
                    spaces, rest = after[: len(after) - len(spaced)], spaced[len(tok) :]
                    to_eos = _through_eos(render, head, tools, after, added, eos) if tok != eos else None
                    if to_eos is not None:  # the token is a closing tag: the turn ends at the eos
                        return EndOfTurn(eos or "", to_eos, "", after[len(to_eos) + len(eos or "") :], tools, text)
                    closing = _closing(render, head, tools, spaces + tok, rest, added, eos)
                    return EndOfTurn(tok, spaces, closing, rest[len(closing) :], tools, text)
            errors.append(_no_token(after))
    raise ValueError(
        "cannot work out the end-of-turn token from the student's chat template: " + "; ".join(dict.fromkeys(errors))
    )


def _closing(render, head: list[dict], tools, end: str, rest: str, added: list[str], eos: str | None) -> str:
    """The closing tokens (module docstring): the added tokens that start `rest` (what the
    probe render has after its end token `end`), through the eos, if a render where a user
    turn follows the answer has them after `end` too."""
    run, closing = "", ""
    while tok := next((t for t in added if rest.startswith(t, len(run))), None):
        run += tok
        if tok == eos:
            closing = run
    return closing if closing and _follows_before_user(render, head, tools, end + closing) else ""


def _follows_before_user(render, head: list[dict], tools, text: str) -> bool:
    """Whether `text` follows the answer's content also where a user turn comes after the answer (a render
    that raises proves nothing: False). What the last answer's render has after its content could be the
    conversation's end alone; what both have is the turn's."""
    try:
        probe = render(
            head + [{"role": "assistant", "content": SENTINEL}, {"role": "user", "content": "Hi"}], tools, False
        )
    except Exception:  # noqa: BLE001 - not proven
        return False
    i = probe.find(SENTINEL)
    return i >= 0 and probe.startswith(text, i + len(SENTINEL))


def _through_eos(render, head: list[dict], tools, after: str, added: list[str], eos: str | None) -> str | None:
    """The text the template writes between the content and the eos, where that text holds words of its own
    besides special tokens (Kimi K3 ends each message "<|close|>response<|sep|><|close|>message<|sep|>" before
    its eos <|end_of_msg|>): its first special token is a closing tag, not the turn's end, and the student
    stops only at the eos, so it must learn all of it. Proven as the closing tokens are: the same text and the
    eos follow the content where a user turn comes next. None otherwise (Apriel 1.5's "\n<|end|>\n</s>" has
    only whitespace besides its tokens: the turn ends at <|end|>, as before)."""
    if not eos or eos not in after:
        return None
    between = after[: after.index(eos)]
    words = between
    for t in added:  # longest first
        words = words.replace(t, "")
    if not words.strip():
        return None
    return between if _follows_before_user(render, head, tools, between + eos) else None


def _no_token(after: str) -> str:
    return f"after the assistant content the template renders {after!r}, which does not start with a special token" + (
        " (nothing follows a final assistant turn, and the next message's render does not start with a special "
        "token the student could stop at, as GLM-4's <|user|> is (orchestrator/reconstruction/next_role.py): the "
        "student could not learn where its turn ends. Fix: set student.chat_template to a template that ends "
        "assistant turns with a token)"
        if not after.strip()
        else ""
    )
