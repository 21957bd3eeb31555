"""An assistant turn's lead (what the template writes before its content, Mistral's " ")
learnt from one sentinel render and reused by textual match (turns.py `_known_lead`):
the same samples and verdicts as a sentinel render for every turn."""

from __future__ import annotations

import pytest
from support.reconstruct_helpers import recon, tokenizer_with

# inline templates on SmolLM2's tokenizer: a lead before the content, one that trims it
# (as Llama 2's does), and one whose lead depends on the content
_HEAD = (
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{- '<|im_start|>user ' + message['content'] + '<|im_end|>' }}{%- else %}"
)
TEMPLATES = {
    "lead": _HEAD + "{{- ' A: ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}",
    "trims": _HEAD + "{{- ' ' + message['content'] | trim + eos_token }}{%- endif %}{%- endfor %}",
    "lead depends on content": _HEAD
    + "{{- ('' if message['content'].startswith(' ') else ' ') + message['content'] + eos_token }}"
    + "{%- endif %}{%- endfor %}",
}
# every role with the same lead: a user turn's lead is context, never an assistant's known lead
SAME_LEAD = "{%- for message in messages %}{{- ' ' + message['content'] + eos_token }}{%- endfor %}"
CONTENTS = ["a", " a", "  a", "\na", "a ", "a\n", "x y", " ", "é 😀", "a" * 3]


def _pair(template: str, **policy):
    tok = tokenizer_with(None).__class__.from_pretrained(tokenizer_with(None).name_or_path)
    tok.chat_template = TEMPLATES.get(template, template)
    fresh = recon(tok=tok, **policy)
    per_turn = recon(tok=tok, **policy)
    per_turn._known_lead = lambda *a: False  # a sentinel render for every turn, as before
    return fresh, per_turn


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_known_leads_give_the_verdicts_of_a_render_per_turn(template):
    fast, slow = _pair(template)
    convs = []
    for i, c in enumerate(CONTENTS):
        msgs = []
        for j, d in enumerate([CONTENTS[0], c, CONTENTS[(i + 3) % len(CONTENTS)]]):
            msgs += [{"role": "user", "content": f"q{j}"}, {"role": "assistant", "content": d}]
        convs.append(dict(messages=msgs, sample_id=str(i)))
    got = fast.build_many(convs)
    assert got == slow.build_many(convs)
    assert any(s for s, _ in got)  # not everything rejected
    if template != "trims":
        assert fast.stats["turn_leads_known"] > 0


def test_a_mistral_conversation_renders_once_not_once_per_turn():
    from support import tokenizer_builds

    tok = tokenizer_builds.load_or_skip("mistral_sp", "mistral_v0_1")
    fast, slow = recon(tok=tok), recon(tok=tok)
    slow._known_lead = lambda *a: False
    msgs = []
    for k in range(5):
        msgs += [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"answer {k}"}]
    assert fast.build(msgs, sample_id="m") == slow.build(msgs, sample_id="m")
    assert fast.stats["turn_leads_known"] == 4  # the first turn's sentinel render taught the lead
    assert fast.stats["renders"] + 4 == slow.stats["renders"]


def test_a_trained_user_turn_keeps_its_lead_as_context():
    fast, slow = _pair(SAME_LEAD, train_roles=["user", "assistant"])
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    msgs += [{"role": "user", "content": "r"}, {"role": "assistant", "content": "b"}]
    got = fast.build(msgs, sample_id="m")
    assert got == slow.build(msgs, sample_id="m") and got[0]
    s = got[0][0]
    trained = fast.tokenizer.decode([i for i, m in zip(s.completion_ids, s.completion_mask) if m])
    # an assistant's lead is what the student emits; a user's is the header before its text
    assert trained == "q<|im_end|> a<|im_end|>r<|im_end|> b<|im_end|>"
