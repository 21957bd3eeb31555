"""One redactor for everything that is dumped or recorded (config dumps, the teacher recording).

    redact(obj) -> a copy of obj (dicts and lists walked recursively) where
      - every value of a `headers`-like mapping (a key whose last part is "headers") is
        "<redacted>" (header names are kept: any header can carry a credential, e.g.
        `Ocp-Apim-Subscription-Key`), and
      - the value of every secret-looking key is "<redacted>".

A key looks secret when, split into parts on `_`, `-`, `.`, spaces and camelCase
boundaries (`accessToken` -> access, token), one part is a secret word
(authorization, secret, password, cookie, bearer, apikey, credentials, ...), or the last
part is `token` (access_token, x-auth-token; not max_tokens, stop_token_ids, pad_token),
or the name ends in `<api|access|secret|private|subscription|auth|client>_key`.

A string VALUE is redacted too, whatever its key, when it looks like a credential
(`looks_like_secret`): a known key prefix (sk-..., Bearer ..., ghp_..., hf_..., AKIA...,
a JWT) or a long random token (a run of 20+ letters and digits, mixed case or hex).
A URL value (`scheme://...`) keeps its shape with its credentials masked (`redact_url`).

    redact_url(url) -> `url` as it may be shown, logged or written: the password of its userinfo
      (a lone user name, or one that looks like a key: the whole userinfo), every query value,
      the fragment and any path segment that looks like a key become "***". Every place that
      prints or writes an endpoint URL goes through it.

Stdlib only (imported by distill.core.config, which must not import torch).
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"

#: A key with any of these parts is secret.
SECRET_PARTS = frozenset(
    {
        "authorization",
        "auth",
        "secret",
        "secrets",
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "cookie",
        "cookies",
        "bearer",
        "apikey",
        "apikeys",
        "credential",
        "credentials",
        "sessionid",
        "signature",
        "xapikey",
    }
)
#: `<word>_key` is secret for these words.
KEY_OWNERS = frozenset(
    {
        "api",
        "access",
        "secret",
        "private",
        "subscription",
        "auth",
        "client",
        "encryption",
        "signing",
        "session",
        "master",
        "account",
    }
)
#: `<word>_token` is a tokenizer/sampling name, not a credential.
TOKEN_NOT_SECRET = frozenset(
    {
        "pad",
        "eos",
        "bos",
        "unk",
        "sep",
        "cls",
        "mask",
        "special",
        "stop",
        "start",
        "end",
        "think",
        "image",
        "audio",
        "video",
        "eot",
        "begin",
    }
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[_\-.\s]+")


def key_parts(name: str) -> list[str]:
    return [p for p in _SPLIT.split(_CAMEL.sub("_", str(name)).lower()) if p]


def is_secret_key(name: str) -> bool:
    """Whether a mapping key looks like it holds a credential (see the module docstring)."""
    parts = key_parts(name)
    if not parts:
        return False
    if any(p in SECRET_PARTS for p in parts):
        return True
    last = parts[-1]
    if last == "token":
        return len(parts) == 1 or parts[-2] not in TOKEN_NOT_SECRET
    if last in ("key", "keys") and len(parts) > 1 and parts[-2] in KEY_OWNERS:
        return True
    return False


def is_headers_key(name: str) -> bool:
    parts = key_parts(name)
    return bool(parts) and parts[-1] == "headers"


#: Deepest nesting redact() walks; deeper data is refused (ValueError), never a RecursionError.
MAX_DEPTH = 200

_KEY_VALUE = re.compile(
    r"^(?:(?:sk|pk|rk)[-_][A-Za-z0-9_\-]{12,}"
    r"|(?i:bearer|basic|token)\s+\S{8,}"
    r"|(?:ghp|gho|ghs|ghu|ghr|github_pat|hf|glpat|xox[abpsr]|gsk|xai|r8|pplx|nvapi)[-_][A-Za-z0-9_\-]{10,}"
    r"|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{30,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)$"
)
_TOKEN_RUN = re.compile(r"[A-Za-z0-9]{20,}")


def looks_like_api_key(value: Any) -> bool:
    """Whether a string has the shape of a provider's API key (`sk-...`, `hf_...`, a bearer token...) with a
    random-looking run in it (16+ letters and digits, both), or is a Hugging Face token (`hf_` and 34
    letters of both cases, often without a digit). The strict forms only, not looks_like_secret's
    heuristics, so that no name of a model is taken for one (`hf_llama_3_finetune` is not)."""
    if not isinstance(value, str) or not _KEY_VALUE.match(value.strip()):
        return False
    if _HF_TOKEN.match(value.strip()):
        return True
    runs = re.findall(r"[A-Za-z0-9]{16,}", value)
    return any(any(c.isdigit() for c in r) and any(c.isalpha() for c in r) for r in runs)


_HF_TOKEN = re.compile(r"^hf_(?=[A-Za-z]*[a-z])(?=[A-Za-z]*[A-Z])[A-Za-z]{34}$")


def holds_api_key(value: Any) -> bool:
    """looks_like_api_key for the value or any of its words (`my run sk-proj-...` holds one)."""
    if not isinstance(value, str):
        return False
    return looks_like_api_key(value) or any(looks_like_api_key(w) for w in re.split(r"[\s,;:'\"=()\[\]{}]+", value))


_KEY_INSIDE = re.compile(
    r"(?<![A-Za-z0-9])(?:sk|pk|rk|ghp|gho|ghs|ghu|ghr|github_pat|hf|glpat|xox[abpsr]|gsk|xai|r8|pplx|nvapi)"
    r"[-_][A-Za-z0-9_\-]{10,}"
)
_HF_INSIDE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z]{34}(?![A-Za-z])")


def keys_inside(value: Any) -> list[str]:
    """The API keys run into other text in `value` (a folder or file name: `run-sk-proj-...`, `hf_...-v2`,
    `a.hf_....jinja`), each as looks_like_api_key takes it."""
    if not isinstance(value, str):
        return []
    found = [m.group(0) for m in _KEY_INSIDE.finditer(value) if looks_like_api_key(m.group(0))]
    return found + [m.group(0) for m in _HF_INSIDE.finditer(value) if looks_like_api_key(m.group(0))]


def path_holds_api_key(value: Any) -> bool:
    """Whether any part of a path holds an API key, alone or run into other text."""
    parts = str(value).replace("\\", "/").split("/") if isinstance(value, (str, os.PathLike)) else []
    return any(holds_api_key(p) or keys_inside(p) for p in parts)


def looks_like_secret(value: Any) -> bool:
    """Whether a string value looks like a credential (see the module docstring)."""
    if not isinstance(value, str) or len(value) < 12 or len(value) > 4096:
        return False
    v = value.strip()
    if _KEY_VALUE.match(v):
        return True
    # no "/" or ":": paths, URLs and model ids with a hash in them are not keys
    if any(c.isspace() for c in v) or not re.fullmatch(r"[A-Za-z0-9_\-+=.]+", v):
        return False
    for run in _TOKEN_RUN.findall(v):
        digits, letters = any(c.isdigit() for c in run), any(c.isalpha() for c in run)
        mixed_case = any(c.islower() for c in run) and any(c.isupper() for c in run)
        is_hex = all(c in "0123456789abcdefABCDEF" for c in run)
        if digits and letters and (mixed_case or (is_hex and len(run) >= 32)):
            return True
    return False


#: What a credential inside a URL is replaced with (a URL stays readable: `http://user:***@host/v1`).
URL_MASK = "***"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(value: Any) -> bool:
    return isinstance(value, str) and bool(_URL.match(value.strip()))


def redact_url(url: str) -> str:
    """`url` with its credentials masked (see the module docstring); the scheme, host, port and path
    are kept. Not a URL (no `scheme://`): returned unchanged, or REDACTED when it looks like a key."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if not is_url(url):
        return REDACTED if looks_like_secret(url) else url
    scheme, _, rest = url.strip().partition("://")
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    if "/" in head.rpartition("@")[0]:  # `user:pass/word@host`: a password with a raw "/" reads as a path
        return redact_url(f"{scheme}://{URL_MASK}@{rest[len(head.rpartition('@')[0]) + 1 :]}")
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. a broken [IPv6] host: keep only what surely holds no credential
        return url.strip().split("://", 1)[0] + "://" + URL_MASK
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        keep_user = colon and user and not looks_like_secret(unquote(user))
        hostport = (f"{user}:{URL_MASK}" if keep_user else URL_MASK) + "@" + hostport
    path = "/".join(URL_MASK if looks_like_secret(unquote(seg)) else seg for seg in parts.path.split("/"))
    query = "&".join(
        f"{item.partition('=')[0]}={URL_MASK}" if "=" in item else URL_MASK for item in parts.query.split("&") if item
    )
    return urlunsplit((parts.scheme, hostport, path, query, URL_MASK if parts.fragment else ""))


def redact(obj: Any, _depth: int = 0) -> Any:
    """A redacted copy of plain data (dicts, lists, tuples walked; other values kept)."""
    if _depth > MAX_DEPTH and isinstance(obj, (dict, list, tuple)):
        raise ValueError(f"cannot redact data nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_key(k):
                out[k] = REDACTED
            elif isinstance(k, str) and is_headers_key(k) and isinstance(v, dict):
                out[k] = {hk: REDACTED for hk in v}
            else:
                out[k] = redact(v, _depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(x, _depth + 1) for x in obj]
    if looks_like_secret(obj):
        return REDACTED
    if is_url(obj):
        return redact_url(obj)
    return redact_text(obj) if isinstance(obj, str) else obj


#: In free text: a URL (up to a space or quote), or a word between separators (spaces, quotes, `=`, `:`,
#: brackets, commas), the unit `redact_text` tests.
_TEXT_PIECE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+|[^\s\"'=:,;{}\[\]()<>]+")


def redact_text(text: str) -> str:
    """`text` (a config value, a line of a config file) with every credential inside it redacted: each
    word that looks like a key (`--api_key=sk-...`, `note: use sk-...`) becomes REDACTED, each URL is
    `redact_url`'s. Text holding none is returned as it is."""

    def piece(m: re.Match) -> str:
        w = m.group(0)
        if is_url(w):
            return redact_url(w)
        return REDACTED if looks_like_secret(w) else w

    return _TEXT_PIECE.sub(piece, text) if isinstance(text, str) else text


#: The credential values this process has read (API keys from the environment, secret header values):
#: text a server sends back is masked of them before it is shown, logged or written (`mask_known`).
_KNOWN: set[str] = set()
#: Shorter values are not masked: "EMPTY", "none" or a one-letter key would garble ordinary text.
#: Nor are values of letters only ("changeme", "password"): placeholders for a local server, and
#: words a teacher's answer may hold, which masking would change in the training data.
MIN_MASKED_LEN = 8


_AUTH_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*\s+(\S+)$")


def _echo_forms(v: str) -> set[str]:
    """The forms a server may echo `v` in: as sent, JSON-escaped (with `/` as `\\/` too, as PHP and
    some proxies write it) and percent-encoded (a key echoed inside a URL)."""
    import json
    from urllib.parse import quote, quote_plus

    escaped = json.dumps(v)[1:-1]
    return {v, escaped, escaped.replace("/", "\\/"), quote(v, safe=""), quote_plus(v, safe="")}


def remember_secret(value: Any) -> None:
    """Note a credential value (an API key, a header value) so that `mask_known` hides it, also the
    credential alone of an `<auth-scheme> <credential>` value (`Bearer <key>`, `Basic <base64>`), in
    every form `_echo_forms` lists, wherever a server echoes it (error messages, bodies)."""
    if not isinstance(value, str):
        return
    v = value.strip()
    scheme = _AUTH_SCHEME.match(v)
    for part in (v, scheme.group(1) if scheme else ""):
        if len(part) >= MIN_MASKED_LEN and not part.isalpha():
            _KNOWN.update(_echo_forms(part))


def remember_headers(headers: dict | None) -> None:
    """Note the values of configured headers that may carry a credential: a secret-looking name
    (Authorization, X-Api-Key, ...) or a secret-looking value."""
    for name, value in (headers or {}).items():
        if is_secret_key(str(name)) or looks_like_secret(value):
            remember_secret(value)


def _url_credentials(url: str) -> list[str]:
    """The credentials a URL's userinfo carries to the server: as written and decoded (`user:password`,
    and the password alone) and in its HTTP Basic form. (A base_url with a query is refused by the config.)"""
    import base64
    from urllib.parse import unquote, urlsplit

    try:
        userinfo, at, _ = urlsplit(url.strip()).netloc.rpartition("@")
    except ValueError:
        return []
    if not at:
        return []
    plain = unquote(userinfo)
    basic = plain if ":" in plain else plain + ":"  # a lone user name is sent as `user:`
    return [userinfo, plain, plain.partition(":")[2], base64.b64encode(basic.encode()).decode()]


def remember_config(obj: Any, _depth: int = 0, _secret: bool = False) -> None:
    """Note every credential a config holds, so that `mask_known` hides it wherever a server echoes it:
    each value `redact` would hide (a secret key's, a header's, a value that looks like a key, a word in
    a longer value that does) and the credentials of each URL (`_url_credentials`)."""
    if _depth > MAX_DEPTH:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            hidden = _secret or (isinstance(k, str) and is_secret_key(k))
            if isinstance(k, str) and is_headers_key(k) and isinstance(v, dict):
                for hv in v.values():
                    remember_config(hv, _depth + 1, True)
            else:
                remember_config(v, _depth + 1, hidden)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            remember_config(x, _depth + 1, _secret)
    elif isinstance(obj, str):
        if _secret or looks_like_secret(obj):
            remember_secret(obj)
        if is_url(obj):
            for cred in _url_credentials(obj):
                remember_secret(cred)
        for w in _TEXT_PIECE.findall(obj):
            if is_url(w):
                continue
            for part in (w, *w.split("/")[1:]):  # a key pasted into a path is a folder or file name
                if looks_like_secret(part):
                    remember_secret(part)
            for key in keys_inside(w):  # run into other text: run-sk-proj-..., hf_....jinja
                remember_secret(key)


def mask_known(text: str) -> str:
    """`text` with every remembered credential value replaced by URL_MASK (longest first)."""
    if not _KNOWN or not isinstance(text, str):
        return text
    for v in sorted(_KNOWN, key=len, reverse=True):
        if v in text:
            text = text.replace(v, URL_MASK)
    return text


def mask_known_bytes(body: bytes) -> bytes:
    """`mask_known` for a raw response body (left as it is when it holds no remembered value)."""
    if not _KNOWN:
        return body
    found = [v.encode() for v in _KNOWN if v.encode() in body]
    for v in sorted(found, key=len, reverse=True):
        body = body.replace(v, URL_MASK.encode())
    return body
