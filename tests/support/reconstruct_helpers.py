"""Shared helpers for the reconstruction tests (no tests here).

Loads fresh copies of the real SmolLM2 tokenizer with the test templates under
tests/templates/, and splits a sample back into (mask, text) runs by decoding.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from distill.core.config import Reconstruction

TEMPLATES = Path(__file__).parent.parent / "templates"
LLAMA3_SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Two user/assistant exchanges: the smallest conversation with a history turn and a last turn.
# Tests share it read-only (copy it before changing it).
TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Fine"},
    {"role": "assistant", "content": "Good."},
]
# One tool call (f, id c1), its result, and the answer after it. Shared read-only, as TWO_TURNS.
CALL_TURNS = [
    {"role": "user", "content": "Q"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
    },
    {"role": "tool", "content": "1", "tool_call_id": "c1"},
    {"role": "assistant", "content": "Done."},
]


@lru_cache(maxsize=None)
def tokenizer_with(template: str | None):
    """A fresh SmolLM2 tokenizer whose chat template is tests/templates/<template>.jinja.

    None keeps SmolLM2's own template. "llama3_headers" also gets Llama-3's header
    and end-of-turn tokens added as special tokens (and <|begin_of_text|> as BOS).
    """
    from distill.core.student import load_tokenizer, tokenizer_only_dir

    tok = load_tokenizer(tokenizer_only_dir())
    if template is not None:
        tok.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    if template == "llama3_headers":
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": LLAMA3_SPECIALS})
    return tok


def recon(template: str | None = None, max_seq_len: int | None = None, tok=None, **policy):
    from orchestrator.reconstruct import Reconstructor

    return Reconstructor(tok if tok is not None else tokenizer_with(template), Reconstruction(**policy), max_seq_len)


def decode(tok, ids) -> str:
    return tok.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


def runs(tok, sample) -> list[tuple[int | None, str]]:
    """[(None, prompt text), (mask, text), ...]: maximal runs of equal mask, decoded."""
    groups: list[tuple[int, list[int]]] = []
    for i, m in zip(sample.completion_ids, sample.completion_mask):
        if groups and groups[-1][0] == m:
            groups[-1][1].append(i)
        else:
            groups.append((m, [i]))
    return [(None, decode(tok, sample.prompt_ids))] + [(m, decode(tok, ids)) for m, ids in groups]


def trained(tok, sample) -> list[str]:
    """The trained runs of `sample` (mask 1), each decoded."""
    return [text for mask, text in runs(tok, sample)[1:] if mask == 1]


def masked_text(tok, sample) -> str:
    return decode(tok, [i for i, m in zip(sample.completion_ids, sample.completion_mask) if m])


def full_text(tok, sample) -> str:
    return decode(tok, list(sample.prompt_ids) + list(sample.completion_ids))


def render(tok, messages, tools=None, **kw) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, **kw)


def convo(*pairs, system=None) -> list[dict]:
    """Messages: an optional system message, then (user, assistant) pairs."""
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for u, a in pairs:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs


def reference(tok, messages, tools=None, as_string: bool = False, **kw) -> str:
    """The template's own render (transformers), tool-call arguments as the dict it serialises,
    or kept as the JSON string for templates that paste it (`as_string`: orchestrator/tool_args.py)."""
    import json

    def shaped(call):
        args = call["function"]["arguments"]
        keep = as_string or not isinstance(args, str)
        return dict(call, function=dict(call["function"], arguments=args if keep else json.loads(args)))

    msgs = [dict(m, tool_calls=[shaped(c) for c in m["tool_calls"]]) if m.get("tool_calls") else m for m in messages]
    return tok.apply_chat_template(msgs, tools=tools, tokenize=False, **kw)
