"""orchestrator/template_prepass.py: watched renders of templates with loops over messages
before the main one (DeepSeek's system-prompt pre-pass) and whose text after the main loop
reads namespace attributes. Every proven prefix must equal rendering it, in the state
recorded for it; look-ahead or writes in a pre-pass must leave the prefixes they affect
unproven; reconstruction must give the same samples with and without watched renders."""

from __future__ import annotations

import random

import pytest
from support.reconstruct_helpers import TEMPLATES, recon
from test_template_tracked import _proven_prefixes, _watched

from orchestrator.template import ChatTemplate

MAIN = "{%- for m in messages %}{{ m.content }}{%- endfor %}"
AFTER = "{%- if add_generation_prompt %}{{ 'G' if not ns.t else 'T' }}{% endif %}"
NS = "{%- set ns = namespace(s='', t=false) %}"
PREPASS = {  # pre-pass forms; name -> (template, every prefix proven on conversations with no late system message)
    "system prompt gathered": (
        NS + "{%- for m in messages %}{%- if m.role == 'system' %}{% set ns.s = m.content %}{% endif %}{%- endfor %}"
        "{{ ns.s }}" + MAIN,
        True,
    ),
    "namespace read after the loop": (
        NS + "{%- for m in messages %}{%- set ns.t = m.role == 'tool' %}{{ m.content }}{%- endfor %}" + AFTER,
        True,
    ),
    "writes on every message": (
        NS + "{%- for m in messages %}{% set ns.s = m.role %}{%- endfor %}{{ ns.s }}" + MAIN,
        False,
    ),
    "system index through loop (jinja's loop context)": (
        NS + "{%- for m in messages %}{%- if m.role == 'system' %}{% set ns.s = loop.index0 %}{% endif %}"
        "{%- endfor %}{{ ns.s }}" + MAIN,
        True,
    ),
    "writes on every message through loop": (
        NS + "{%- for m in messages %}{% set ns.s = loop.index %}{%- endfor %}{{ ns.s }}" + MAIN,
        False,
    ),
    "a namespace's alias read after the loop": (
        NS + "{%- set al = ns %}{%- for m in messages %}{%- set ns.t = m.role == 'tool' %}{{ m.content }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ 'T' if al.t else 'G' }}{% endif %}",
        True,
    ),
    "loop.last in the pre-pass": (
        NS + "{%- for m in messages %}{% if loop.last %}{% set ns.s = 'L' %}{% endif %}{%- endfor %}{{ ns.s }}" + MAIN,
        False,
    ),
    "loop.length in the pre-pass": (
        NS + "{%- for m in messages %}{% if loop.length > 3 %}{% set ns.t = true %}{% endif %}{%- endfor %}"
        "{{ ns.t }}" + MAIN,
        False,
    ),
    "next message read in the pre-pass": (
        NS + "{%- for m in messages %}{% if messages[loop.index0 + 1] is defined %}{% set ns.s = 'n' %}"
        "{% endif %}{%- endfor %}{{ ns.s }}" + MAIN,
        False,
    ),
    "two pre-passes over an alias": (
        "{%- set rest = messages[1:] %}" + NS + "{%- for m in rest %}{% if m.role == 'system' %}{% set ns.s = 'S' %}"
        "{% endif %}{%- endfor %}{%- for m in messages %}{% if m.role == 'tool' %}{% set ns.t = true %}{% endif %}"
        "{%- endfor %}{{ ns.s }}" + MAIN,
        False,
    ),
}
REFUSED = {
    "a pre-pass writes text": ("{%- for m in messages %}{{ m.role }}{%- endfor %}" + MAIN, "writes text"),
    "a filtered pre-pass": ("{%- for m in messages if m.role == 'user' %}{%- endfor %}" + MAIN, "filtered"),
    "a nested loop over messages": (
        "{%- if true %}{%- for m in messages %}{%- endfor %}{% endif %}" + MAIN,
        "top-level",
    ),
    "add_generation_prompt read in an idiom's twin": (
        "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
        "{% if not add_generation_prompt is defined %}{% else %}{{ add_generation_prompt }}{% endif %}" + MAIN,
        "add_generation_prompt",
    ),
    "a namespace itself after the loop": (
        NS + "{%- for m in messages %}{% set ns.t = true %}{{ m.content }}{%- endfor %}{{ ns }}",
        "other than as ns.<attribute>",
    ),
}
DEEPSEEK = ("deepseek_v3", "deepseek_v3_1", "deepseek_r1_distill")


def _conversation(rng: random.Random, late_system: bool = False) -> list[dict]:
    msgs = [{"role": "system", "content": "be brief"}] if rng.random() < 0.5 else []
    for t in range(rng.randint(1, 5)):
        msgs.append({"role": "user", "content": rng.choice(["hi", "two words", "x"]) + str(t)})
        if rng.random() < 0.3:  # DeepSeek pastes the arguments as the API's JSON string
            call = {"type": "function", "id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}
            msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
            msgs += [{"role": "tool", "content": "r", "tool_call_id": "c1"}] * rng.randint(1, 2)
        msgs.append({"role": "assistant", "content": rng.choice(["ok", "sure.", "a\nb"])})
    if late_system:
        msgs.insert(len(msgs) - 1, {"role": "system", "content": "late"})
    return msgs


@pytest.fixture
def conversations(monkeypatch):
    import test_template_tracked

    monkeypatch.setattr(test_template_tracked, "_conversation", _conversation)


@pytest.mark.parametrize("name", sorted(PREPASS))
def test_proven_prefixes_equal_direct_renders(name, conversations):
    source, all_proven = PREPASS[name]
    assert _watched(source)[0] is not None, _watched(source)[1]
    proven, unproven = _proven_prefixes(source, name, 40)
    assert proven and (unproven == 0) is all_proven, (proven, unproven)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_static_refusals(name):
    source, why = REFUSED[name]
    watched, reason = _watched(source)
    assert watched is None and why in reason, reason


@pytest.mark.parametrize("name", DEEPSEEK)
def test_deepseek_templates_every_prefix_proven(name, conversations):
    source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    t = ChatTemplate(source)
    assert not t.append_only and t.tracked is not None and t.after_is_constant, t.why_not_tracked
    assert t.tracked.watch[:3] == (True, True, ("is_last_user", "is_tool") if name == "deepseek_v3_1" else ("is_tool",))
    idiom = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    assert source.startswith(idiom)  # not a read of it before the loop: we always pass it
    proven, unproven = _proven_prefixes(source, name, 60)
    assert proven > 500 and unproven == 0


def test_a_late_system_message_leaves_the_prefixes_before_it_unproven():
    # the pre-pass writes the system prompt at that message: every shorter prefix renders another one
    watched, _ = _watched((TEMPLATES / "deepseek_v3.jinja").read_text(encoding="utf-8"))
    msgs = _conversation(random.Random(3), late_system=True)
    late = next(i for i, m in enumerate(msgs) if m["content"] == "late")
    parts = watched.render(msgs, None, False, bos_token="<s>")
    assert [j for j in range(1, len(msgs) + 1) if parts.cut_for(j) is not None] == list(range(late + 1, len(msgs) + 1))


def _deepseek(template: str):
    from support import tokenizer_builds

    return tokenizer_builds.load_or_skip("deepseek", template)


@pytest.mark.parametrize("template", DEEPSEEK)
def test_deepseek_reconstruction_same_with_and_without_watched_renders(template):
    tok = _deepseek(template)
    fast, slow = recon(tok=tok), recon(tok=tok)
    slow.chat_template.tracked = None
    rng = random.Random(11)
    samples = 0
    for i in range(40):
        msgs = _conversation(rng, late_system=i % 10 == 9)
        got = fast.build(msgs, sample_id=str(i))
        assert got == slow.build(msgs, sample_id=str(i))
        samples += len(got[0])
    # V3 and R1 reject their later tool-call turns (not started by the generation prompt)
    assert samples >= 25
    # a late system message leaves the first prompt unproven: that conversation renders each prefix
    assert fast.stats["prefix_renders_tracked"] >= 36 and fast.stats["prefix_renders_not_tracked"] <= 4
    # R1's turns follow a prompt that opens <think>: each is also rendered as the student emits it
    assert fast.stats["renders"] < slow.stats["renders"] * (0.8 if template == "deepseek_r1_distill" else 0.5)
    # after(True) was learnt in more than one state: after a tool result the prompt differs (ns.is_tool);
    # R1 rejects tool-call turns before any prompt after a tool result is needed
    prompts = {s: a for (g, s), a in fast._tracked_afters.items() if g}
    states = 1 if template == "deepseek_r1_distill" else 2
    assert len(prompts) == len(set(prompts.values())) == states, prompts


def test_a_pre_pass_needs_the_immutable_sandbox():
    # a mutable environment would let a pre-pass change a list (lst.append), which is not watched
    from jinja2.sandbox import SandboxedEnvironment

    from orchestrator.template import _MARK, END, START
    from orchestrator.template_tracked import tracked_template

    source = PREPASS["system prompt gathered"][0]
    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    watched, why = tracked_template(env, source, _MARK, START, END)
    assert watched is None and "lists may change" in why
    assert tracked_template(env, MAIN, _MARK, START, END)[0] is not None  # no pre-pass: as before


def test_a_state_holding_an_object_is_not_compared():
    # a namespace attribute holding a list (or another namespace) has no value to key after() by:
    # reconstruction renders those prefixes (prefixes.py), as the check here does
    source = (
        "{%- set ns = namespace(t=[]) %}{%- for m in messages %}{%- set ns.t = [m.role] %}{{ m.content }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ ns.t[0] }}{% endif %}"
    )
    watched, _ = _watched(source)
    parts = watched.render(_conversation(random.Random(5)), None, True)
    assert parts.states and all(s is None for s in parts.states) and parts.end_state is None
    assert _proven_prefixes(source, "object state", 10)[0] > 0
