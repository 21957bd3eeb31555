"""A credential a user puts where no key belongs (a URL's userinfo, extra_body, a header, a word inside
extra_args, a config line with a syntax error, a key pasted as api_key_var that happens to be a valid
variable name) is neither written to a dump nor shown in a message, and is masked wherever a server
echoes it back (distill.core.redact: remember_config, redact_text, mask_known)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from distill.core import redact
from distill.core.config import ConfigError, load_config, redacted_dict, to_toml, unset_key_fix
from distill.core.config.url_checks import check_headers, check_http_url

ROOT = Path(__file__).resolve().parents[2]
S = "SECRET123456789"


def test_every_credential_of_a_loaded_config_is_masked_when_echoed():
    load_config(
        None,
        {
            "orchestrator": {
                "rollout_model": {
                    "base_url": f"http://user:sk-url-{S}@127.0.0.1:9/v1",
                    "headers": {"X-Functions-Key": "3f2a9c1e-7b4d-4e8a-9f21-0c5d6e7a8b9c"},
                },
                "sampling": {"extra_body": {"user": f"sk-body-{S}", "metadata": {"note": f"use sk-note-{S}"}}},
                "local_teacher": {"extra_args": [f"--api_key=sk-arg-{S}"]},
            }
        },
    )
    basic = base64.b64encode(f"user:sk-url-{S}".encode()).decode()
    echoed = f"Basic {basic} | user:sk-url-{S} | sk-body-{S} | sk-note-{S} | sk-arg-{S} | 3f2a9c1e-7b4d-4e8a-9f21-0c5d6e7a8b9c"
    masked = redact.mask_known(echoed)
    assert S not in masked and basic not in masked and "3f2a9c1e" not in masked, masked
    assert redact.mask_known("max_tokens 512 and the model teacher") == "max_tokens 512 and the model teacher"


def test_a_key_inside_a_longer_value_is_redacted_in_dumps():
    cfg = load_config(
        None,
        {
            "orchestrator": {
                "local_teacher": {"extra_args": [f"--api_key=sk-arg-{S}", "--n_batch", "256"]},
                "sampling": {"extra_body": {"metadata": {"note": f"use key sk-note-{S} please"}}},
            }
        },
    )
    dumped = to_toml(redacted_dict(cfg))
    assert S not in dumped
    assert '"--api_key=<redacted>"' in dumped and '"--n_batch"' in dumped and "use key <redacted> please" in dumped


@pytest.mark.parametrize(
    "line",
    [
        f"api_key_var = sk-test-{S}",  # unquoted
        f'headers = {{"Authorization" = "Bearer sk-test-{S}"',  # an unclosed table
        f'base_url = "http://user:sk-test-{S}@127.0.0.1:9/v1',  # an unterminated string
    ],
)
def test_a_toml_syntax_error_shows_its_line_without_the_key(tmp_path, line):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[orchestrator.rollout_model]\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert S not in str(e.value) and "line 2" in str(e.value), str(e.value)


@pytest.mark.parametrize("var", [f"sk_test_{S}", "Xk3bT9qLm2Vp7Rz4Wn8Yc1Hd5Fg6Js0A"])
def test_an_unset_api_key_var_that_looks_like_a_key_is_not_repeated(var):
    said = unset_key_fix(var)
    assert var not in said and "looks like an API key itself" in said and "Fix:" in said
    assert "OPENAI_API_KEY" in unset_key_fix("OPENAI_API_KEY")  # an ordinary name is named


def test_probe_with_a_key_as_its_api_key_var_does_not_print_it():
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "probe",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--api-key-var",
            f"sk_live_{S}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and S not in res.stdout + res.stderr and "looks like an API key" in res.stderr


@pytest.mark.parametrize(
    "headers",
    [{f"Authorization: Bearer sk-test-{S}": ""}, {"X-Key": f"sk-test-{S}\n"}, {"X-Key": f"a\r\nX-Evil: {S}"}],
)
def test_a_header_name_or_value_that_cannot_be_sent_is_refused_without_showing_it(headers):
    with pytest.raises(ValueError) as e:
        check_headers(headers)
    assert S not in str(e.value) and "Fix:" in str(e.value)
    with pytest.raises(ConfigError) as ce:
        load_config(None, {"orchestrator": {"rollout_model": {"headers": headers}}})
    assert S not in str(ce.value) and "headers" in str(ce.value)


def test_a_url_password_with_a_raw_slash_is_refused_and_never_shown():
    for url in (f"http://u:ab/{S}@127.0.0.1:1/v1", f"http://user:123/{S}@127.0.0.1:1/v1"):
        assert redact.redact_url(url) == "http://***@127.0.0.1:1/v1"
        with pytest.raises(ValueError) as e:
            check_http_url(url)
        assert S not in str(e.value) and "u:ab" not in str(e.value) and "%2F" in str(e.value)


@pytest.mark.parametrize("key", ["sk-test-SECRET123456789\u201d", "sk-test-SECRET123456789\n"])
def test_a_key_with_a_character_no_header_can_carry_is_one_line_without_the_key(tmp_path, key):
    import os

    res = subprocess.run(
        [sys.executable, "-m", "distill", "probe", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-var", "QA_KEY"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "QA_KEY": key},
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr and S not in res.stdout + res.stderr, res.stderr
    assert "QA_KEY whose value holds" in res.stderr and "position 24 of 24" in res.stderr
