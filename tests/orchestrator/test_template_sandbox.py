"""The remembered sandbox check (orchestrator/template_sandbox.py) decides exactly as jinja's."""

from __future__ import annotations

import types

import pytest

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import SecurityError  # noqa: E402
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

from orchestrator.template_sandbox import faster_sandbox  # noqa: E402

SAFE = (
    "{% set ns = namespace(seen=0) %}{% for m in messages %}{{ loop.index0 }}:{{ m.role.upper() }}:"
    "{{ m.content.split(' ')|length }}{% if loop.first %}F{% endif %}{% set ns.seen = ns.seen + 1 %}"
    "{{ m.get('role') }}{{ m.content.startswith('h') }}{% endfor %}{{ ns.seen }}{{ messages.index(messages[0]) }}"
)
UNSAFE = (
    "{{ messages.append }}",  # a list method that modifies it
    "{{ messages[0].clear() }}",  # a dict method that modifies it
    "{{ messages[0].content.__class__.__mro__ }}",
    "{% for m in messages %}{{ loop.__init__.__globals__ }}{% endfor %}",
    "{% set ns = namespace(a=1) %}{{ ns.__init__.__globals__ }}",
)


def outcome(env, source: str, messages) -> str:
    try:
        return "text:" + env.from_string(source).render(messages=messages)
    except SecurityError as e:
        return f"SecurityError:{e}"
    except jinja2.UndefinedError as e:
        return f"UndefinedError:{e}"


def test_same_renders_and_same_refusals_as_the_sandbox():
    env = _compile_jinja_template("{{ 1 }}").environment
    fast = faster_sandbox(env)
    assert fast is not env and fast.is_safe_attribute != env.is_safe_attribute
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    # Twice over: the second time every answer comes from what the first remembered.
    for _ in range(2):
        for source in (SAFE, *UNSAFE):
            assert outcome(fast, source, messages) == outcome(env, source, messages), source
    assert outcome(fast, SAFE, messages).startswith("text:0:USER:2F")
    assert all(not outcome(fast, s, messages).startswith("text:<") for s in UNSAFE)  # nothing unsafe leaks


def test_objects_that_may_lie_about_their_class_are_checked_every_time():
    # isinstance also asks obj.__class__: an object whose class redefines it may answer
    # differently each time, so its answers are never remembered.
    env = _compile_jinja_template("{{ 1 }}").environment
    fast = faster_sandbox(env)

    class Shifty(jinja2.utils.Namespace):
        asked = 0

        @property
        def __class__(self):  # a generator on every other question
            Shifty.asked += 1
            return types.GeneratorType if Shifty.asked % 2 else Shifty

    def answers(e) -> list[bool]:
        Shifty.asked = 0
        return [e.is_safe_attribute(Shifty(), "gi_frame", None) for _ in range(6)]

    assert len(set(answers(env))) == 2  # the sandbox's own answer changes
    assert answers(fast) == answers(env)


def test_a_check_that_is_not_jinjas_own_is_left_alone():
    class Custom(jinja2.sandbox.ImmutableSandboxedEnvironment):
        def is_safe_attribute(self, obj, attr, value):
            return attr != "upper" and super().is_safe_attribute(obj, attr, value)

    env = Custom()
    assert faster_sandbox(env) is env


def test_dict_attributes_answered_as_the_sandbox_does():
    """`m.role` on a plain dict is answered without jinja's AttributeError round trip: the
    same value, the same undefined for a missing key, dict methods still through the
    sandbox (safe ones given, mutating ones refused), dict subclasses and other objects
    untouched."""
    env = _compile_jinja_template("{{ 1 }}").environment
    fast = faster_sandbox(env)
    assert fast.getattr is not env.getattr

    class Sub(dict):
        role = "class attribute"

        def __missing__(self, key):
            return "missing:" + key

    ns = jinja2.utils.Namespace(role="ns")
    objects = [
        {"role": "user", "content": "hi", "items": "a key named like a method", "__class__": "k"},
        {},
        Sub(content="c"),
        ns,
        "text",
        [1, 2],
        None,
    ]
    names = ["role", "content", "missing", "items", "get", "keys", "clear", "update", "__class__", "upper", "x"]
    for obj in objects:
        for name in names:
            want, got = env.getattr(obj, name), fast.getattr(obj, name)
            assert type(got) is type(want), (obj, name)
            if isinstance(want, jinja2.Undefined):
                assert (got._undefined_obj, got._undefined_name) == (want._undefined_obj, want._undefined_name)
            elif isinstance(want, types.BuiltinMethodType | types.MethodType):
                assert got == want, (obj, name)
            else:
                assert got is want or got == want, (obj, name)
    source = (
        "{% for m in messages %}{{ m.role }}|{{ m.missing is defined }}|{{ m.items() | list | length }}{% endfor %}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "missing": 0}]
    assert outcome(fast, source, messages) == outcome(env, source, messages) == "text:user|False|2assistant|True|3"
    assert outcome(fast, "{{ messages[0].clear() }}", messages).startswith("SecurityError")
