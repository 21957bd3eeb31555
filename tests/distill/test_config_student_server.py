"""Validation of `on_policy.sampler = "server"` and `[on_policy.student_server]`
(distill/core/config/checks_onpolicy.py; docs/on_policy.md, "Student inference server"): the server must be
the student's own (never the [scorer]'s or the rollout model's), its refresh must fit the trainer."""

from __future__ import annotations

import pytest
from test_config_onpolicy import BASE, load

from distill.core.config import ConfigError

SERVER = {
    **BASE,
    "on_policy.sampler": "server",
    "on_policy.student_server.type": "vllm",
    "on_policy.student_server.base_url": "http://127.0.0.1:8001/v1",
    "scorer.base_url": "http://127.0.0.1:8000/v1",
}

MISTAKES = {
    "server_sampler_without_server": ({"on_policy.student_server.type": None,
                                       "on_policy.student_server.base_url": None}, ["on_policy.student_server"]),
    "server_set_but_in_process": ({"on_policy.sampler": "in_process"}, ["on_policy.student_server"]),
    "server_is_the_scorer": ({"on_policy.student_server.base_url": "http://localhost:8000/v1/"},
                             ["on_policy.student_server.base_url"]),
    "server_is_the_rollout_model": ({"orchestrator.rollout_model.base_url": "http://127.0.0.1:8001"},
                                    ["on_policy.student_server.base_url"]),
    "lora_refresh_without_lora": ({"on_policy.student_server.refresh": "lora_adapter"},
                                  ["on_policy.student_server.refresh"]),
    "full_reload_of_a_lora_student": ({"trainer.lora.enabled": "true"}, ["on_policy.student_server.refresh"]),
}  # fmt: skip


def test_a_student_server_config_loads():
    cfg = load(SERVER)
    srv = cfg.on_policy.student_server
    assert cfg.on_policy.sampler == "server" and srv.type == "vllm" and srv.refresh == "reload_weights"
    lora = load({**SERVER, "trainer.lora.enabled": "true", "on_policy.student_server.refresh": "lora_adapter"})
    assert lora.on_policy.student_server.refresh == "lora_adapter"


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_student_server_mistake_is_reported_at_its_key_with_a_fix(name):
    overrides, keys = MISTAKES[name]
    with pytest.raises(ConfigError) as ei:
        load({**SERVER, **overrides})
    assert [p.key for p in ei.value.problems] == keys
    assert all("Fix:" in p.message for p in ei.value.problems)


def test_the_teacher_url_refusal_names_the_teacher_key():
    with pytest.raises(ConfigError) as ei:
        load({**SERVER, "scorer.extra_base_urls": '["http://10.0.0.5:9000/v1"]',
              "on_policy.student_server.base_url": "http://10.0.0.5:9000/v1"})  # fmt: skip
    (p,) = ei.value.problems
    assert "scorer.extra_base_urls[0]" in p.message and "never ours to replace" in p.message


def test_a_pasted_key_is_refused_without_being_shown():
    with pytest.raises(ConfigError) as ei:
        load({**SERVER, "on_policy.student_server.api_key_var": "sk-secret123"})
    assert "sk-secret123" not in str(ei.value)
    assert "on_policy.student_server.api_key_var" in str(ei.value)
