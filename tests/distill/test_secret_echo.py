"""A server that echoes the credentials it was sent (in error messages, in answers) must not make them
reach the terminal, the recording, the samples or any other file of the run: every value read as a key
(the api_key_var's environment variable, credential headers) is masked where server text comes in
(distill.core.redact.mask_known). The hostile server is the project's FaultServer with echo_auth=True
(no real server echoes keys on purpose)."""

from __future__ import annotations

import os
from pathlib import Path

from support.fault_server import FaultServer, Faults
from test_cli_teacher_failures import distill, one_line_error, write_cfg

from distill.core import redact

KEY = "sk-echoed-SECRET-0123456789"
HEADER = "hdr-echoed-SECRET-9876543210"


def _leaks(run_dir: Path, *outputs: str) -> list[str]:
    where = [f"output {i}" for i, text in enumerate(outputs) if "SECRET" in text]
    for f in run_dir.rglob("*"):
        if f.is_file() and b"SECRET" in f.read_bytes():
            where.append(str(f.relative_to(run_dir)))
    return where


def _rollout(cfg: Path, tokenizer_dir, *extra: str):
    """`distill rollout` with the key in ECHO_TEACHER_KEY."""
    return distill(
        "rollout",
        cfg,
        "--student.tokenizer",
        tokenizer_dir,
        "--orchestrator.rollout_model.api_key_var",
        "ECHO_TEACHER_KEY",
        *extra,
        env={**os.environ, "ECHO_TEACHER_KEY": KEY},
    )


def test_a_key_echoed_in_answers_and_errors_reaches_no_output_or_file(tmp_path, smol_tokenizer_dir):
    with FaultServer(Faults(rate_500=0.3), echo_auth=True) as s:
        cfg = write_cfg(tmp_path, s.base_url, prompts=6, max_attempts=6)
        header = f'{{"X-Api-Key" = "{HEADER}"}}'
        res = _rollout(cfg, smol_tokenizer_dir, "--orchestrator.rollout_model.headers", header)
    assert res.returncode == 0, res.stderr
    assert any(e["outcome"] == "http500" for e in s.log.entries)  # errors were echoed too, and retried
    assert all(e["auth"] == f"Bearer {KEY}" for e in s.log.entries)  # the server did get the key
    run = tmp_path / "run"
    assert _leaks(run, res.stdout, res.stderr) == []
    assert res.stderr.count("held the API key or another credential of the config; it is masked") == 1  # said once
    recording = (run / "recording.jsonl").read_text()
    assert "(you sent: Bearer *** ***)" in recording  # the answers kept, both values masked


def test_a_refused_key_echoed_in_the_401_message_is_masked(tmp_path, smol_tokenizer_dir):
    with FaultServer(api_key="sk-right-key-0000", echo_auth=True) as s:
        res = _rollout(write_cfg(tmp_path, s.base_url), smol_tokenizer_dir)
    msg = one_line_error(res)
    assert "401" in msg and "you sent: Bearer ***" in msg
    assert _leaks(tmp_path / "run", res.stdout, res.stderr) == []


def test_mask_known_hides_remembered_values_only():
    redact.remember_secret("Bearer sk-unit-remembered-42")  # the bare key is remembered
    redact.remember_secret("short")  # too short to mask without garbling text
    redact.remember_secret("changeme")  # letters only: a placeholder, and a word an answer may hold
    redact.remember_headers({"Authorization": "tok-unit-header-77", "HTTP-Referer": "https://example.org/app"})
    text = "a sk-unit-remembered-42 b tok-unit-header-77 c short changeme https://example.org/app"
    assert redact.mask_known(text) == "a *** b *** c short changeme https://example.org/app"
    assert redact.mask_known_bytes(b'{"x": "sk-unit-remembered-42"}') == b'{"x": "***"}'
    assert redact.mask_known_bytes(b"nothing here") == b"nothing here"


def test_a_key_echoed_escaped_or_percent_encoded_is_masked():
    key = 'k3y/With+Slash=And"Quote'
    redact.remember_secret(key)
    redact.remember_headers({"Authorization": "Basic dXNlcjpzM2NyZXQtcGFzcw=="})
    bodies = [
        b'{"error": "bad key k3y\\/With+Slash=And\\"Quote"}',  # JSON, "/" escaped as PHP writes it
        b'{"error": "bad key k3y/With+Slash=And\\"Quote"}',  # JSON, "/" left as it is
        b"see https://host/v1?key=k3y%2FWith%2BSlash%3DAnd%22Quote",  # inside a URL
        b"bad credentials dXNlcjpzM2NyZXQtcGFzcw==",  # the credential of a `Basic` header alone
    ]
    masked = [redact.mask_known_bytes(b) for b in bodies]
    for body in masked:
        assert b"***" in body
        for piece in (b"k3y", b"dXNlcjpz"):
            assert piece not in body, body
    assert redact.mask_known('bad key k3y/With+Slash=And"Quote!') == "bad key ***!"
