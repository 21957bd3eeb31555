"""Endpoint check: can the teacher endpoint be used at all? Checked before the first paid request
(skipped when a rerun has nothing left to ask: orchestrator/resume.py). Not `distill/preflight.py`,
the CLI's checks of the config and files.

    check_endpoints(rollout_model, api_key)    raises EndpointCheckError with one message naming the key

For every endpoint (base_url, then each of extra_base_urls) one `GET {url}/models`
with a short timeout:

- no connection (refused, DNS, timeout)  -> error naming the key and the URL tried
- 401 / 403                              -> the API key was refused (the env var named by
                                            orchestrator.rollout_model.api_key_var; never the key)
- 404 and the URL does not end in /v1    -> if {url}/v1/models answers, "did you mean .../v1?"
- 200 listing models without ours        -> error naming the model and some listed ones
- anything else (a 404 on a /v1 URL, 5xx, a body that lists nothing): the endpoint may simply not
  implement /models; the run goes on and the chat requests decide (retries, max_failed_fraction).
"""

from __future__ import annotations

import openai

from distill.core.redact import redact_url
from orchestrator.http_client import UNREADABLE, endpoint_client

TIMEOUT_S = 10.0
_KEY = "orchestrator.rollout_model"


class EndpointCheckError(RuntimeError):
    """The teacher endpoint cannot be used; the message says which key, what was tried, and the fix."""


def v1_hint(url: str) -> str:
    """ " (did you mean URL/v1?)" when `url` does not end in /v1, else ""."""
    u = redact_url(url).rstrip("/")
    return "" if u.endswith("/v1") else f" (did you mean {u}/v1? OpenAI-compatible servers serve under /v1)"


def refusal_fix(status: int | None, rm) -> str:
    """The fix for a chat request the teacher refused with `status` (config RolloutModel `rm`), after
    the start-up check of /models passed: which key to change."""
    if status in (401, 403):
        var = rm.api_key_var
        return (
            f". Fix: export a valid key in the environment variable {var} (orchestrator.rollout_model.api_key_var), "
            "or check that this key may use the model"
            if var
            else ". Fix: set orchestrator.rollout_model.api_key_var to the environment variable holding the API key"
        )
    if status == 402:
        return ". Fix: add credit or raise the spending limit of this account at the provider"
    if status == 404:
        return (
            f". Fix: check orchestrator.rollout_model.model ({rm.model!r}) and base_url "
            f"({redact_url(rm.base_url)!r}){v1_hint(rm.base_url)}"
        )
    if status in (400, 422):
        return (
            ". Fix: the teacher refused the request's shape: check orchestrator.sampling and "
            "orchestrator.sampling.extra_body against what it accepts (`distill probe URL --model M` lists it)"
        )
    return ""


def check_endpoints(rm, api_key: str, timeout: float = TIMEOUT_S) -> None:
    """Checks each endpoint of `rm` (config RolloutModel); raises EndpointCheckError on the first unusable one."""
    urls = [(f"{_KEY}.base_url", rm.base_url)]
    urls += [(f"{_KEY}.extra_base_urls[{i}]", u) for i, u in enumerate(rm.extra_base_urls)]
    for key, url in urls:
        check_endpoint(key, url, rm.model, api_key, rm.api_key_var, rm.headers, min(timeout, rm.timeout))


def _get_models(url: str, api_key: str, headers: dict, timeout: float):
    """(status, body or None) of GET {url}/models; openai.APIConnectionError when there is no answer."""
    with endpoint_client(url, api_key, headers=headers, timeout=timeout, sync=True) as client:
        try:
            raw = client.models.with_raw_response.list()
        except openai.APIStatusError as e:
            return e.status_code, _json(e.response)
        except UNREADABLE:  # a body too large or undecodable: no list to check, the chat requests decide
            return 0, None
        return raw.http_response.status_code, _json(raw.http_response)


def check_endpoint(
    key: str, url: str, model: str, api_key: str, api_key_var: str | None, headers: dict, timeout: float
) -> None:
    where = f"{key} = {redact_url(url)!r}"
    models_url = redact_url(url).rstrip("/") + "/models"
    try:
        status, body = _get_models(url, api_key, headers, timeout)
    except openai.APIConnectionError as e:
        raise EndpointCheckError(
            f"cannot reach the teacher: {where}; GET {models_url} failed ({_why(e)}). Fix: start the teacher "
            f"server, or correct the URL (scheme, host, port, path){v1_hint(url)}"
        ) from None
    if status in (401, 403):
        who = (
            f"the API key from the environment variable {api_key_var} (orchestrator.rollout_model.api_key_var)"
            if api_key_var
            else "the request without an API key (orchestrator.rollout_model.api_key_var is not set)"
        )
        raise EndpointCheckError(
            f"the teacher refused {who}: GET {models_url} answered HTTP {status} ({_message(body)}); {where}. "
            "Fix: export a valid key in that variable, or set api_key_var to the variable that holds it"
        )
    if status == 404 and v1_hint(url) and _answers(url.rstrip("/") + "/v1", api_key, headers, timeout):
        raise EndpointCheckError(
            f"the teacher has no OpenAI API at {where}: GET {models_url} answered 404"
            f"{v1_hint(url)}. Fix: set it to {redact_url(url).rstrip('/')}/v1"
        )
    if status != 200:
        return  # /models not implemented (or not now): the chat requests decide
    ids = _model_ids(body)
    if ids and model not in ids:
        shown = ", ".join(repr(i) for i in ids[:10]) + (f" (and {len(ids) - 10} more)" if len(ids) > 10 else "")
        raise EndpointCheckError(
            f"the teacher at {where} does not serve the model {model!r} (orchestrator.rollout_model.model); "
            f"it lists {shown}. Fix: set orchestrator.rollout_model.model to one of them"
        )


def _answers(url: str, api_key: str, headers: dict, timeout: float) -> bool:
    try:
        return _get_models(url, api_key, headers, timeout)[0] == 200
    except openai.APIConnectionError:
        return False


def _json(response):
    try:
        return response.json()
    except (ValueError, *UNREADABLE):
        return None


def _model_ids(body) -> list[str]:
    """Model ids of an OpenAI-style list ({"data": [{"id": ...}]}); [] when the body is not one."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return []
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id") is not None]


def _message(body) -> str:
    e = body.get("error", body) if isinstance(body, dict) else body
    msg = e.get("message") if isinstance(e, dict) else e
    return str(msg)[:200] if msg is not None else "no message"


def _why(e: openai.APIConnectionError) -> str:
    if isinstance(e, openai.APITimeoutError):
        return "no answer within the timeout"
    cause = e.__cause__
    while cause is not None and cause.__cause__ is not None and not str(cause):
        cause = cause.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
