"""distill.core.redact.redact_url: the one helper through which every endpoint URL is shown or written."""

from __future__ import annotations

import pytest

from distill.core.config import load_config, redacted_dict, to_toml
from distill.core.redact import redact, redact_url

SECRET = "sk-proj-SECRET123abcdef"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        (f"http://user:{SECRET}@127.0.0.1:18080/v1", "http://user:***@127.0.0.1:18080/v1"),
        (f"https://{SECRET}@host/v1", "https://***@host/v1"),  # a lone user name is how tokens are passed
        (f"https://{SECRET}:x@host/v1", "https://***@host/v1"),  # a user that looks like a key
        (f"https://host/v1?api-key={SECRET}&api-version=2024", "https://host/v1?api-key=***&api-version=***"),
        (f"https://host/v1?{SECRET}", "https://host/v1?***"),
        (f"https://host/v1#access_token={SECRET}", "https://host/v1#***"),
        (f"https://host/{SECRET}/v1", "https://host/***/v1"),
        ("http://[::1/v1?k=" + SECRET, "http://***"),  # unparsable: nothing after the scheme
        ("not a url", "not a url"),
        (SECRET, "<redacted>"),
    ],
)
def test_redact_url_masks_every_credential_and_keeps_the_rest(url, shown):
    assert redact_url(url) == shown


def test_redact_masks_urls_anywhere_in_plain_data():
    got = redact({"a": [f"http://u:{SECRET}@h/v1"], "b": {"c": f"https://h/v1?key={SECRET}"}, "n": 3})
    assert got == {"a": ["http://u:***@h/v1"], "b": {"c": "https://h/v1?key=***"}, "n": 3}


def test_every_url_of_the_config_is_masked_in_dumps():
    cfg = load_config(
        None,
        {
            "orchestrator": {
                "rollout_model": {
                    "base_url": f"http://user:{SECRET}-a@127.0.0.1:18080/v1",
                    "extra_base_urls": [f"http://user:{SECRET}-b@127.0.0.1:18081/v1"],
                }
            },
            "scorer": {"type": "vllm", "base_url": f"http://user:{SECRET}-c@127.0.0.1:18082/v1"},
            "on_policy": {"student_server": {"type": "vllm", "base_url": f"http://user:{SECRET}-d@127.0.0.1:18083/v1"}},
        },
    )
    assert cfg.orchestrator.rollout_model.base_url.startswith("http://user:sk-proj")  # still used as set
    dumped = to_toml(redacted_dict(cfg))
    assert "SECRET" not in dumped
    for port in (18080, 18081, 18082, 18083):
        assert f"http://user:***@127.0.0.1:{port}/v1" in dumped


def test_an_api_key_shape_is_told_from_a_model_name():
    """looks_like_api_key refuses a key pasted as a model: the provider shapes with a random-looking run."""
    from distill.core.redact import looks_like_api_key

    from distill.core.redact import holds_api_key

    keys = [
        "sk-proj-Ab12Cd34Ef56Gh78Ij90",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz12345678",
        "ghp_0123456789abcdefABCDEF",
        "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",  # the shape of a real HF token: 34 letters, no digit
        "gsk_Ab12Cd34Ef56Gh78Ij90Kl12",
        "xai-Ab12Cd34Ef56Gh78Ij90Kl12",
        "r8_Ab12Cd34Ef56Gh78Ij90Kl12",
    ]
    names = [
        "gpt-4o-mini",
        "hf_llama_3_finetune",
        "sk-my-model-name-v2",
        "meta-llama/Llama-3.1-8B-Instruct",
        "teacher",
        "sk-MyVeryLongCamelCaseModelNameForTests",  # letters only, and not hf_: a name
        "hf_MyVeryLongCamelCaseModelNameForTestsOk",  # 38 letters: not an HF token's 34
    ]
    assert [looks_like_api_key(k) for k in keys] == [True] * len(keys)
    assert [looks_like_api_key(n) for n in names] == [False] * len(names)
    assert holds_api_key("my run sk-proj-Ab12Cd34Ef56Gh78Ij90") and not holds_api_key("my run of gpt-4o-mini")


@pytest.mark.parametrize(
    "path, holds",
    [
        ("/tmp/run-sk-proj-YV5lCyi2yobbtTVVBlG8ULqJeZ5OBdcMidgbZMTp", True),
        ("runs/x-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-v2/data.jsonl", True),
        ("a.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.jinja", True),
        ("data/sk-proj-YV5lCyi2yobbtTVVBlG8ULqJeZ5OBdcMidgbZMTp_v2.jsonl", True),
        ("runs/hf_llama_3_finetune/sk-my-model-name-v2", False),
        ("runs/Qwen2.5-1.5B-Instruct/checkpoints/step-100", False),
        ("/home/me/data/recording.jsonl", False),
    ],
)
def test_a_key_run_into_a_path_is_found(path, holds):
    from distill.core.redact import path_holds_api_key

    assert path_holds_api_key(path) is holds
