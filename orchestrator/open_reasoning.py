"""Trained turns for templates whose generation prompt opens the reasoning block.

DeepSeek-R1-Distill's generation prompt ends "<｜Assistant｜><think>\\n", while its
render of a finished assistant turn is "<｜Assistant｜>" + the answer (reasoning
dropped) + "<｜end▁of▁sentence｜>". The prompt is not a prefix of the turn's render,
so the usual cut (turn = F_k[len(P_k):]) does not exist. What the student emits after
that prompt is the rest of the thinking block, the closing tag, the answer and the end
token; `opened_turn` builds that text and proves it from the template's own renders:

1. With a sentinel as the content, the template renders the turn as
   `prefix + sentinel + eot + tail`: a history turn is the header `prefix`, the content
   verbatim, the end token.
2. The generation prompt is `prefix + O` with O non-empty (O = "<think>\\n"): the same
   header, then the opening the student continues from.
3. The complete turn content C = O + reasoning + "\\n</think>\\n\\n" + answer (the
   `think_tags` layout; reasoning from reasoning_content/reasoning, "" when absent or
   with reasoning = "drop", or the teacher's own "<think>...</think>" inside content)
   starts with O, and the template renders a turn whose content is C as
   `prefix + C + eot + tail`, or as `prefix + (C after its "</think>") + eot + tail`
   (it drops the reasoning at exactly our closing tag: the tag is the template's), that
   answer's leading whitespace stripped or not (Nemotron Super v1.5 strips it).

From 1-3: prompt + T, with T = C[len(O):] + eot, is `prefix + C + eot`: the render of
a turn with content C, the answer verbatim after the template's own closing tag. Any
check failing raises ValueError with what differs (a template_mismatch rejection).

A second shape: NVIDIA's Nemotron Nano 2 renders the last assistant turn as the generation
prompt itself ("<SPECIAL_11>Assistant\\n<think>\\n") + the content, stripped, verbatim +
"\\n<SPECIAL_12>". The prompt is a prefix of the render, but the plain cut would train an
answer inside a block the prompt opened and that nothing closes (no reasoning), or a second
"<think>" (reasoning as think_tags, or the teacher's block inside content). Here prefix (1)
is the whole prompt and ends with O; T = C[len(O):] + eot, where the template renders
prefix + C[len(O):] + eot + tail verbatim (C[len(O):] less its leading newlines, for an
empty block, where the template strips the content: "<think>\\n</think>\\n\\nA").

A fifth shape: DeepSeek-V3.1 with thinking on. The generation prompt is header + "<think>", and a finished
turn renders as header + "</think>" + answer (the history keeps the block's closing tag, never its opening or
the reasoning; anything up to "</think>" in the content is cut). With `closing` the text from the probe's last
"</think>" up to the content, T = reasoning + closing + answer + eot: the template's own layout with the
reasoning where it leaves the block empty, proven by rendering a turn whose content is
C = opening + reasoning + closing + answer as header + closing + answer + eot + tail (the template drops the
reasoning at exactly that closing tag). Tool-call turns: reconstruction/thinking_blocks.py.
"""

from __future__ import annotations

from typing import Callable

SENTINEL = "\u2063Zq7xOPENx7qZ\u2063"
OPEN, CLOSE = "<think>", "</think>"
THINK_TAGS = ((OPEN, CLOSE),)
#: reasoning = "think_tags": the layout of the reasoning before the answer, unless reasoning_form says otherwise
THINK_FORM = "<think>\n{reasoning}\n</think>\n\n"


def complete_content(opening: str, content: str, reasoning: str) -> str:
    """C: the whole turn content as the student writes it after `opening`."""
    if CLOSE in content:  # the teacher's own thinking block, inside content
        if content.startswith(opening):
            return content
        inline = leading_block(content)  # "<think>R</think>A": laid out as the template writes it
        if inline is None:  # the block's text without its opening tag
            return opening + content
        reasoning, content = inline
    return f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{content.lstrip(chr(10))}"  # the block's own newlines, once


def opened_turn(
    render: Callable[[str], str], prompt: str, content: str, reasoning: str, eot: str, tail: str, spaces: str = ""
) -> str:
    """T, the trained text after `prompt` (ending with `eot`); see the module docstring.
    `render(c)` renders the history through this turn with content c; `spaces`: what the
    template writes between the content and `eot` (Nemotron's "\n")."""
    end = spaces + eot + tail
    probe = render(SENTINEL)
    i = probe.find(SENTINEL)
    if i < 0 or probe[i + len(SENTINEL) :] != end:
        raise ValueError(f"the template does not render an assistant turn as header + content + {spaces + eot!r}")
    prefix = probe[:i]
    if prompt == prefix and (inside := trailing_opening(prompt)):
        return _inside_header(render, prefix, inside, content, reasoning, end) + spaces + eot
    if prompt == prefix and (reasoning or leading_block(content)):
        raise ValueError(
            f"the generation prompt (ends {prompt[-30:]!r}) already closes the thinking block "
            "(e.g. Qwen3 with enable_thinking=false), but the turn has reasoning, which the template "
            'renders before that point. Fix: set reasoning = "drop", or enable thinking'
        )
    closed = _after_closing_header(render, prefix, prompt, content, reasoning, end)
    if closed is not None:
        return closed + spaces + eot
    if not prompt.startswith(prefix) or len(prompt) == len(prefix):
        n = next((k for k, (x, y) in enumerate(zip(prompt, prefix)) if x != y), min(len(prompt), len(prefix)))
        raise ValueError(
            f"the generation prompt is neither a prefix of the turn's render nor the turn's header "
            f"followed by an opening: after {prompt[max(0, n - 30) : n]!r} the prompt has "
            f"{prompt[n : n + 30]!r} where the turn's render has {prefix[n : n + 30]!r}"
        )
    opening = prompt[len(prefix) :]
    if OPEN not in opening:
        raise ValueError(
            f"the generation prompt ends with {opening!r} after the turn's header, which no render of a "
            f"finished turn shows and which is not a {OPEN!r} block: nothing proves what the student writes "
            "after it"
        )
    c = _opened_content(opening, content, reasoning)
    full = render(c)
    cut = c.rfind(CLOSE)
    after = c[cut + len(CLOSE) :] if cut >= 0 else None
    # the answer after our closing tag, its leading whitespace stripped or not (Nemotron Super v1.5 strips it)
    dropped = after is not None and full in (prefix + after + end, prefix + after.lstrip() + end)
    if full != prefix + c + end and not dropped:
        raise ValueError(
            f"the template renders the complete turn (opening {opening!r}, reasoning, {CLOSE!r}, "
            "answer) neither verbatim nor with the reasoning dropped at its closing tag"
        )
    return c[len(opening) :] + spaces + eot


def _after_closing_header(
    render: Callable[[str], str], prefix: str, prompt: str, content: str, reasoning: str, end: str
) -> str | None:
    """The fifth shape (module docstring): a history turn rendered as header + CLOSE + answer, the
    generation prompt header + an opening. The trained text, or None where the renders are not that shape."""
    j = prefix.rfind(CLOSE)
    head, closing = prefix[:j], prefix[j:]
    if j < 0 or closing.strip() != CLOSE or not prompt.startswith(head) or prompt.startswith(prefix):
        return None
    opening = prompt[len(head) :]
    if not trailing_opening(opening) or opening.strip() != OPEN:
        return None
    inline = split_thinking(content)  # the teacher's block, whole or without its opening tag ("R</think>A")
    if inline is not None:
        reasoning, content = inline
    c = opening + reasoning + closing + content  # the template's closing text, with the reasoning before it
    if render(c) != head + closing + content + end:
        raise ValueError(
            f"the generation prompt opens a thinking block ({opening!r}) where a finished turn renders "
            f"{closing!r} before its content, and the template does not render the complete turn (opening, "
            f"reasoning, {closing!r}, answer) with the reasoning dropped at that closing tag"
        )
    return c[len(opening) :]


def _opened_content(opening: str, content: str, reasoning: str) -> str:
    """complete_content, checked to start with the `opening` the generation prompt ends with."""
    c = complete_content(opening, content, reasoning)
    if not c.startswith(opening):
        raise ValueError(
            f"the generation prompt opens the turn with {opening!r}, which the turn "
            f"(starts {c[:30]!r}) does not start with"
        )
    return c


def trailing_opening(prompt: str) -> str:
    """The thinking block a generation prompt ends with, opened and not closed ("<think>\\n"), or ""."""
    i = prompt.rfind(OPEN)
    return prompt[i:] if i >= 0 and not prompt[i + len(OPEN) :].strip() else ""


def inside_opened_block(full: str, start: int, stop: int) -> bool:
    """Whether the turn render full[start:stop] follows a prompt (full[:start]) that ends with an opened
    thinking block and either never closes it or opens another: the second shape above."""
    if not trailing_opening(full[max(0, start - 64) : start]):
        return False
    return full.find(CLOSE, start, stop) < 0 or full[start:stop].lstrip().startswith(OPEN)


def _inside_header(
    render: Callable[[str], str], prefix: str, opening: str, content: str, reasoning: str, end: str
) -> str:
    """The turn content after a header that itself ends with the opening (Nemotron Nano 2 renders the
    last assistant turn as header + "<think>\\n" + content, the generation prompt being that header):
    the complete content C without its opening, proven verbatim by the render. Where C's rest starts
    with newlines that the template strips (an empty block: "\\n</think>"), without them."""
    rest = _opened_content(opening, content, reasoning)[len(opening) :]
    for body in dict.fromkeys((rest, rest.lstrip("\n"))):
        if render(body) == prefix + body + end:
            return body
    raise ValueError(
        f"the generation prompt ends with the opening {opening!r}, and the template does not render the rest of "
        f"the turn (starts {rest[:30]!r}) verbatim after it"
    )


def split_thinking(content: str) -> tuple[str, str] | None:
    """(reasoning, answer) of a content that begins with the teacher's own thinking block: "<think>"
    (after optional whitespace) up to the first "</think>", or - as a model whose prompt opened the
    block writes it (DeepSeek-R1 served without a reasoning parser) - text up to a "</think>" with no
    "<think>" before it. The newlines around the reasoning and before the answer go, as the
    thinking templates (Qwen3, DeepSeek-R1) strip them. None when the content has no such block."""
    end = content.find(CLOSE)
    if end < 0:
        return None
    head = content[:end].lstrip()
    if head.startswith(OPEN):
        head = head[len(OPEN) :]
    elif OPEN in head:
        return None
    return head.strip("\n"), content[end + len(CLOSE) :].lstrip("\n")


def leading_block(content: str) -> tuple[str, str] | None:
    """`split_thinking` of a content that starts (after optional whitespace) with the "<think>" tag and
    closes the block: the teacher's own block written whole; None otherwise."""
    return tagged_block(content, THINK_TAGS)


def tagged_block(content: str, tags: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """(reasoning, answer) of a content that starts (after optional whitespace) with one of `tags`' opening
    tag ("<think>", or another syntax's: "[THINK]", "<|channel>thought") and closes it later; the newlines
    around the reasoning and before the answer go, as in `split_thinking`. None otherwise."""
    head = content.lstrip()
    for opening, closing in tags:
        end = head.find(closing, len(opening)) if head.startswith(opening) else -1
        if end >= 0:
            return head[len(opening) : end].strip("\n"), head[end + len(closing) :].lstrip("\n")
    return None


def other_block_tags(form: str | None) -> tuple[tuple[str, str], ...]:
    """The (opening, closing) tags of `form` (a thinking syntax, "{reasoning}" between its tags) where they are
    not <think> tags: the teacher's own block inside content may be written in them too."""
    return tuple(t for t in block_tags(form) if t != (OPEN, CLOSE))


def take_thinking(reasoning: str, content: str, take: bool, tags: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
    """(reasoning, content) of an assistant message, tidied: a reasoning field wrapped in its own
    "<think>...</think>" is unwrapped; a thinking block inside content (`split_thinking`) leaves the
    content when `take` (its text becomes the reasoning if the field is empty) or when it repeats
    the reasoning field (servers that send both); a block in `tags` (the student's own syntax:
    `tagged_block`) likewise. Where there is reasoning, the newlines around it
    and at the head of the content go: they are the thinking block's own ("R\n</think>\n\nA" comes
    back from vLLM's and SGLang's reasoning parsers as reasoning "R\n" and content "\n\nA"), which
    every layout writes itself (the templates, think_tags, the opened prompt's turn)."""
    bare = reasoning.strip()
    if bare.startswith(OPEN) and bare.endswith(CLOSE):
        reasoning = bare[len(OPEN) : -len(CLOSE)]
    inline = split_thinking(content)
    if inline is None and tags:
        inline = tagged_block(content, tags)
    if inline is not None and (take or (reasoning and inline[0].strip() == reasoning.strip())):
        reasoning, content = reasoning or inline[0], inline[1]
    reasoning = reasoning.strip("\n")
    return reasoning, content.lstrip("\n") if reasoning else content


def probe_places_reasoning(render: Callable[[list[dict]], str]) -> bool:
    """Whether the template renders an assistant turn's reasoning_content (Qwen3, gpt-oss do; Qwen2.5,
    SmolLM3, DeepSeek-R1-Distill do not): a probe turn with a sentinel as its reasoning, rendered."""
    turn = {"role": "assistant", "content": "Hello", "reasoning_content": SENTINEL, "thinking": SENTINEL}
    try:
        return SENTINEL in render([{"role": "user", "content": "Hi"}, turn])
    except Exception:  # noqa: BLE001 - a template that raises here places nothing we could use
        return False


def probe_thinking_part_form(render: Callable[[list[dict]], str]) -> str | None:
    """The text a template writes for a thinking content part, as a reasoning_form, or None. Mistral's
    templates (Magistral, Ministral 3) read no reasoning field: an assistant turn's content is a list where
    `{"type": "thinking", "thinking": R}` renders "[THINK]R[/THINK]" before the text part's text. Proven by
    renders, never by searching: the turn with the text part alone (an answer sentinel) must render as with
    that text as string content (the template reads parts as text: one that dumps the list as JSON does not),
    and with a thinking part (a reasoning sentinel) before it as that render with one text inserted right
    before the answer, holding the reasoning sentinel once, after the text that opens the block. The part
    carries a signature (as Anthropic's do), which a syntax ignores and a template that dumps unknown parts
    as JSON (LFM2.5) writes: then no form."""
    answer, signature = (SENTINEL[:-1] + x + SENTINEL[-1] for x in ("answer", "signature"))
    turn = lambda content: [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]  # noqa: E731
    try:
        plain = render(turn([{"type": "text", "text": answer}]))
        if plain != render(turn(answer)):
            return None
        thinking = {"type": "thinking", "thinking": SENTINEL, "signature": signature}
        both = render(turn([thinking, {"type": "text", "text": answer}]))
    except Exception:  # noqa: BLE001 - a template that raises here renders no thinking part we could use
        return None
    i, j = plain.find(answer), both.find(answer)
    if i < 0 or j < i or plain.count(answer) != 1 or both.count(answer) != 1:
        return None
    inserted = both[i:j]
    if both[:i] != plain[:i] or both[j:] != plain[i:] or inserted.count(SENTINEL) != 1 or signature in both:
        return None
    form = inserted.replace(SENTINEL, "{reasoning}")
    return None if form.startswith("{reasoning}") else form


def empty_block_form(lead: str) -> str | None:
    """The reasoning_form of a template that writes its own empty <think> block before an assistant turn's content
    (`lead`, the text before it: Kimi-K2-Thinking's "<think></think>"): that block holding the reasoning, in the
    middle of the whitespace inside it ("<think>\n\n</think>": "<think>\n{reasoning}\n</think>"); else None."""
    found = leading_empty_block(lead, THINK_TAGS)
    if found is None or found[0] != lead:
        return None
    inner = lead[len(OPEN) : lead.find(CLOSE, len(OPEN))]
    half = len(inner) // 2
    return OPEN + inner[:half] + "{reasoning}" + lead[len(OPEN) + half :] if inner[:half] == inner[half:] else None


def open_block(content: str) -> bool:
    """Whether the content is a thinking block the teacher never closed: "<think>" (after optional
    whitespace) and no "</think>" - an answer cut off while reasoning, from a server without a parser."""
    return content.lstrip().startswith(OPEN) and CLOSE not in content


def without_thinking_tags(content: str) -> str:
    """Content less the tags of a leading thinking block ("<think>" at the start, after optional
    whitespace, and the first "</think>"), for the special-token check: those tags are where a
    reasoning student emits them (as special tokens, in tokenizers that have them), not forged structure."""
    if CLOSE not in content:
        return content
    head, tail = content.split(CLOSE, 1)
    return (head.lstrip()[len(OPEN) :] if head.lstrip().startswith(OPEN) else head) + tail


def block_tags(form: str | None) -> tuple[tuple[str, str], ...]:
    """The (opening, closing) tags of a thinking block, whitespace stripped: `<think>` tags, and those of
    `form` (reasoning_form, "{reasoning}" between its tags) where it has others."""
    tags = {(OPEN, CLOSE)}
    if form and "{reasoning}" in form:
        head, _, rest = form.partition("{reasoning}")
        if head.strip() and rest.strip():
            tags.add((head.strip(), rest.strip()))
    return tuple(sorted(tags))


def ends_with_empty_block(prompt: str, tags: tuple[str, str]) -> bool:
    """Whether `prompt` ends with an empty thinking block, opened and closed, then only whitespace: a
    generation prompt with thinking off (SmolLM3's /no_think, EXAONE 4.0's default, Qwen3's
    enable_thinking=false: "<think>\\n\\n</think>\\n\\n")."""
    opening, closing = tags
    p = prompt.rstrip()
    return p.endswith(closing) and p[: len(p) - len(closing)].rstrip().endswith(opening)


def leading_empty_block(text: str, tags: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The mirror of `ends_with_empty_block`: the empty thinking block `text` starts with, in one of `tags`, with
    the whitespace after it ("<think></think>", "<think>\\n\\n</think>\\n\\n"), and its opening tag; or None."""
    for opening, closing in tags:
        j = text.find(closing, len(opening)) if text.startswith(opening) else -1
        if j >= 0 and not text[len(opening) : j].strip():
            return text[: len(text) - len(text[j + len(closing) :].lstrip())], opening
    return None
