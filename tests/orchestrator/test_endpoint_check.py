"""check_endpoints() against a closed port and FaultServers: what blocks a run before any paid request, what does not."""

from __future__ import annotations

import socket

import pytest

from distill.core.config import load_config
from orchestrator.endpoint_check import EndpointCheckError, check_endpoints
from support.fault_server import FaultServer


def rollout_model(**rm):
    return load_config(
        None, {"orchestrator": {"rollout_model": {"model": "fault-teacher", **rm}}}
    ).orchestrator.rollout_model


def test_credentials_in_the_url_are_masked():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(EndpointCheckError) as ei:
        check_endpoints(rollout_model(base_url=f"http://user:hunter2@127.0.0.1:{port}/v1"), "k")
    assert "hunter2" not in str(ei.value) and f"***@127.0.0.1:{port}/v1" in str(ei.value)


def test_an_endpoint_without_a_models_list_does_not_block():
    with FaultServer(list_models=False) as s:
        check_endpoints(rollout_model(base_url=s.base_url), "k")  # 404 on a /v1 URL: the chat requests decide
        assert s.model_requests == 0 and s.log.entries == []


def test_extra_endpoints_are_checked_and_named():
    with FaultServer() as good, FaultServer(model="other") as other:
        with pytest.raises(EndpointCheckError, match=r"extra_base_urls\[0\].*does not serve the model 'fault-teacher'"):
            check_endpoints(rollout_model(base_url=good.base_url, extra_base_urls=[other.base_url]), "k")
        check_endpoints(rollout_model(base_url=good.base_url, extra_base_urls=[good.base_url]), "k")
