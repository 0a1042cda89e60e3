"""``public_paths``: read-only probe paths served without a client key, GET/HEAD only."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.config import ConfigError, parse_config
from tests.conftest import one_model_config

HERMES_PROBES = ["/version", "/props", "/v1/props", "/api/tags", "/api/v1/models", "/v1/models",
                 "/v1/models/*", "POST /api/show"]


async def test_probe_paths_pass_without_a_key_and_nothing_else_does(mock_llm, make_proxy):
    """Hazard: each Hermes worker start probes /version, /props, /api/tags... without its key;
    every probe was a 401 and an auth-failure alert fired on every dispatch."""
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["clients"] = {"hermes": {"key": "hk"}}
    config["public_paths"] = HERMES_PROBES
    proxy = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        for path in ("/version", "/props", "/api/tags", "/v1/models", "/v1/models/mock-model"):
            async with session.get(proxy.url + path) as response:
                assert response.status == 200, path
        # measured with hermes-agent 0.19.0: one of its POST /api/show probes carries no key
        async with session.post(proxy.url + "/api/show", json={"model": "m"}) as response:
            assert response.status != 401  # passed through: the mock's own answer
        async with session.head(proxy.url + "/version") as response:
            assert response.status != 401  # passed through (the mock has no HEAD there: 405)
        # a wrong key on a probe is no worse than none; a good one is counted under its client
        async with session.get(proxy.url + "/version",
                               headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 200
        async with session.get(proxy.url + "/version",
                               headers={"Authorization": "Bearer hk"}) as response:
            assert response.status == 200
        assert proxy.proxy.metrics.requests.children[("-", "hermes", "200")].value == 1
        # not listed, or not a read: the key is still required
        for method, path in (("GET", "/health"), ("POST", "/version"), ("PUT", "/api/show"),
                             ("POST", "/v1/models"), ("GET", "/v1/chat/completions")):
            async with session.request(method, proxy.url + path, json={}) as response:
                assert response.status == 401, (method, path)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(proxy.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 401
        async with session.post(proxy.url + "/v1/chat/completions", json=body,
                                headers={"Authorization": "Bearer hk"}) as response:
            assert response.status == 200


@pytest.mark.parametrize("path", ["version", "/api/*/x", "/metrics", "/*", "/v1/models?x=1",
                                  "PUT /x", "POST /v1/chat/completions", "POST /api/*",
                                  "POST /api/chat"])
def test_bad_public_paths_are_refused(path):
    """Hazard: a public path that opens the admin routes or every path would undo the keys."""
    data = one_model_config("http://127.0.0.1:9")
    data["public_paths"] = [path]
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    assert info.value.problems[0].startswith("public_paths[0]: ")
