"""orchestrator/template_tracked.py: for templates that are not provably append-only, a
watched render proves prefix renders one conversation at a time. Every prefix it proves
must equal rendering that prefix; look-ahead of any kind must leave the prefixes it
affects unproven; reconstruction must give the same samples with and without it."""

from __future__ import annotations

import random

import pytest
from support.reconstruct_helpers import TEMPLATES, recon
from test_template import APPEND_ONLY, NOT_APPEND_ONLY

from orchestrator.template import END, START, ChatTemplate, _MARK
from orchestrator.template_tracked import tracked_template

BODY = "{%- for m in messages %}{{ m.content }}{%- endfor %}"
# Look-ahead and list operations in every form we could think of: each must either be
# recorded (the prefixes it affects stay unproven) or make the render fail.
LOOK_AHEAD = {
    "peek then output": "{%- for m in messages %}{{ m.content }}{% if loop.last %}END{% endif %}{%- endfor %}",
    "nextitem": "{%- for m in messages %}{{ m.content }}{% if loop.nextitem %}+{% endif %}{%- endfor %}",
    "revindex": "{%- for m in messages %}{{ loop.revindex }}{{ m.content }}{%- endfor %}",
    "namespace set on loop.last": (
        "{%- set ns = namespace(x=0) %}{%- for m in messages %}{%- if not loop.last %}"
        "{% set ns.x = ns.x + 1 %}{% endif %}{{ ns.x }}{{ m.content }}{%- endfor %}"
    ),
    "truth of messages": "{%- if messages %}Y{% endif %}" + BODY,
    "first filter": "{{ (messages|first).role }}" + BODY,
    "last filter": "{{ (messages|last).role }}" + BODY,
    "selectattr count": "{{ messages|selectattr('role','equalto','user')|list|length }}" + BODY,
    "look-back index": (
        "{%- for m in messages %}{{ messages[loop.index0 - 1].role if loop.index0 else '' }}{{ m.content }}{%- endfor %}"
    ),
    "as a string": "{{ messages }}" + BODY,
    "compared with a list": "{% if messages == [] %}E{% endif %}" + BODY,
    "membership": "{% if 'x' in messages %}E{% endif %}" + BODY,
    "tojson": "{{ messages|tojson }}" + BODY,
    "head slice": "{{ messages[:2]|length }}" + BODY,
    "reversed pre-pass (Qwen3)": "{%- for m in messages[::-1] %}{{ m.role }}{%- endfor %}" + BODY,
    "after reads messages[0]": BODY + "{% if add_generation_prompt %}{{ messages[0].role }}G{% endif %}",
    "after reads the last message": BODY + "{% if add_generation_prompt %}{{ messages[-1].role }}G{% endif %}",
    "attribute of messages": "{% if messages.copy %}C{% endif %}" + BODY,
}
REAL = ("llama3_1", "qwen2_5", "qwen3", "chatml_tools")


def _conversation(rng: random.Random) -> list[dict]:
    msgs = [{"role": "system", "content": "be brief"}] if rng.random() < 0.5 else []
    for t in range(rng.randint(1, 5)):
        msgs.append({"role": "user", "content": rng.choice(["hi", "two words", "x"]) + str(t), "tags": ["a"]})
        if rng.random() < 0.3:
            call = {"type": "function", "id": "abcdefghi", "function": {"name": "f", "arguments": {"a": 1}}}
            msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
            msgs += [{"role": "tool", "content": "r", "tool_call_id": "abcdefghi"}] * rng.randint(1, 2)
        msgs.append({"role": "assistant", "content": rng.choice(["ok", "sure.", "a\nb"])})
    return msgs


def _watched(source: str):
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return tracked_template(_compile_jinja_template(source).environment, source, _MARK, START, END)


def _proven_prefixes(source: str, seed: str, conversations: int = 25) -> tuple[int, int]:
    """(prefixes proven, prefixes not) over random conversations; asserts every proven
    prefix equals its direct render."""
    watched, why = _watched(source)
    assert watched is not None, why
    plain = ChatTemplate(source)
    rng, proven, unproven = random.Random(seed), 0, 0
    kw = {"bos_token": "<s>", "eos_token": "</s>"}
    afters: dict[tuple, set[str]] = {}
    for _ in range(conversations):
        msgs = _conversation(rng)
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}] if rng.random() < 0.3 else None
        for g in (False, True):
            try:
                parts = watched.render(msgs, tools, g, **kw)
            except Exception:  # noqa: BLE001 - a failing watched render proves nothing
                unproven += len(msgs)
                continue
            for j in range(1, len(msgs) + 1):
                text = parts.text_for(j, g) if parts is not None else None
                if text is None or parts.after_max >= j:
                    unproven += 1
                    continue
                direct = plain.render(msgs[:j], tools, g, **kw)
                state = parts.state_for(j)
                if state is not None and state == parts.end_state:  # after() reads no namespace, or the same values
                    assert text + parts.after == direct, (j, g)
                else:  # the prefix's own watched render: the same head, in the state recorded for it
                    own = watched.render(msgs[:j], tools, g, **kw)
                    own_text = own.text_for(own.n, g)
                    assert (own_text, own.end_state, own_text + own.after) == (text, state, direct)
                    if state is not None:
                        afters.setdefault((g, state), set()).add(own.after)
                proven += 1
            if parts is not None and parts.end_state is not None:
                afters.setdefault((g, parts.end_state), set()).add(parts.after)
    if watched.after_is_constant:  # after(g) is a function of the state alone
        assert all(len(v) == 1 for v in afters.values()), afters
    return proven, unproven


@pytest.mark.parametrize("name", sorted(NOT_APPEND_ONLY) + sorted(APPEND_ONLY))
def test_proven_prefixes_equal_direct_renders_on_the_project_templates(name):
    source = NOT_APPEND_ONLY[name][0] if name in NOT_APPEND_ONLY else APPEND_ONLY[name]
    if _watched(source)[0] is None:
        return  # refused statically (nested loop, break, namespace after the loop, ...): nothing to prove
    _proven_prefixes(source, name)


@pytest.mark.parametrize("name", sorted(LOOK_AHEAD))
def test_look_ahead_never_proves_a_wrong_prefix(name):
    proven, unproven = _proven_prefixes(LOOK_AHEAD[name], name)
    assert proven + unproven > 0


def test_look_ahead_leaves_exactly_the_affected_prefixes_unproven():
    # loop.nextitem in every iteration: only the whole conversation (j = n) is proven.
    watched, _ = _watched(LOOK_AHEAD["nextitem"])
    msgs = [{"role": "user", "content": str(i)} for i in range(4)]
    parts = watched.render(msgs, None, False)
    assert [parts.cut_for(j) for j in range(1, 5)][:3] == [None, None, None] and parts.cut_for(4) is not None
    # loop.last read only to choose text (template_last.py): every prefix; assigned from: none but the whole
    last = _watched(LOOK_AHEAD["peek then output"])[0].render(msgs, None, False)
    assert [last.text_for(j, False) for j in range(1, 5)] == ["0END", "01END", "012END", "0123END"]
    assert [last.cut_for(j) for j in range(1, 5)] == [None] * 4  # not a cut of head: text_for
    ns = _watched(LOOK_AHEAD["namespace set on loop.last"])[0].render(msgs, None, False)
    assert [ns.text_for(j, False) is not None for j in range(1, 5)] == [False, False, False, True]
    # reading messages[0] before the loop proves every prefix; the count proves none but the last
    assert all(_watched("{{ messages[0].role }}" + BODY)[0].render(msgs, None, False).cut_for(j) for j in (1, 2, 3))
    counted = _watched("{{ messages|length }}" + BODY)[0].render(msgs, None, False)
    assert [counted.cut_for(j) for j in (1, 2, 3)] == [None, None, None]


@pytest.mark.parametrize("name", REAL)
def test_real_templates(name):
    source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    t = ChatTemplate(source)
    assert not t.append_only and t.tracked is not None, t.why_not_tracked
    proven, unproven = _proven_prefixes(source, name, 60)
    if name == "qwen3":  # its pre-pass over all messages finds the last user query: only j = n
        assert proven and unproven > 3 * proven
    else:  # Llama 3.1: messages[1:] (and messages|length with tools); Qwen2.5, chatml_tools: look-ahead for tools
        assert proven > 2 * unproven


def test_static_refusals():
    for source, why in (
        (NOT_APPEND_ONLY["nested loop"][0], "top-level"),
        (NOT_APPEND_ONLY["break"][0], "break"),
        (NOT_APPEND_ONLY["gen prompt in loop"][0], "add_generation_prompt"),
        (NOT_APPEND_ONLY["macro after loop"][0], "macro"),
        (NOT_APPEND_ONLY["loop in a macro"][0], "outside a for loop"),
    ):
        watched, reason = _watched(source)
        assert watched is None and why in reason


def _llama():
    from support import tokenizer_builds

    return tokenizer_builds.load_or_skip("llama3", "llama3_1")


@pytest.mark.parametrize("learnt", [True, False])
def test_reconstruction_same_with_and_without_watched_renders_and_one_or_two_renders_per_conversation(learnt):
    # Llama 3.1's text after the loop reads only add_generation_prompt: the generation prompt
    # is learnt from the first conversation, then its first prompt is rendered again only
    # every CROSS_CHECK_EVERY conversations (learnt=False: every time).
    tok = _llama()
    fast, slow = recon(tok=tok), recon(tok=tok)
    assert fast.chat_template.after_is_constant
    fast.chat_template.after_is_constant = learnt
    fast.CROSS_CHECK_EVERY = 8
    slow.chat_template.tracked = None
    rng = random.Random(7)
    renders = []
    for i in range(30):
        msgs = _conversation(rng)
        for m in msgs:  # the template trims content, and its tool branch needs one call
            m["content"] = m["content"].strip()
        fast._render_cache.clear()  # first prompts repeat here: count renders, not cache hits
        before, tracked = fast.stats["renders"], fast.stats["prefix_renders_tracked"]
        got = fast.build(msgs, sample_id=str(i))
        assert got == slow.build(msgs, sample_id=str(i))
        if not any(m["role"] == "tool" for m in msgs) and got[0]:
            renders.append((tracked, fast.stats["renders"] - before))
    for tracked, n in renders:  # the whole conversation, and its first prompt when checked
        assert n == (2 if not learnt or tracked % fast.CROSS_CHECK_EVERY == 0 else 1)
    assert {n for _, n in renders} == ({1, 2} if learnt else {2})
    assert fast.stats["prefix_renders_tracked"] > 0 and fast.stats["renders"] < slow.stats["renders"] / 2


def test_failed_cross_check_turns_watched_renders_off(capsys):
    # Simulate a wrong proof: a learnt generation prompt that the real render contradicts.
    tok = _llama()
    r, slow = recon(tok=tok), recon(tok=tok)
    slow.chat_template.tracked = None
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    r.build(msgs, sample_id="0")
    assert set(r._tracked_afters) == {(True, ()), (False, ())}  # after() reads no namespace: one state
    r._tracked_afters[(True, ())] = "<|start_header_id|>assistant<|end_header_id|>WRONG"
    r.stats["prefix_renders_tracked"] = r.CROSS_CHECK_EVERY  # the next conversation is a check
    assert r.build(msgs, sample_id="1") == slow.build(msgs, sample_id="1")  # rebuilt per prefix, correct
    assert r.stats["prefix_cross_check_failed"] == 1 and not r._try_tracked
    assert "please report" in capsys.readouterr().err


@pytest.mark.parametrize(
    "after, constant",
    [
        ("{%- if add_generation_prompt %}{{ bos_token }}A{% endif %}", True),
        ("{%- if add_generation_prompt %}{{ messages[0].role }}{% endif %}", False),
        ("{%- if add_generation_prompt and tools %}T{% endif %}", False),
    ],
)
def test_after_is_constant_verdicts_for_watched_templates(after, constant):
    t = ChatTemplate("{{ messages|length }}" + BODY + after)  # messages|length: not append-only
    assert not t.append_only and t.tracked is not None and t.after_is_constant is constant


def test_watched_renders_given_up_when_they_never_prove_anything():
    from distill.core.student import load_tokenizer, tokenizer_only_dir
    from test_template import CHATML

    tok = load_tokenizer(tokenizer_only_dir())
    tok.chat_template = "{%- for m in messages[::-1] %}{%- endfor %}" + CHATML  # a pre-pass, as Qwen3's
    r = recon(tok=tok)
    assert r.chat_template.tracked is not None
    for i in range(r.TRACKED_GIVE_UP + 5):
        samples, _ = r.build(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"a{i}"}], sample_id="x"
        )
        assert len(samples) == 1
    assert r.stats["prefix_renders_not_tracked"] == r.TRACKED_GIVE_UP and not r.stats["prefix_renders_tracked"]


def _four_calls(text: str, mark: str, start: str, end: str):
    head, _, after = text.partition(end)
    return text.count(mark), text.count(end), head.split(start), after


@pytest.mark.parametrize(
    "mark,start,end",
    [
        (_MARK, START, END),  # the real markers: one split at the mark character when they line up
        ("<", "<s", "<e"),
        ("<", "<s", "<ss"),  # start's rest a prefix of end's: the four calls
        ("<<", "<<s", "<<e"),  # a two-character mark: the four calls
        ("<", "<s<", "<e"),  # the mark inside start's rest: the four calls
    ],
)
def test_cut_at_markers_is_the_four_calls(mark, start, end):
    """cut_at_markers (one split where the markers line up) gives exactly what counting,
    partitioning and splitting give, on random texts made of the markers, their pieces
    and other text, in every shape (stray marks, no end, two ends, an end before a start)."""
    from orchestrator.tracked_parts import cut_at_markers

    rng = random.Random(12)
    atoms = [mark, start, end, start[1:], end[1:], "a", "\n", "é", "\U0001f600", ""]
    lined_up = 0
    for _ in range(4000):
        n = rng.randint(0, 8)
        text = "".join(rng.choice(atoms) for _ in range(n))
        if rng.random() < 0.5:  # the usual shape: starts, then one end
            text = "".join(rng.choice(["a", "é", ""]) + start for _ in range(n)) + "x" + end + "tail"
        got = cut_at_markers(text, mark, start, end)
        assert got == _four_calls(text, mark, start, end), text
        lined_up += got[1] == 1
    assert lined_up > 1000  # the usual shape was tried
