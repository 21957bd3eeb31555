"""Checks of a teacher or server URL and of an API-key variable name, shared by the config sections
that name an endpoint (schema.py, schema_score.py, schema_student_server.py) and by `distill probe`.
A message never repeats a value that may be a key: a URL is shown through redact_url."""

from __future__ import annotations

import re

ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: An HTTP header name (RFC 9110 token); a value holds no line break or other control character but tab.
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` if each name is an HTTP header name and no value holds a line break or control
    character; a ValueError otherwise that shows neither a bad name nor any value (either may hold a
    key: a pasted `Authorization: Bearer sk-...` line as a name, a key copied with its newline)."""
    for i, (name, value) in enumerate(headers.items()):
        if not HEADER_NAME.match(name):
            raise ValueError(
                f"entry {i}: its name is not an HTTP header name (letters, digits and -, no space or colon; "
                "a pasted 'Name: value' line?); it is not shown, as it may hold a key. "
                'Fix: headers = {"X-Name" = "the value"}'
            )
        if _BAD_HEADER_VALUE.search(value):
            raise ValueError(
                f"{name!r}: its value holds a line break or another control character (not shown, as it may be "
                "a key; copied with its newline?). Fix: remove it"
            )
    return headers


def check_api_key_var(v: str | None, example: str, setting: str = "set api_key_var = ") -> str | None:
    """`v` if it is unset or an environment variable name; a ValueError that never repeats the value (a key
    pasted there must not reach the terminal) otherwise. `setting`: how the fix names the setting (the
    config key, or a command-line flag such as "pass --api-key-var ")."""
    if v is not None and not ENV_VAR_NAME.match(v):
        raise ValueError(
            "is not an environment variable name (letters, digits and _, not starting with a digit); the "
            "value is not shown, as it may be the API key itself, which belongs in the environment. "
            f'Fix: export {example}=<the key> and {setting}"{example}"'
        )
    return v


def check_model_name(v: str, example: str, key_var: str) -> str:
    """`v` unless it has the shape of an API key (pasted into the model's field): a ValueError that does
    not repeat it (it would reach the terminal, config.toml and every request's recording)."""
    from distill.core.redact import holds_api_key

    if holds_api_key(v):
        raise ValueError(
            "looks like an API key, not a model name; the value is not shown. Fix: set model to the name "
            f"the server serves (distill probe URL lists them), export {example}=<the key> and set "
            f'{key_var} = "{example}"'
        )
    return v


def check_run_label(v: str | None, key_goes: str) -> str | None:
    """`v` (a tracker's project or run name) unless it has the shape of an API key: a ValueError that does
    not repeat it (the name is printed, and sent to the tracker, W&B's servers included). `key_goes` says
    where the tracker reads its key instead."""
    from distill.core.redact import holds_api_key

    if v is not None and holds_api_key(v):
        raise ValueError(
            f"looks like an API key, not a name; the value is not shown. Fix: set a name here; the tracker reads "
            f"its key from {key_goes}"
        )
    return v


def check_http_urls(urls: list[str]) -> list[str]:
    """`urls` if each is a valid http(s) URL; a ValueError naming the first bad entry otherwise."""
    for i, url in enumerate(urls):
        try:
            check_http_url(url)
        except ValueError as e:
            raise ValueError(f"entry {i}: {e}") from None
    return urls


def check_http_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host, no query string or fragment, and no request path
    (`/chat/completions`) after its base; a ValueError saying what is wrong otherwise. A message shows
    the URL through redact_url: a password or a query value in it (a pasted key) is never echoed."""
    from urllib.parse import urlsplit

    from distill.core.redact import redact_url

    example = 'e.g. "http://127.0.0.1:8000/v1" or "https://api.openai.com/v1"'
    if not url.strip():
        raise ValueError(f"is empty. Fix: set it to the teacher's OpenAI-compatible base URL, {example}")
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        raise ValueError(f"{shown!r} is not a valid URL ({e}). Fix: {example}") from None
    if "@" in parts.path:
        raise ValueError(
            f"{shown!r} has an @ after its host: a password holding a raw / (as base64 keys do) cuts the URL "
            "there. Fix: percent-encode / as %2F and @ as %40 in the user name and password, or put the key in "
            "the environment variable named by api_key_var"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"{shown!r} is not a valid URL ({e}). Fix: {example}") from None
    if parts.scheme not in ("http", "https"):
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(f"{shown!r} has {got}; the teacher is reached over http(s). Fix: {example}")
    if not parts.hostname:
        raise ValueError(f"{shown!r} has no host. Fix: {example}")
    if parts.query or parts.fragment or url.strip().endswith(("?", "#")):
        what = "a query string (?...)" if parts.query or "?" in url else "a fragment (#...)"
        raise ValueError(
            f"{shown!r} has {what}, which distill cannot use: request paths (/models, /chat/completions) "
            "are appended after the base URL, and extra query parameters are not supported; the value is "
            "not shown, as it may be a key. Fix: remove it, and put an API key in the environment variable "
            "named by api_key_var (a custom header goes in headers)"
        )
    path = parts.path.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if path.endswith(tail):
            base = path[: -len(tail)]
            base = base[: base.index("/v1/") + 3] if "/v1/" in base else base
            meant = redact_url(parts._replace(path=base).geturl())
            raise ValueError(
                f"{shown!r} ends in {tail}, a request path that distill appends itself. "
                f'Fix: set it to the base URL; did you mean "{meant}"?'
            )
    return url
