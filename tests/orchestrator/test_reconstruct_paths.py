"""Every shortcut reconstruction takes gives what rendering every prefix gives.

For each chat template under tests/templates/ (real templates of student families, with the
family's real tokenizer or its stand-in: tests/support/family_standins.py), random
conversations - tool calls and results, reasoning, system prompts, whitespace, text a
template or tokenizer treats specially, answers cut off - are reconstructed three ways:

- `build_many` with every proof on (append-only templates, watched renders, statements that
  read `loop.last` only to choose text, shared prompt prefixes, joined tokenizer inputs);
- `build_many` of a reconstructor that renders every prefix (neither proof);
- `build`, one conversation at a time.

The samples (ids and masks) and the rejection reasons must be identical, under each of
three policy sets (the defaults, and the switches a user turns on for templates that cannot
express a conversation as given). Whether the per-prefix samples are right is what the
families' golden tests and the invariant tests check (test_reconstruct_families*.py,
test_reconstruct_props.py); this test holds the shortcuts to them. The second test holds
the per-prefix path to the templates' own renders on every byte-level family, for the
conversations that become one sample.

RECONSTRUCT_EXAMPLES=500 for a longer hunt (default 12 per template and policy).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.core.conversation import Conversation

TEMPLATES = Path(__file__).parent.parent / "templates"
SETTINGS = settings(
    max_examples=int(os.environ.get("RECONSTRUCT_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: template -> real tokenizer (tests/support/tokenizer_builds.py) for templates whose family's
#: tokenizer a package ships; family_standins.py has stand-ins for others; SmolLM2's for the rest
REAL = {
    "llama3_1": "llama3",
    "llama3_2": "llama3",
    "llama3_headers": "llama3",
    "nemotron_super_v1_5": "llama3",
    "qwen2_5": "qwen",
    "qwen3": "qwen",
    "qwen3_coder": "qwen",
    "qwen3_5": "qwen",  # Qwen3.5's own, larger vocabulary is not shipped by a package: Qwen3's in its place
    "deepseek_v3": "deepseek",
    "deepseek_v3_1": "deepseek",
    "deepseek_r1_distill": "deepseek",
    "mistral_v0_1": "mistral_sp",
    "llama2_chat": "mistral_sp",
    "zephyr": "mistral_sp",  # TinyLlama-1.1B-Chat: Llama 2's SentencePiece tokenizer
    "mistral_nemo": "nemo",
    "mistral_v3": "mistral_v3",
}
NAMES = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))

POLICIES = {
    "defaults": {},
    "lenient": {
        "reasoning": "think_tags",
        "content_whitespace": "strip",
        "system_prompt": "merge_into_first_user",
        "truncated": "keep",
        "special_tokens_in_content": "allow",
        "text_with_tool_calls": "drop",
    },
    "strict": {"reasoning": "drop", "on_history_rewrite": "reject", "overlong": "truncate", "max_seq_len": 256},
    # calls written as text (refused, and checked so, for the templates that render calls themselves)
    "calls_as_text": {"tool_calls_as_text": "<tool_call>\n{call}\n</tool_call>", "special_tokens_in_content": "allow"},
}

PLAIN = [
    "a",
    "b c",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "x.",
    "é",
    "東京",
    "😀",
    "{",
    "}",
    '"',
    "\\",
    "\r\n",
    "{{",
    "%}",
    "A1",
    "-",
]
SPECIAL = ["<think>", "</think>", "[INST]", "<|im_end|>", "<|eot_id|>", "</s>", "<s>", "<|end|>", "<end_of_turn>"]
_plain = st.lists(st.sampled_from(PLAIN), max_size=6).map("".join)
text = st.one_of(_plain, _plain, _plain, st.lists(st.sampled_from(PLAIN + SPECIAL), max_size=4).map("".join))
answer = st.builds(lambda a, b, c: a + b + c, text, st.sampled_from(["a", "b c", "x.", "東京", "A1"]), text)
# with properties: Seed-OSS's template raises on a tool without them
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "f",
            "description": "d",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


@st.composite
def tool_turn(draw) -> list[dict]:
    first = draw(st.sampled_from(["abcdefghi", "call_1", "c1", None]))  # None: data without call ids
    # one call, or two (of one function: a template that renders only the first is refused)
    ids = [first, first[:-1] + "x" if first else None][: draw(st.integers(1, 2))]
    calls, results = [], []
    for cid in ids:
        args = draw(st.sampled_from(['{"a": 1}', "{}", '{"q": "x y"}']))
        call = {"id": cid, "type": "function", "function": {"name": "f", "arguments": args}}
        calls.append(call if cid else {k: v for k, v in call.items() if k != "id"})
        results.append({"role": "tool", "content": draw(text)} | ({"tool_call_id": cid} if cid else {}))
    turn = {"role": "assistant", "content": draw(st.sampled_from([None, "", "ok"])), "tool_calls": calls}
    if draw(st.booleans()):
        turn["reasoning_content"] = draw(text)
    return [turn] + results * draw(st.integers(1, 2))


@st.composite
def conversation(draw, sid: str) -> Conversation:
    msgs = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        msgs.append({"role": "user", "content": draw(text)})
        if draw(st.integers(0, 3)) == 0:
            msgs += draw(tool_turn())
        turn = {"role": "assistant", "content": draw(answer)}
        if draw(st.integers(0, 2)) == 0:
            turn["reasoning_content"] = draw(text)
        msgs.append(turn)
    return Conversation(
        msgs,
        tools=TOOLS if draw(st.booleans()) else None,
        sample_id=sid,
        finish_reason=draw(st.sampled_from(["stop", "stop", "length"])),
    )


@st.composite
def simple(draw) -> Conversation:
    """One to three plain turns (words, no outer whitespace) with the tools: what every template
    expresses, so that each run has samples to compare."""
    words = st.lists(st.sampled_from(["a", "b", "x.", "東京", "A1", "42"]), min_size=1, max_size=4).map(" ".join)
    msgs = []
    for _ in range(draw(st.integers(1, 3))):
        msgs += [{"role": "user", "content": draw(words)}, {"role": "assistant", "content": draw(words)}]
    return Conversation(msgs, tools=TOOLS, sample_id="plain")


conversations = st.integers(0, 3).flatmap(
    lambda n: st.tuples(simple(), *[conversation(str(i)) for i in range(n)]).map(lambda t: t[1:] + t[:1])
)


@lru_cache(maxsize=None)  # one per template for the three policies (reconstruction never changes it)
def tokenizer(name: str):
    from support import family_standins, tokenizer_builds
    from support.reconstruct_helpers import tokenizer_with

    if name in family_standins.STANDINS:
        return family_standins.standin_or_skip(name)
    if name in REAL:
        return tokenizer_builds.load_or_skip(REAL[name], name)
    return tokenizer_with(name)


def base(name: str) -> str:
    """The tokenizer a template is tested with: REAL's, the stand-in's base, else SmolLM2's."""
    from support.family_standins import STANDINS

    return REAL.get(name) or (STANDINS[name][0] if name in STANDINS else "smollm2")


def outcome(results) -> list:
    return [
        (
            [(s.sample_id, s.prompt_ids, s.completion_ids, s.completion_mask, s.meta) for s in samples],
            [(r.item_id, r.reason) for r in rejections],
        )
        for samples, rejections in results
    ]


#: policies for one template: its thinking mode, reasoning in the student's own syntax
TEMPLATE_POLICIES = {
    ("gemma4", "thinking_form"): {
        "reasoning": "think_tags",
        "reasoning_form": "<|channel>thought\n{reasoning}<channel|>",
        "chat_template_kwargs": {"enable_thinking": True},
        "content_whitespace": "strip",
    },
    # reasoning on: the generation prompt opens "<think>", which the template closes only for a turn with
    # reasoning (a turn without: its render with an empty reasoning field, thinking_blocks.py)
    ("gigachat3_5", "reasoning_on"): {"chat_template_kwargs": {"reasoning": True}},
    ("gigachat3_5", "reasoning_on_drop"): {"chat_template_kwargs": {"reasoning": True}, "reasoning": "drop"},
    # thinking on: the generation prompt opens "<think>", a finished turn renders "</think>" + answer (the fifth
    # shape, open_reasoning.py); calls after the prompt too (thinking_blocks.py)
    ("deepseek_v3_1", "thinking"): {"chat_template_kwargs": {"thinking": True}},
    ("deepseek_v3_1", "thinking_drop"): {"chat_template_kwargs": {"thinking": True}, "reasoning": "drop"},
}
CASES = [(name, policy) for name in NAMES for policy in sorted(POLICIES)] + sorted(TEMPLATE_POLICIES)


@pytest.mark.parametrize("name,policy", CASES)
def test_shortcuts_give_what_rendering_every_prefix_gives(name, policy):
    from distill.core.config import Reconstruction
    from orchestrator.open_reasoning import THINK_FORM
    from orchestrator.reconstruct import Reconstructor

    tok = tokenizer(name)
    cfg = Reconstruction(**(POLICIES[policy] if policy in POLICIES else TEMPLATE_POLICIES[name, policy]))
    if cfg.reasoning == "think_tags" and cfg.reasoning_form is None and _own_syntax(tok):
        with pytest.raises(ValueError, match="never (in )?<think>"):  # a student with another thinking syntax
            Reconstructor(tok, cfg)
        cfg = cfg.model_copy(update={"reasoning_form": THINK_FORM})  # <think> tags, chosen explicitly
    if cfg.max_seq_len is not None and (head := _tools_preamble(tok)) > cfg.max_seq_len:
        cfg = cfg.model_copy(update={"max_seq_len": head + 64})  # room for simple()'s turns (Apriel 1.5: 352)
    if cfg.tool_calls_as_text and Reconstructor(tok, Reconstruction()).tool_shape.probed:
        with pytest.raises(ValueError, match="renders tool calls itself"):
            Reconstructor(tok, cfg)
        return
    fast, one = Reconstructor(tok, cfg, cfg.max_seq_len), Reconstructor(tok, cfg, cfg.max_seq_len)
    slow = Reconstructor(tok, cfg, cfg.max_seq_len)
    slow.chat_template.append_only = False
    slow.chat_template.tracked = None
    fast.PIPELINE_CHUNK = 2  # several chunks even for a few conversations: the pipeline's helper thread
    seen = {"samples": 0}

    @SETTINGS
    @given(convs=conversations)
    def check(convs):
        got = outcome(fast.build_many(list(convs)))
        assert got == outcome(slow.build_many(list(convs)))
        assert got == outcome([one.build(**c.build_args()) for c in convs])
        seen["samples"] += sum(len(s) for s, _ in got)

    check()
    assert seen["samples"] > 0  # the conversations drawn are not all rejected
    if cfg.reasoning_form not in (None, THINK_FORM):  # the turns after the block the template drops were drawn
        assert fast.stats["dropped_reasoning_turns"] > 0


def _own_syntax(tok) -> str | None:
    """The student's thinking syntax where it is not <think> tags: from its template's source, else where the
    template renders the reasoning field (gpt-oss, Kimi K3)."""
    from distill.core.config import Reconstruction
    from orchestrator.reconstruct import Reconstructor

    r = Reconstructor(tok, Reconstruction())
    return r.thinking_form or r.placed_syntax


def _tools_preamble(tok) -> int:
    """The tokens of a one-word user message's prompt with the tools: what every conversation of simple() starts
    with. Where it alone is over the strict policy's max_seq_len, every such conversation is overlong and a run
    may draw no sample at all (0 when the template raises)."""
    try:
        text = tok.apply_chat_template(
            [{"role": "user", "content": "a"}], tools=TOOLS, add_generation_prompt=True, tokenize=False
        )
    except Exception:  # noqa: BLE001 - a template that needs more: no preamble known
        return 0
    return len(tok.encode(text, add_special_tokens=False))


#: byte-level tokenizers (decoding gives the text back exactly), whose trained turns are the render's
#: (DeepSeek-R1-Distill and Nemotron Nano 2 train the turn after their generation prompt's opened
#: <think>, closing it: their own tests)
OPENED = {"deepseek_r1_distill", "nemotron_nano_2"}
BYTE_LEVEL = [n for n in NAMES if base(n) not in ("mistral_sp", "mistral_v3") and n not in OPENED]


def trained_runs(decode, s) -> list[str]:
    runs, run = [], []
    for i, m in zip([*s.completion_ids, None], [*s.completion_mask, 0]):  # a 0 at the end closes the last run
        if m:
            run.append(i)
        elif run:
            runs.append(decode(run))
            run = []
    return runs


def skipped(r, c: Conversation) -> bool:
    """Conversations this test leaves to the one above: cut off; with reasoning (transformers 5
    gives even an empty one to gpt-oss's template); with null content (transformers 5 drops
    it); with an empty tool-call turn where the template renders calls only for null content
    (reconstruction passes null: orchestrator/tool_args.py); with tool calls for a template that
    insists on 9-character call ids (Mistral Small 3.1's: reconstruction makes them up or shortens
    them, where the reference is given the ids as generated; the family tests check those ids)."""
    return c.finish_reason == "length" or any(
        "reasoning_content" in m
        or m["content"] is None
        or (m.get("tool_calls") and not m["content"] and r.tool_shape.null_content)
        or (m.get("tool_calls") and r.tool_shape.short_ids)
        for m in c.messages
    )


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_one_sample_conversations_are_the_templates_render(name):
    """A conversation reconstructed as one sample: its prompt ids are the template's render of
    the history before the first answer with the generation prompt, tokenised; the text before
    its last trained run is the render before the last answer with the generation prompt, and
    where the whole conversation's render starts with that, the sample's text is the whole
    render (less the text after the final end token); every answer's content (without a
    thinking tag) is inside a trained run."""
    from support.reconstruct_helpers import reference

    from distill.core.config import Reconstruction
    from orchestrator.reconstruct import Reconstructor

    tok = tokenizer(name)
    r = Reconstructor(tok, Reconstruction())
    checked = {"n": 0}
    specials = sorted(tok.all_special_tokens, key=len, reverse=True)

    def decode(ids) -> str:
        return tok.backend_tokenizer.decode(list(ids), skip_special_tokens=False)

    @SETTINGS
    @given(c=st.one_of(conversation("x"), simple()))
    def check(c):
        if skipped(r, c):
            return
        samples, rejections = r.build(**c.build_args())
        if rejections or len(samples) != 1:
            return  # rejections and splits: the test above holds them to the per-prefix path
        s, msgs, shape = samples[0], c.messages, r.tool_shape.arguments_as_string
        answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        assert s.prompt_ids == tok.encode(
            reference(tok, msgs[: answers[0]], c.tools, shape, add_generation_prompt=True), add_special_tokens=False
        )
        ids = s.prompt_ids + s.completion_ids
        last_run = len(s.completion_mask) - s.completion_mask[::-1].index(0) if 0 in s.completion_mask else 0
        last_prompt = reference(tok, msgs[: answers[-1]], c.tools, shape, add_generation_prompt=True)
        assert decode(ids[: len(s.prompt_ids) + last_run]) == last_prompt
        full = reference(tok, msgs, c.tools, shape)
        if r.next_role is not None:  # GLM-4: the turn ends with the next message's role token (next_role.py)
            follow = reference(tok, [*msgs, {"role": "user", "content": "next"}], c.tools, shape)
            token = next(t for t in specials if follow.startswith(t, len(full)))
            full += token
        if full.startswith(last_prompt):
            assert decode(ids) == full[: len(full) - len(r.final_tail)]
        runs = trained_runs(decode, s)
        for k in answers:
            if msgs[k]["content"] and "think>" not in msgs[k]["content"]:
                assert any(msgs[k]["content"] in t for t in runs), (msgs[k]["content"], runs)
        checked["n"] += 1

    check()
    assert checked["n"] > 0
