"""orchestrator/template.py: which templates are provably append-only, and that every
prefix derived from one marked render equals rendering that prefix (and that
reconstruction gives the same samples either way)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from support.reconstruct_helpers import TEMPLATES, recon, tokenizer_with
from test_reconstruct_props import SETTINGS, conversations

from orchestrator.template import END, START, ChatTemplate

CHATML = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEN = "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"

# Append-only in the proven sense: what each message renders depends on it and earlier
# messages only; text after the loop on add_generation_prompt and constants only.
APPEND_ONLY = {
    "chatml": CHATML,
    "look-back state": (
        "{%- set ns = namespace(n=0) %}{%- for m in messages %}{%- set ns.n = ns.n + 1 %}"
        "{{- ns.n ~ m.role ~ (loop.previtem.role if loop.previtem else '-') ~ m.content }}"
        "{%- endfor %}" + GEN
    ),
    "inner loop.last": (
        "{%- for m in messages %}{{- m.content }}{%- for t in m.tags or [] %}{{ t }}"
        "{%- if not loop.last %},{% endif %}{%- endfor %}{%- endfor %}" + GEN
    ),
    "system default via messages[0]": (
        "{%- for m in messages %}{%- if loop.first and messages[0].role != 'system' %}"
        "SYS|{%- endif %}{{- m.role + ':' + m.content + ';' }}{%- endfor %}" + GEN
    ),
    "generation markers": (
        "{%- for m in messages %}{%- if m.role == 'assistant' %}A:{% generation %}"
        "{{- m.content }};{% endgeneration %}{%- else %}{{- m.role + ':' + m.content + ';' }}"
        "{%- endif %}{%- endfor %}" + GEN
    ),
    # A system message folded into the first user turn: the loop runs over messages[1:].
    "alias of messages[1:]": (
        "{%- if messages[0].role == 'system' %}{%- set sys = messages[0].content %}"
        "{%- set turns = messages[1:] %}{%- else %}{%- set sys = '' %}"
        "{%- set turns = messages %}{%- endif %}{%- for m in turns %}"
        "{{- m.role + ':' + (sys + '|' if loop.first and sys else '') + m.content + ';' }}"
        "{%- endfor %}" + GEN
    ),
    "continue": (
        "{%- for m in messages %}{%- if m.role == 'system' %}{% continue %}{% endif %}"
        "{{- m.role + ':' + m.content + ';' }}{%- endfor %}" + GEN
    ),
}

NOT_APPEND_ONLY = {
    "loop.last": ("{%- for m in messages %}{{ m.content }}{% if loop.last %}END{% endif %}{%- endfor %}", "loop.last"),
    "loop.length": ("{%- for m in messages %}{{ loop.length }}{%- endfor %}", "loop.length"),
    "loop as a value": ("{%- for m in messages %}{{ loop['last'] }}{%- endfor %}", "`loop` as a value"),
    "length": ("{%- for m in messages %}{{ messages|length }}{%- endfor %}", "other than as the loop's items"),
    "last message": ("{%- for m in messages %}{{ m.content }}{%- endfor %}{{ messages[-1].role }}", "other than"),
    "look-ahead": ("{%- for m in messages %}{{ messages[loop.index0 + 1].role }}{%- endfor %}", "other than"),
    "reassigned": (
        "{%- set messages = messages[1:] %}{%- for m in messages %}{{ m.content }}{%- endfor %}",
        "assigns to messages",
    ),
    "alias read elsewhere": (
        "{%- set ms = messages[1:] %}{%- for m in ms %}{{ m.content }}{%- endfor %}{{ ms|length }}",
        "other than as the loop's items",
    ),
    "alias[0]": (
        "{%- set ms = messages[1:] %}{%- if ms[0] %}X{% endif %}{%- for m in ms %}{{ m.content }}{%- endfor %}",
        "other than as the loop's items",
    ),
    "loop else": (
        "{%- set ms = messages[1:] %}{%- for m in ms %}{{ m.content }}{% else %}none{%- endfor %}",
        "else branch",
    ),
    "alias set after the loop": (
        "{%- for m in ms %}{{ m.content }}{%- endfor %}{%- set ms = messages %}",
        "elsewhere than before the loop",
    ),
    "alias of a look-ahead slice": (
        "{%- set ms = messages[:-1] %}{%- for m in ms %}{{ m.content }}{%- endfor %}",
        "exactly one",
    ),
    "two loops": (
        "{%- for m in messages %}{{ m.role }}{%- endfor %}{%- for m in messages %}{{ m.content }}{%- endfor %}",
        "exactly one",
    ),
    "nested loop": ("{%- if true %}{%- for m in messages %}{{ m.content }}{%- endfor %}{%- endif %}", "nested"),
    "break": (
        "{%- for m in messages %}{%- if m.role == 'tool' %}{% break %}{% endif %}{{ m.content }}{%- endfor %}",
        "break",
    ),
    "filtered loop": ("{%- for m in messages if m.role != 'system' %}{{ m.content }}{%- endfor %}", "filtered"),
    "gen prompt in loop": (
        "{%- for m in messages %}{{ m.content }}{% if add_generation_prompt %}!{% endif %}{%- endfor %}",
        "add_generation_prompt",
    ),
    "gen prompt before loop": (
        "{%- if add_generation_prompt %}G{% endif %}{%- for m in messages %}{{ m.content }}{%- endfor %}",
        "add_generation_prompt",
    ),
    "namespace after loop": (
        "{%- set ns = namespace(r='') %}{%- for m in messages %}{%- set ns.r = m.role %}"
        "{{ m.content }}{%- endfor %}{%- if add_generation_prompt and ns.r == 'user' %}G{% endif %}",
        "namespace 'ns'",
    ),
    "macro after loop": (
        "{%- macro g() %}G{% endmacro %}{%- for m in messages %}{{ m.content }}{%- endfor %}{{ g() }}",
        "macro 'g'",
    ),
    "loop in a macro": (
        "{%- macro r(m) %}{{ loop.index }}{% endmacro %}{%- for m in messages %}{{ r(m) }}{%- endfor %}",
        "outside a for loop",
    ),
}


def _file(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def test_project_and_real_templates_verdicts():
    assert ChatTemplate(tokenizer_with(None).chat_template).append_only  # SmolLM2's own
    assert ChatTemplate(_file("chatml_generation")).append_only
    assert ChatTemplate(_file("llama3_headers")).append_only
    assert ChatTemplate(_file("chatml_system_folded")).append_only  # loops over an alias of messages[1:]
    # Look-ahead for consecutive tool messages; a pre-pass over all messages (Qwen3-like).
    assert not ChatTemplate(_file("chatml_tools")).append_only
    qwen3_like = ChatTemplate(_file("reasoning_rewrite"))
    assert not qwen3_like.append_only and "exactly one" in qwen3_like.why_not_append_only


@pytest.mark.parametrize("name", sorted(NOT_APPEND_ONLY))
def test_not_append_only(name):
    source, why = NOT_APPEND_ONLY[name]
    t = ChatTemplate(source)
    assert not t.append_only and why in t.why_not_append_only
    assert t.render_parts([{"role": "user", "content": "x"}], None, False) is None


def _random_conversation(rng: random.Random) -> list[dict]:
    msgs = [{"role": "system", "content": "be brief"}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 6)):
        msgs.append({"role": "user", "content": rng.choice(["hi", " two words", "\nx", ""]), "tags": ["a", "b"]})
        msgs.append({"role": "assistant", "content": rng.choice(["ok", " sure.", "a\nb", "  "])})
    return msgs


def _check_prefixes(t: ChatTemplate, msgs: list[dict], **kw) -> None:
    """Every prefix derived from the marked renders equals rendering that prefix."""
    for g in (False, True):
        before, bodies, after = t.render_parts(msgs, None, g, **kw)
        assert before + "".join(bodies) + after == t.render(msgs, None, g, **kw)
        assert len(bodies) == len(msgs)
        for j in range(1, len(msgs) + 1):
            _, _, after_j = t.render_parts(msgs[:j], None, g, **kw)
            assert after_j == after  # the text after the loop does not depend on the messages
            assert before + "".join(bodies[:j]) + after == t.render(msgs[:j], None, g, **kw)


@pytest.mark.parametrize("name", sorted(APPEND_ONLY))
def test_append_only_prefixes_equal_direct_renders(name):
    t = ChatTemplate(APPEND_ONLY[name])
    assert t.append_only, t.why_not_append_only
    rng = random.Random(name)
    for _ in range(20):
        _check_prefixes(t, _random_conversation(rng))


def test_renders_equal_transformers_including_generation_markers():
    from transformers.utils.chat_template_utils import render_jinja_template

    rng = random.Random(0)
    for source in [
        *APPEND_ONLY.values(),
        *(_file(n) for n in ("chatml_generation", "chatml_tools", "llama3_headers", "chatml_system_folded")),
    ]:
        t = ChatTemplate(source)
        for _ in range(10):
            msgs = _random_conversation(rng)
            for g in (False, True):
                ref = render_jinja_template(
                    conversations=[msgs], chat_template=source, add_generation_prompt=g, bos_token="<s>"
                )[0][0]
                assert t.render(msgs, None, g, bos_token="<s>") == ref


def test_sandbox_still_applies():
    from jinja2.exceptions import SecurityError

    t = ChatTemplate("{%- for m in messages %}{{ m.content.__class__.__subclasses__() }}{%- endfor %}" + GEN)
    assert t.append_only
    with pytest.raises(SecurityError):
        t.render_parts([{"role": "user", "content": "x"}], None, False)


def test_marker_text_in_content_is_refused_not_misread():
    for source in (CHATML, APPEND_ONLY["alias of messages[1:]"]):
        t = ChatTemplate(source)
        for mark in (START, END):
            msgs = [{"role": "user", "content": "a" + mark}, {"role": "assistant", "content": "b"}]
            assert t.render_parts(msgs, None, False) is None
        # With a skipped system message, one marker in the content would balance the count.
        msgs = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a" + START},
            {"role": "assistant", "content": "b"},
        ]
        assert t.render_parts(msgs, None, False) is None


_REUSED: dict = {}  # one derived-prefix Reconstructor per template across examples (learnt after(True))


@SETTINGS
@given(msgs=conversations(max_turns=4))
def test_reconstruction_same_with_and_without_derived_prefixes(msgs):
    for template in (None, "llama3_headers", "chatml_generation", "chatml_system_folded"):
        fast, slow = recon(template), recon(template)
        slow.chat_template.append_only = False
        assert fast.chat_template.append_only
        reused = _REUSED.setdefault(template, recon(template))
        expected = slow.build(msgs, sample_id="x")
        assert fast.build(msgs, sample_id="x") == expected == reused.build(msgs, sample_id="x")
        assert fast.stats["prefix_renders_derived"] == 1 and "prefix_renders_derived" not in slow.stats
        assert "prefix_cross_check_failed" not in reused.stats


def test_renders_per_conversation_do_not_grow_with_its_length():
    # SmolLM2's template: after the loop only add_generation_prompt is read, so the generation
    # prompt is learnt from the first conversation (2 renders) and then re-checked every
    # CROSS_CHECK_EVERY conversations; the others take one render, whatever their length.
    r = recon(None)
    assert r.chat_template.after_is_constant
    renders = []
    for i in range(2 * r.CROSS_CHECK_EVERY + 1):
        turns = 1 + i % 16
        msgs = []
        for k in range(turns):
            msgs += [{"role": "user", "content": f"q{i}.{k}"}, {"role": "assistant", "content": f"a{k}"}]
        before = r.stats["renders"]
        samples, rejections = r.build(msgs, sample_id=str(i))
        assert rejections == [] and samples[0].meta["turns"] == turns
        renders.append(r.stats["renders"] - before)
    checks = [i for i, n in enumerate(renders) if n == 2]
    assert checks == [0, r.CROSS_CHECK_EVERY, 2 * r.CROSS_CHECK_EVERY] and set(renders) == {1, 2}
    # Without a constant generation prompt: two renders per conversation.
    r2 = recon(None)
    r2.chat_template.after_is_constant = False
    before = r2.stats["renders"]
    r2.build(msgs, sample_id="x")
    assert r2.stats["renders"] - before == 2


@pytest.mark.parametrize(
    "source, constant",
    [
        (CHATML, True),
        (
            "{%- for m in messages %}{{ m.content }}{%- endfor %}{%- if add_generation_prompt %}{{ bos_token }}A{% endif %}",
            True,
        ),
        (
            "{%- for m in messages %}{{ m.content }}{%- endfor %}{%- if add_generation_prompt and tools %}T{% endif %}",
            False,
        ),
        ("{%- set x = messages[0].role %}{%- for m in messages %}{{ m.content }}{%- endfor %}{{ x }}", False),
        ("{%- for m in messages %}{{ m.content }}{%- endfor %}{{ strftime_now('%Y') }}", False),
    ],
)
def test_after_is_constant_verdicts(source, constant):
    t = ChatTemplate(source)
    assert t.append_only and t.after_is_constant is constant


def test_failed_cross_check_turns_derivation_off(capsys):
    # Simulate a wrong proof: a learnt generation prompt that the real render contradicts.
    r = recon(None)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    r.build(msgs, sample_id="0")
    r._after_prompt = "<|im_start|>assistant\nWRONG"
    r.stats["prefix_renders_derived"] = r.CROSS_CHECK_EVERY  # the next conversation is a check
    samples, rejections = r.build(msgs, sample_id="1")
    slow = recon(None)
    slow.chat_template.append_only = False
    assert (samples, rejections) == slow.build(msgs, sample_id="1")  # rebuilt per prefix, correct
    assert r.stats["prefix_cross_check_failed"] == 1 and not r._derive_prefixes
    assert "please report" in capsys.readouterr().err


def test_marker_text_in_content_falls_back_to_rendering_each_prefix():
    r = recon(None, special_tokens_in_content="allow")
    msgs = [
        {"role": "user", "content": "q" + START},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "b"},
    ]
    samples, rejections = r.build(msgs, sample_id="m")
    assert len(samples) == 1 and rejections == []
    assert r.stats["prefix_renders_not_derived"] == 1 and "prefix_renders_derived" not in r.stats
    slow = recon(None, special_tokens_in_content="allow")
    slow.chat_template.append_only = False
    assert slow.build(msgs, sample_id="m") == (samples, rejections)


def test_a_failing_tree_rewrite_never_blocks_rendering(monkeypatch):
    import orchestrator.template as T

    def boom(tree):
        raise RuntimeError("unexpected node")

    monkeypatch.setattr(T, "_with_markers", boom)
    monkeypatch.setattr(T, "_without_generation_calls", boom)
    t = ChatTemplate(CHATML)
    assert not t.append_only and "could not be built" in t.why_not_append_only
    msgs = [{"role": "user", "content": "x"}]
    assert t.render(msgs, None, True) == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    assert t.render_parts(msgs, None, True) is None
