"""reasoning = "think_tags" for a student whose template places its reasoning field in its own syntax, outside any
<think> tags (orchestrator/thinking_syntax.py, probe_placed_syntax).

Before, gpt-oss and Kimi K3 students under think_tags (reasoning_form unset) were trained to write
"<think>\\nR\\n</think>\\n\\n" inside their answer: gpt-oss after "<|channel|>final<|message|>", Kimi K3 inside its
response tag after an empty think tag. Neither model writes <think> tags; the source scan for known syntaxes
(template_thinking_form) could not see theirs (gpt-oss's channels are not a reasoning_form; Kimi K3 writes its tags
through a macro). A render shows where the template places the field: now a config error naming that syntax and
reasoning = "template".
"""

from __future__ import annotations

import pytest
from support.family_standins import standin_or_skip as standin
from support.reconstruct_helpers import recon, runs
from support.tokenizer_builds import load_or_skip

from orchestrator.open_reasoning import THINK_FORM
from orchestrator.thinking_syntax import ThinkingSyntaxError, probe_placed_syntax

REASONED = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Add two and two."},
]


@pytest.mark.parametrize(
    "family,syntax",
    [
        (
            "gpt_oss",
            "<|start|>assistant<|channel|>analysis<|message|>{reasoning}<|end|>"
            "<|start|>assistant<|channel|>final<|message|>",
        ),
        (
            "kimi_k3",
            '<|open|>message role="assistant"<|sep|><|open|>think<|sep|>{reasoning}<|close|>think<|sep|>'
            "<|open|>response<|sep|>",
        ),
    ],
)
def test_think_tags_for_a_student_that_places_reasoning_in_its_own_syntax_is_refused(family, syntax):
    tok = standin(family)
    assert recon(tok=tok).placed_syntax == syntax
    with pytest.raises(ThinkingSyntaxError) as e:
        recon(tok=tok, reasoning="think_tags")
    assert repr(syntax) in str(e.value) and 'reasoning = "template"' in str(e.value)
    assert [p.key for p in e.value.config_error().problems] == ["orchestrator.reconstruction.reasoning"]  # CLI
    # the default places the reasoning where the template does, in its own syntax
    samples, rejections = recon(tok=tok).build(REASONED, None, sample_id="s")
    assert rejections == [] and len(samples) == 1
    trained = "".join(text for mask, text in runs(tok, samples[0]) if mask)
    assert "Add two and two." in trained and "<think>" not in trained
    # <think> tags chosen explicitly: the user's choice, trained as asked
    samples, rejections = recon(tok=tok, reasoning="think_tags", reasoning_form=THINK_FORM).build(
        REASONED, None, sample_id="s"
    )
    assert rejections == [] and "<think>\nAdd two and two.\n</think>" in "".join(t for _, t in runs(tok, samples[0]))


@pytest.mark.parametrize("family", ["glm4_6", "minimax_m2", "qwen3"])
def test_a_template_that_places_reasoning_in_think_tags_keeps_think_tags(family):
    """Qwen3, GLM-4.6 and MiniMax-M2 render the field between <think> and </think>: no other syntax, and
    think_tags builds as before."""
    tok = load_or_skip("qwen", "qwen3") if family == "qwen3" else standin(family)
    r = recon(tok=tok)
    assert r.places_reasoning and r.placed_syntax is None
    samples, rejections = recon(tok=tok, reasoning="think_tags").build(REASONED, None, sample_id="s")
    assert rejections == [] and "Add two and two." in "".join(t for m, t in runs(tok, samples[0]) if m)


def test_a_template_without_a_reasoning_field_shows_no_syntax():
    """SmolLM3 reads no reasoning field: the probe finds nothing, and think_tags is how its reasoning is written."""
    tok = standin("smollm3")
    r = recon(tok=tok)
    assert not r.places_reasoning
    assert r.placed_syntax is None
    assert probe_placed_syntax(lambda m: r.render(m, r.probe_tools, False)) is None  # the probe itself
    recon(tok=tok, reasoning="think_tags")  # no error


def test_a_template_that_raises_shows_no_syntax():
    def render(msgs):
        raise ValueError("no assistant turns")

    assert probe_placed_syntax(render) is None
