"""`Reconstructor.prompt_ids`: the prompt of a turn that would follow given messages (on-policy mode samples
the student from it) is, for every template under tests/templates, the prompt ids `build` gives the SFT
sample whose trained turn follows the same messages; where `build` rejects the conversation on the template's
error, so does `prompt_ids`, and where its self-check rejects the prompt (text the tokenizer cannot represent:
the GGUF-converted SmolLM2 vocabulary has no token for byte 0xF1, so U+40000-U+7FFFF), so does `prompt_ids`'s.
Before, such a prompt was given to the student as ids that decode to other text."""

from __future__ import annotations

import pytest
from support.reconstruct_helpers import recon
from test_reconstruct_paths import NAMES, base, tokenizer

from orchestrator.reconstruction.reasons import Reject

CONVERSATIONS = {
    "one user message": [{"role": "user", "content": "What is 2+2?"}],
    "a system prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    "an earlier turn with reasoning": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "a character outside some vocabularies": [{"role": "user", "content": "Say \U00040001 back."}],
}


@pytest.mark.parametrize("name", NAMES)
def test_the_prompt_is_the_sft_samples_prompt_for_every_template(name):
    r = recon(tok=tokenizer(name))
    compared, checked = 0, set()
    for what, messages in CONVERSATIONS.items():
        context = [dict(m, weight=0) if m["role"] == "assistant" else m for m in messages]
        samples, rejections = r.build([*context, {"role": "assistant", "content": "Fine."}], sample_id="t")
        if rejections and rejections[0].reason in ("template_error", "roundtrip_mismatch"):
            with pytest.raises(Reject) as e:  # Gemma 2's system message, Hermes' tools; SmolLM2's vocabulary
                r.prompt_ids(messages)
            assert e.value.reason == rejections[0].reason, what
            checked.add(e.value.reason)
        elif not rejections:
            assert len(samples) == 1, what
            assert r.prompt_ids(messages) == samples[0].prompt_ids, what
            compared += 1
    assert compared or name == "hermes3_tool_use", "no conversation compared"  # it renders only with tools
    if base(name) == "smollm2" and name != "hermes3_tool_use":
        assert "roundtrip_mismatch" in checked  # the character outside its vocabulary
