"""orchestrator/template_last.py: statements that read `loop.last` only to choose text are
rendered both ways, so watched renders prove the prefixes of templates that write the
generation prompt or a different ending inside the loop (OLMo 2, Granite 3.3). Every
proven prefix must equal its direct render; what a copy reads or raises must leave exactly
the prefixes it affects unproven; a statement that may do more than write text keeps
`loop.last` a look-ahead; reconstruction must give the same samples with fewer renders."""

from __future__ import annotations

import random

import pytest
from support.family_standins import standin
from support.reconstruct_helpers import TEMPLATES, recon
from test_template_tracked import _conversation, _proven_prefixes, _watched

from orchestrator.template import ChatTemplate
from orchestrator.template_last import last_units
from orchestrator.template_prepass import split_loops

HEAD = "{%- for m in messages %}{{ m.role }}:{{ m.content }}"
END = "{%- endfor %}"
# (body statements, whether every prefix is proven): each compared with direct renders
FORMS = {
    "generation prompt at loop.last": ("{% if loop.last and add_generation_prompt %}>{% endif %}", True),
    "ending chosen by not loop.last": ("{% if not loop.last %};{% else %}.{% endif %}", True),
    "conditional expression": ("{{ '|' if not loop.last else '$' }}", True),
    "elif reads loop.last": ("{% if m.role == 'tool' %}T{% elif loop.last %}L{% else %}N{% endif %}", True),
    "nested in a role branch (OLMo)": (
        "{% if m.role == 'assistant' %}{% if not loop.last %}E\n{% else %}E{% endif %}{% endif %}",
        True,
    ),
    "next message read when not last": (
        "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}/{% endif %}",
        True,
    ),
    "inner loop's own loop.last": (
        "{% if loop.last %}{% for t in tools or [] %}{{ t.type }}{% if not loop.last %},{% endif %}"
        "{% endfor %}{% endif %}",
        True,
    ),
    "count read when last": ("{% if loop.last %}{{ messages|length }}{% endif %}", False),
    "next item peeked when not last": ("{% if not loop.last and loop.nextitem.role == 'tool' %}~{% endif %}", False),
    # read by iteration 0 where it is not last: in every render but messages[:1]'s
    "last message read when not last": ("{% if not loop.last %}{{ messages[-1].role }}{% endif %}", (1,)),
}


@pytest.mark.parametrize("name", ["olmo2_tulu", "granite3_3", "qwen2_5", "chatml_tools"])
def test_real_templates_prove_every_prefix(name):
    source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    t = ChatTemplate(source)
    assert t.tracked is not None and t.tracked.watch[3], t.why_not_tracked
    proven, unproven = _proven_prefixes(source, name, 40)  # each equal to its direct render
    assert proven > 500 and unproven == 0


@pytest.mark.parametrize("name", sorted(FORMS))
def test_forms(name):
    body, every = FORMS[name]  # every: whether each prefix is proven, or which ones below the whole
    source = HEAD + body + END + "{% if add_generation_prompt %}G{% endif %}"
    proven, unproven = _proven_prefixes(source, name)
    assert proven > 0 and (unproven == 0) is (every is True)
    msgs = [{"role": "user", "content": str(i)} for i in range(4)]
    parts = _watched(source)[0].render(msgs, None, False)
    want = [every] * 3 if isinstance(every, bool) else [j in every for j in (1, 2, 3)]
    assert [parts.text_for(j, False) is not None for j in range(1, 5)] == want + [True]


def test_the_whole_render_is_the_iterations_and_the_last_one():
    watched = _watched(FORMS["generation prompt at loop.last"][0].join((HEAD, END)))[0]
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    parts = watched.render(msgs, None, True)
    assert parts.head == "user:aassistant:b" and parts.lasts == [("user:a", "user:a>"), ("assistant:b", "assistant:b>")]
    assert [parts.text_for(j, g) for j in (1, 2) for g in (False, True)] == [
        "user:a",
        "user:a>",
        "user:aassistant:b",
        "user:aassistant:b>",
    ]
    assert parts.shared_cut(1) == 0 and parts.shared_cut(2) == len("user:a")


def test_raise_in_a_copy_leaves_that_prefix_to_the_template():
    # OLMo-style guard: a user turn may not end the conversation without the generation prompt
    guard = (
        "{% if loop.last and m.role == 'user' and not add_generation_prompt %}{{ raise_exception('no') }}{% endif %}"
    )
    source = HEAD + guard + END
    msgs = [{"role": r, "content": str(i)} for i, r in enumerate(["user", "assistant"] * 2)]
    parts = _watched(source)[0].render(msgs, None, False)
    assert [parts.text_for(j, g) is not None for j in (1, 2, 3, 4) for g in (False, True)] == [
        False,  # messages[:1] ends with a user turn: the template raises there
        True,
        True,
        True,
        False,
        True,
        True,
        True,
    ]
    with pytest.raises(Exception, match="no"):
        ChatTemplate(source).render(msgs[:1], None, False)
    _proven_prefixes(source, "guard")
    # a raise where the turn is not the last one: the whole render raises, nothing is proven
    early = HEAD + "{% if not loop.last and m.content == '1' %}{{ raise_exception('early') }}{% endif %}" + END
    assert _watched(early)[0].render(msgs, None, False) is None


def test_generation_prompt_read_where_the_turn_is_not_last_proves_nothing():
    source = HEAD + "{% if not loop.last and add_generation_prompt %}!{% endif %}" + END
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert _watched(source)[0].render(msgs, None, False) is None  # the two heads differ
    assert _proven_prefixes(source, "g read")[0] == 0


@pytest.mark.parametrize(
    "body",
    [
        "{% set x = loop.last %}{{ x }}",
        "{% if loop.last %}{% set y = 1 %}{% endif %}",
        "{%- set ns = namespace(n=0) %}{% if not loop.last %}{% set ns.n = ns.n + 1 %}{% endif %}{{ ns.n }}",
        "{% macro f() %}F{% endmacro %}{% if loop.last %}{{ f() }}{% endif %}",
        "{% if loop.last %}{{ loop.cycle('a', 'b') }}{% endif %}",
        "{% for x in [1] if loop.last %}{{ x }}{% endfor %}",
    ],
)
def test_statements_that_may_do_more_than_write_text_keep_the_look_ahead(body):
    source = HEAD + body + END
    from transformers.utils.chat_template_utils import _compile_jinja_template

    env = _compile_jinja_template(source).environment
    assert isinstance(last_units(split_loops(env.parse(source))[0]), str)
    proven, unproven = _proven_prefixes(source, body)  # watched with the look-ahead: only j = n
    assert unproven > 2 * proven
    # add_generation_prompt beside such a statement: not watched at all
    assert _watched(HEAD + body + "{% if add_generation_prompt and loop.last %}G{% endif %}" + END)[0] is None


def test_a_marker_character_in_content_proves_nothing():
    from orchestrator.template import _MARK
    from orchestrator.template_last import last_markers

    watched = _watched(HEAD + "{% if loop.last %}[{{ m.name }}]{% else %}({{ m.name }}){% endif %}" + END)[0]
    vopen, vsep, vclose, poison, _ = last_markers(_MARK)  # the shape of the markers, another nonce
    forged = vopen + "a" + vsep + "a" + vsep + "b" + vsep + "c" + vclose  # a unit's copies, as text
    # in text outside the units (content), and inside them (name: rendered in every copy)
    for field in ("content", "name"):
        for text in ("x" + _MARK + "y", "x" + poison, forged):
            msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b", field: text}]
            assert watched.render(msgs, None, True) is None, (field, text)
    plain = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b", "name": "n"}]
    assert watched.render(plain, None, True) is not None


@pytest.mark.parametrize(
    "name, calls", [("olmo2_tulu", False), ("granite3_3", False), ("qwen2_5", True), ("chatml_tools", True)]
)
def test_only_units_that_may_read_messages_pay_for_calls(name, calls):
    # OLMo's and Granite's units read only the message and constants: plain marker text;
    # Qwen2.5's reads messages[loop.index0 + 1]: its copies' reads are told apart by calls
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from orchestrator.template_last import assigned_names, may_read

    source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    tree = _compile_jinja_template(source).environment.parse(source)
    loop = split_loops(tree)[0]
    units = last_units(loop)
    assert units and any(may_read(stmts[k], loop.target.name, assigned_names(tree)) for stmts, k in units) is calls


@pytest.mark.parametrize("family", ["olmo2_tulu", "granite3_3"])
def test_reconstruction_same_with_and_without_watched_renders(family):
    fast, slow = recon(tok=standin(family)), recon(tok=standin(family))
    assert fast.chat_template.tracked is not None and fast.chat_template.tracked.watch[3]
    slow.chat_template.tracked = None
    rng, built = random.Random(3), 0
    for i in range(30):
        msgs = [m for m in _conversation(rng) if not m.get("tool_calls") and m["role"] != "tool"]
        got = fast.build(msgs, sample_id=str(i))
        assert got == slow.build(msgs, sample_id=str(i))
        built += len(got[0])
    assert built >= 30 and fast.stats["prefix_renders_tracked"] == 30 and not fast.stats["prefix_renders_not_tracked"]
    assert fast.stats["renders"] < slow.stats["renders"] / 2


def test_a_watched_prefix_render_that_fails_is_rendered_plainly(monkeypatch):
    # DeepSeek V3 keeps after() per namespace state: a prefix in a state not seen yet is
    # rendered watched; if that render fails where the template does not, the plain one counts.
    from support import tokenizer_builds

    tok = tokenizer_builds.load("deepseek", "deepseek_v3")
    fast, slow = recon(tok=tok), recon(tok=tok)
    slow.chat_template.tracked = None
    calls = []

    def fail(*a, **k):
        calls.append(1)
        raise RuntimeError("watched render failed")

    monkeypatch.setattr(fast, "_watched_prefix", fail)
    call = {"type": "function", "id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "r", "tool_call_id": "c1"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "b"},
    ]
    got = fast.build(msgs, sample_id="0")
    assert got == slow.build(msgs, sample_id="0") and got[0] and not got[1]
    assert calls and fast.stats["prefix_renders_tracked"] == 1


def test_a_copy_whose_text_looks_like_the_same_marker_is_taken_as_it_is():
    # a unit without add_generation_prompt renders its copies for g true as SAME; a copy of a
    # unit with it whose text is SAME's character (the content) must not be taken for SAME
    source = HEAD + "{% if loop.last and add_generation_prompt %}{{ m.content }}{% endif %}" + END
    plain, watched = ChatTemplate(source), _watched(source)[0]
    msgs = [{"role": "user", "content": chr(0xF0007)}, {"role": "assistant", "content": chr(0xF0007)}]
    for g in (False, True):
        parts = watched.render(msgs, None, g)
        for j in (1, 2):
            assert parts.text_for(j, g) + parts.after == plain.render(msgs[:j], None, g), (j, g)
    where_not_last = HEAD + "{% if not loop.last and add_generation_prompt %}{{ m.content }}{% endif %}" + END
    assert _watched(where_not_last)[0].render(msgs, None, False) is None  # its two heads differ
