"""Access control through the live proxy: keys, admin surface, secrets, no open proxy."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp
import openai
import pytest
from aiohttp import web

from loadtest.processes import free_port
from tests.conftest import one_model_config

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def test_key_sha256_authenticates_without_the_secret_in_config(
        mock_llm, make_proxy, openai_client):
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["clients"] = {"w": {"key_sha256": hashlib.sha256(b"s3cret").hexdigest()}}
    proxy = await make_proxy(config)
    assert (await openai_client(proxy.url, key="s3cret").chat.completions.create(**CHAT)).choices
    with pytest.raises(openai.AuthenticationError):
        await openai_client(proxy.url, key="s3cret-not").chat.completions.create(**CHAT)


async def test_headers_cannot_raise_priority_or_escape_key_limits(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url)
    config["clients"] = {"w": {"key": "wk", "priority": "batch", "max_in_flight": 1}}
    config["attribution"] = {"header": "x-hermes-profile", "max_in_flight": 5,
                             "priority_header": "x-priority"}
    proxy = await make_proxy(config)
    headers = {"Authorization": "Bearer wk", "x-priority": "interactive",
               "x-mock-fault": "delay:0.3"}
    async with aiohttp.ClientSession() as session:
        calls = [session.post(proxy.url + "/v1/chat/completions", json=CHAT,
                              headers={**headers, "x-hermes-profile": f"p{i}"})
                 for i in range(4)]
        responses = await asyncio.gather(*calls)
        for response in responses:
            assert response.status == 200
            response.close()
    assert mock.state.peak == 1  # the key's cap of 1 held although each profile allows 5
    identity = proxy.proxy.auth.authenticate({"Authorization": "Bearer wk",
                                              "x-priority": "interactive"})
    assert identity.priority.name == "BATCH"
    lowered = proxy.proxy.auth.authenticate({"Authorization": "Bearer wk", "x-priority": "batch",
                                             "x-hermes-profile": "coder"})
    assert lowered.label == "w/coder" and "attr:w/coder" in lowered.resources


async def test_admin_key_protects_status_and_metrics(mock_llm, make_proxy):
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["admin_key"] = "adm"
    proxy = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        for path in ("/throttle/status", "/metrics"):
            async with session.get(proxy.url + path) as response:
                assert response.status == 401
            async with session.get(proxy.url + path,
                                   headers={"Authorization": "Bearer adm"}) as response:
                assert response.status == 200


async def test_healthz_is_behind_the_admin_key_or_on_the_admin_listener(mock_llm, make_proxy):
    """Hazard: docs/security.md put ``/healthz`` behind ``admin_key`` but it answered anyone
    (and named the store). With a key set it needs the key; a probe that cannot send one
    uses ``admin_listen``, where it needs none (and the main listener has no /healthz)."""
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["admin_key"] = "adm"
    keyed = await make_proxy(config)
    admin_port = free_port()
    config = {**config, "admin_listen": f"127.0.0.1:{admin_port}"}
    apart = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(keyed.url + "/healthz") as response:
            assert response.status == 401
        async with session.get(keyed.url + "/healthz",
                               headers={"Authorization": "Bearer adm"}) as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with session.get(apart.url + "/healthz") as response:
            assert response.status == 404
        async with session.get(f"http://127.0.0.1:{admin_port}/healthz") as response:
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
            assert response.status == 401  # only the probe goes without the key


async def test_admin_listener_is_separate(mock_llm, make_proxy):
    mock = await mock_llm()
    admin_port = free_port()
    config = one_model_config(mock.url)
    config["admin_listen"] = f"127.0.0.1:{admin_port}"
    proxy = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/throttle/status") as response:
            assert response.status == 404
        async with session.get(proxy.url + "/metrics") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        admin = f"http://127.0.0.1:{admin_port}"
        async with session.get(admin + "/throttle/status") as response:
            assert response.status == 200
        async with session.post(admin + "/v1/chat/completions", json=CHAT) as response:
            assert response.status == 404  # no proxying from the admin listener
        async with session.post(proxy.url + "/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200


async def test_upstream_key_never_reaches_client_logs_or_metrics(mock_llm, make_proxy, caplog):
    caplog.set_level(logging.DEBUG)
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["upstreams"]["up"]["api_key"] = "UPSTREAM-SECRET"
    config["clients"] = {"w": {"key": "CLIENT-SECRET"}}
    proxy = await make_proxy(config)
    seen = []
    async with aiohttp.ClientSession() as session:
        for path, body, headers in [
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer CLIENT-SECRET"}),
            ("/v1/chat/completions", {**CHAT, "model": "zz"},
             {"Authorization": "Bearer CLIENT-SECRET"}),
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer CLIENT-SECRET",
                                            "x-mock-fault": "die-mid-stream"}),
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer WRONG"}),
        ]:
            async with session.post(proxy.url + path, json=body, headers=headers) as response:
                seen.append(str(response.headers) + (await response.text()))
        async with session.get(proxy.url + "/metrics") as response:
            seen.append(await response.text())
        async with session.get(proxy.url + "/throttle/status") as response:
            seen.append(await response.text())
    seen.append(caplog.text)
    for text in seen:
        assert "UPSTREAM-SECRET" not in text and "CLIENT-SECRET" not in text


async def test_absolute_form_and_connect_never_reach_another_host(mock_llm, make_proxy):
    mock = await mock_llm()
    hits: list[str] = []

    async def evil_handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="evil")

    evil = web.Application()
    evil.router.add_route("*", "/{tail:.*}", evil_handler)
    runner = web.AppRunner(evil)
    await runner.setup()
    evil_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", evil_port).start()
    proxy = await make_proxy(one_model_config(mock.url))
    port = int(proxy.url.rsplit(":", 1)[1])
    try:
        for line in (f"GET http://127.0.0.1:{evil_port}/x HTTP/1.1",
                     f"CONNECT 127.0.0.1:{evil_port} HTTP/1.1",
                     f"GET //127.0.0.1:{evil_port}/x HTTP/1.1",
                     "GET /v1/../../x HTTP/1.1", "GET /v1/%2e%2e/x HTTP/1.1"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(line.encode() + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = (await reader.read()).split(b"\r\n", 1)[0]
            writer.close()
            assert status_line.split()[1] in (b"400", b"404", b"405"), (line, status_line)
    finally:
        await runner.cleanup()
    assert hits == []
    assert mock.state.requests_by_path.get("/x", 0) == 0
