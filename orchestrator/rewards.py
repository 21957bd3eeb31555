"""Online reward functions for `orchestrator.reward_fn = "module:function"`.

A reward function is called as fn(prompt_record, completion_text) -> float,
where prompt_record is the dict from orchestrator.prompts.load_prompts.
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache
from typing import Any, Callable

RewardFn = Callable[[dict[str, Any], str], float]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def load_reward_fn(spec: str) -> RewardFn:
    """Import "package.module:function"; clear errors for a bad spec."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(
            f"orchestrator.reward_fn: {spec!r} is not 'module:function'. "
            'Fix: e.g. reward_fn = "orchestrator.rewards:gsm_symbolic_score"'
        )
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"orchestrator.reward_fn: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"orchestrator.reward_fn: {mod_name} has no function {fn_name!r}")
    return fn


def extract_final_answer(text: str) -> str | None:
    """The <answer>...</answer> content if present, else the last number in the text."""
    from reasoning_gym.utils import extract_answer

    tagged = extract_answer(text or "")
    if tagged:
        return tagged
    nums = _NUMBER.findall(text or "")
    return nums[-1].replace(",", "") if nums else None


@lru_cache(maxsize=32)
def _scorer(dataset: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


def reasoning_gym_score(prompt: dict[str, Any], completion: str) -> float:
    """Score with the prompt's own reasoning-gym dataset (the record carries its entry)."""
    meta = prompt.get("metadata") or {}
    entry = meta.get("entry")
    dataset = meta.get("dataset")
    if entry is None or dataset is None:
        raise ValueError(
            f"prompt {prompt.get('prompt_id')!r} has no reasoning-gym entry; this reward function "
            'needs orchestrator.source.type = "reasoning_gym"'
        )
    answer = extract_final_answer(completion)
    if answer is None:
        return 0.0
    return float(_scorer(dataset)(answer, entry))


def gsm_symbolic_score(prompt: dict[str, Any], completion: str) -> float:
    """reasoning-gym's gsm_symbolic score: 1.0 for the right final answer, below 1 otherwise
    (0.01 for a wrong but well-formed answer, 0.0 when no answer is found)."""
    return reasoning_gym_score(prompt, completion)
