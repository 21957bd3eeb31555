"""Show a sample's tokens with the trained ones highlighted: in a terminal, or as HTML.

Token boundaries are visible: consecutive tokens alternate between two shades
(terminal, HTML) and, without colour, are separated by "\u2502"; trained tokens are
wrapped in [[ ]] when colour is off. Newlines and tabs are shown as visible marks.
"""

from __future__ import annotations

import html
from distill.core.contract import Sample

# ANSI background colours: prompt (grey), untrained context (blue), trained (green);
# two shades each so that neighbouring tokens can be told apart.
_ANSI = {
    "prompt": ("\x1b[48;5;236m\x1b[38;5;250m", "\x1b[48;5;238m\x1b[38;5;250m"),
    "context": ("\x1b[48;5;17m\x1b[38;5;252m", "\x1b[48;5;19m\x1b[38;5;252m"),
    "trained": ("\x1b[48;5;22m\x1b[38;5;231m", "\x1b[48;5;28m\x1b[38;5;231m"),
}
_RESET = "\x1b[0m"
#: Token separator without colour (a box-drawing bar: "|" occurs in tokens like <|im_end|>).
SEP = "\u2502"


def token_pieces(sample: Sample, tokenizer) -> list[tuple[str, list[int], str]]:
    """(kind, token ids, text) per token: kind is "prompt", "context" or "trained".

    A token holding only part of a multi-byte character (an emoji split over two
    byte-level tokens) cannot be shown alone; it is shown together with the
    following token(s) of the same kind that complete the character.
    """
    backend = tokenizer.backend_tokenizer
    ids = list(sample.prompt_ids) + list(sample.completion_ids)
    kinds = ["prompt"] * len(sample.prompt_ids) + ["trained" if m else "context" for m in sample.completion_mask]
    texts = backend.decode_batch([[i] for i in ids], skip_special_tokens=False) if ids else []
    out: list[tuple[str, list[int], str]] = []
    n = 0
    while n < len(ids):
        group, text = [ids[n]], texts[n]
        while "\ufffd" in text and n + len(group) < len(ids) and len(group) < 4 and kinds[n + len(group)] == kinds[n]:
            group.append(ids[n + len(group)])
            text = backend.decode(group, skip_special_tokens=False)
        if "\ufffd" in text:  # not completed: show the vocabulary strings
            group, text = [ids[n]], backend.id_to_token(ids[n]) or texts[n]
        out.append((kinds[n], group, text))
        n += len(group)
    return out


def _visible(text: str) -> str:
    return text.replace("\n", "\u21b5\n").replace("\t", "\u2192")


def _header(sample: Sample) -> str:
    return (
        f"{sample.sample_id}  prompt_id={sample.prompt_id!r} index={sample.sample_index} "
        f"finish={sample.finish_reason} tokens={sample.num_tokens} "
        f"(prompt {len(sample.prompt_ids)}, completion {len(sample.completion_ids)}, "
        f"trained {sample.num_trained})"
    )


def render_terminal(sample: Sample, tokenizer, color: bool = True) -> str:
    """The sample as text for a terminal, trained tokens highlighted."""
    parts = [_header(sample), "\n"]
    if color:
        parts.append(
            f"legend: {_ANSI['prompt'][0]} prompt {_RESET} {_ANSI['context'][0]} context {_RESET} "
            f"{_ANSI['trained'][0]} trained {_RESET}\n\n"
        )
        for n, (kind, _ids, text) in enumerate(token_pieces(sample, tokenizer)):
            # colour each line of a token separately so that the background does not bleed
            shade = _ANSI[kind][n % 2]
            parts.append("\n".join(f"{shade}{line}{_RESET}" if line else "" for line in _visible(text).split("\n")))
    else:
        parts.append(f"legend: tokens separated by {SEP}, trained tokens in [[ ]]\n\n")
        prev = None
        for kind, _ids, text in token_pieces(sample, tokenizer):
            if prev == "trained" and kind != "trained":
                parts.append("]]")
            parts.append(SEP)
            if kind == "trained" and prev != "trained":
                parts.append("[[")
            parts.append(_visible(text))
            prev = kind
        if prev == "trained":
            parts.append("]]")
    parts.append("\n")
    return "".join(parts)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
.legend span, .tok { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.tok { border-right: 1px solid rgba(0,0,0,.25); }
.prompt { background: #e4e4e4; color: #555; } .prompt.o { background: #d2d2d2; }
.context { background: #dbe8ff; } .context.o { background: #c5d9ff; }
.trained { background: #b8f0b8; } .trained.o { background: #94e394; }
section { border: 1px solid #ccc; border-radius: 6px; padding: .8em; margin: 1em 0; }
h2 { font-size: 1em; font-family: ui-monospace, monospace; }
.meta { color: #555; font-size: .9em; }
.nl { color: #999; }
"""


def render_html(samples: list[Sample], tokenizer, title: str = "") -> str:
    """A standalone HTML page showing each sample's tokens, trained ones highlighted."""
    esc = html.escape
    out = [
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title or "distill samples")}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title or 'distill samples')}</h1>",
        '<p class="legend">Legend: <span class="tok prompt">prompt (context, not trained)</span> '
        '<span class="tok context">between-turn context (not trained)</span> '
        '<span class="tok trained">trained (the student learns to emit these)</span>. '
        "Alternating shades mark token boundaries; hover a token for its id (a character split "
        "over several tokens is shown as one box with all their ids).</p>",
    ]
    for s in samples:
        out.append(
            f'<section><h2>{esc(s.sample_id)}</h2><div class="meta">prompt_id={esc(repr(s.prompt_id))} '
            f"sample_index={s.sample_index} finish_reason={esc(str(s.finish_reason))} "
            f"teacher={esc(str(s.teacher_model))} reward={esc(str(s.reward))} &middot; "
            f"{s.num_tokens} tokens: prompt {len(s.prompt_ids)}, completion {len(s.completion_ids)}, "
            f"trained {s.num_trained}</div><p>"
        )
        for n, (kind, ids, text) in enumerate(token_pieces(s, tokenizer)):
            body = esc(text).replace("\n", '<span class="nl">\u21b5</span>\n')
            tip = " ".join(map(str, ids))
            out.append(f'<span class="tok {kind}{" o" if n % 2 else ""}" title="{tip}">{body}</span>')
        out.append("</p></section>")
    out.append("</body></html>\n")
    return "".join(out)


__all__ = ["render_terminal", "render_html", "token_pieces"]
