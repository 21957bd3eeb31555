"""Mode validation for on-policy distillation (`on_policy.enabled = true`; distill/core/config/checks_onpolicy.py):
a table of mistakes -> the key paths they are reported at, each alone and all at once, each with its fix."""

from __future__ import annotations

import pytest

from distill.core.config import ConfigError, load_config

REWARD = "orchestrator.rewards:gsm_symbolic_score"
# A valid on-policy run: the student samples, a [scorer] grades, reverse_kl trains.
BASE = {"on_policy.enabled": "true", "scorer.type": "vllm", "trainer.loss.type": "reverse_kl"}


def load(settings: dict[str, str | None]):
    """load_config with these overrides (a None value leaves the key unset)."""
    args = []
    for k, v in settings.items():
        if v is not None:
            args += [f"--{k}", v]
    return load_config(None, args)


# mistake -> (overrides on top of BASE, the key paths reported)
MISTAKES = {
    "no_scorer": ({"scorer.type": None}, ["scorer"]),
    "sft_loss": ({"trainer.loss.type": "sft"}, ["trainer.loss.type"]),
    "unknown_loss": ({"trainer.loss.type": "grpo"}, ["trainer.loss.type"]),
    "topk_kl_without_top_k": ({"trainer.loss.type": "topk_kl", "scorer.top_k": "0"}, ["scorer.top_k"]),
    "kd_rl_without_reward_fn": ({"trainer.loss.type": "kd_rl"}, ["orchestrator.reward_fn"]),
    "kd_rl_one_sample_per_prompt": (
        {"trainer.loss.type": "kd_rl", "orchestrator.reward_fn": REWARD, "on_policy.samples_per_prompt": "1"},
        ["on_policy.samples_per_prompt"],
    ),
    "step_not_whole_groups": (
        {"trainer.samples_per_step": "6", "on_policy.samples_per_prompt": "4"},
        ["trainer.samples_per_step"],
    ),
    "weight_broadcast": ({"weight_broadcast.type": "filesystem"}, ["weight_broadcast.type"]),
    "eval_every_alone": ({"on_policy.eval_every": "5"}, ["on_policy.eval_prompts"]),
    "eval_prompts_alone": ({"on_policy.eval_prompts": "8"}, ["on_policy.eval_every"]),
    "no_room_for_the_prompt": (
        {"on_policy.max_new_tokens": "64", "trainer.seq_len": "64"},
        ["on_policy.max_new_tokens"],
    ),
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"trainer.loss.type": "iw_opd"},
        {"trainer.loss.type": "kd_rl", "orchestrator.reward_fn": REWARD},
        {"trainer.loss.type": "kd_rl", "trainer.loss.w_rl": "0"},  # no RL term: no rewards needed
        {"trainer.loss.type": "topk_kl", "scorer.top_k": "20"},
        {"on_policy.eval_every": "5", "on_policy.eval_prompts": "8", "trainer.samples_per_step": "12"},
    ],
)
def test_valid_on_policy_configs_load(extra):
    cfg = load({**BASE, **extra})
    assert cfg.on_policy.enabled and cfg.scorer is not None


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_on_policy_mistake_is_reported_at_its_key_with_a_fix(name):
    overrides, keys = MISTAKES[name]
    with pytest.raises(ConfigError) as ei:
        load({**BASE, **overrides})
    assert [p.key for p in ei.value.problems] == keys
    assert all("Fix:" in p.message for p in ei.value.problems)


def test_all_on_policy_mistakes_are_reported_at_once():
    # Every mistake that can stand together in one config (one loss type at a time).
    combined = {
        **BASE,
        "scorer.type": None,
        "trainer.loss.type": "kd_rl",
        "on_policy.samples_per_prompt": "4",
        "trainer.samples_per_step": "6",  # not a multiple of 4
        "on_policy.max_new_tokens": "64",
        "trainer.seq_len": "64",
        "weight_broadcast.type": "nccl",
        "on_policy.eval_every": "5",
    }
    with pytest.raises(ConfigError) as ei:
        load(combined)
    assert sorted(p.key for p in ei.value.problems) == sorted(
        [
            "scorer",
            "orchestrator.reward_fn",
            "trainer.samples_per_step",
            "on_policy.max_new_tokens",
            "weight_broadcast.type",
            "on_policy.eval_prompts",
        ]
    )


def test_the_broadcast_refusal_names_the_in_process_sampler_once():
    with pytest.raises(ConfigError) as ei:
        load({**BASE, "weight_broadcast.type": "filesystem"})
    (p,) = ei.value.problems
    assert "in-process sampler" in p.message and "never ours to update" in p.message


def test_a_wrong_loss_names_every_loss_on_policy_mode_trains():
    with pytest.raises(ConfigError) as ei:
        load({**BASE, "trainer.loss.type": "sft"})
    msg = ei.value.problems[0].message
    for loss in ("reverse_kl", "iw_opd", "kd_rl", "topk_kl"):
        assert f'"{loss}"' in msg
    assert "on_policy.enabled = false" in msg


def test_messages_only_rules_are_unchanged_with_on_policy_off():
    # The same config with on_policy off is SFT mode: the on-policy loss is refused there, pointing here.
    with pytest.raises(ConfigError) as ei:
        load({**BASE, "on_policy.enabled": "false"})
    (p,) = ei.value.problems
    assert p.key == "trainer.loss.type" and "Fix: set on_policy.enabled = true" in p.message
    assert load({"scorer.type": "vllm", "trainer.loss.type": "topk_kl", "scorer.top_k": "5"}).scorer.top_k == 5
