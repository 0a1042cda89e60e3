"""Errors look like OpenAI's, with the right status, and never leak a permit."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from loadtest.processes import free_port
from tests.conftest import one_model_config

CHAT = "/v1/chat/completions"
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def post(url: str, data: bytes | None = None, json_body=None, headers=None):
    async with aiohttp.ClientSession() as session, session.post(
            url, data=data, json=json_body, headers=headers) as response:
        return response.status, response.headers, await response.read()


def error_of(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize("payload,code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"\xff\xfe\x00garbage", "invalid_json"),
    (json.dumps({"messages": []}).encode(), "missing_model"),
    (json.dumps({"model": 42}).encode(), "invalid_value"),
    (json.dumps({"model": "m", "max_tokens": "a lot"}).encode(), "invalid_value"),
    (json.dumps({"model": "m", "max_tokens": -1}).encode(), "invalid_value"),
    (json.dumps({"model": "m", "stream": "yes"}).encode(), "invalid_value"),
    (json.dumps({"model": "m", "stream": True, "stream_options": 3}).encode(), "invalid_value"),
])
async def test_bad_body_is_400(mock_llm, make_proxy, payload, code):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=1))
    status, _, body = await post(proxy.url + CHAT, data=payload,
                                 headers={"Content-Type": "application/json"})
    assert status == 400
    error = error_of(body)
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert mock.state.started == 0


async def test_bad_key_is_401_and_missing_key_too(mock_llm, make_proxy, openai_client):
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["clients"] = {"w": {"key": "right"}}
    proxy = await make_proxy(config)
    with pytest.raises(openai.AuthenticationError) as info:
        await openai_client(proxy.url, key="wrong").chat.completions.create(**GOOD)
    assert info.value.status_code == 401
    status, _, body = await post(proxy.url + CHAT, json_body=GOOD)
    assert status == 401 and error_of(body)["code"] == "missing_api_key"
    ok = await openai_client(proxy.url, key="right").chat.completions.create(**GOOD)
    assert ok.choices


async def test_unknown_model_is_404(mock_llm, make_proxy, openai_client):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url))
    with pytest.raises(openai.NotFoundError) as info:
        await openai_client(proxy.url).chat.completions.create(**{**GOOD, "model": "nope"})
    assert info.value.body["code"] == "model_not_found"


async def test_body_too_large_is_413_before_reading_it(mock_llm, make_proxy):
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["max_body_bytes"] = 1000
    proxy = await make_proxy(config)
    status, _, body = await post(proxy.url + CHAT, json_body={**GOOD, "pad": "x" * 5000})
    assert status == 413 and error_of(body)["code"] == "request_too_large"

    async def chunked():
        for _ in range(10):
            yield b"x" * 500

    status, _, body = await post(proxy.url + CHAT, data=chunked())
    assert status == 413


async def test_upstream_refusing_connections_is_502_quickly(make_proxy, openai_client):
    proxy = await make_proxy(one_model_config(f"http://127.0.0.1:{free_port()}",
                                              max_in_flight=1))
    for _ in range(3):  # the permit comes back every time
        with pytest.raises(openai.APIStatusError) as info:
            await openai_client(proxy.url).chat.completions.create(**GOOD)
        assert info.value.status_code == 502
        assert info.value.body["code"] == "upstream_unreachable"


async def test_upstream_never_answering_is_504(mock_llm, make_proxy, openai_client):
    mock = await mock_llm()
    config = one_model_config(mock.url, max_in_flight=1)
    config["upstreams"]["up"]["read_timeout_s"] = 0.3
    proxy = await make_proxy(config)
    client = openai_client(proxy.url, default_headers={"x-mock-fault": "hang"})
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(**GOOD)
    assert info.value.status_code == 504
    await mock.state.wait_until(lambda s: s.in_flight == 0, timeout=2)


@pytest.mark.parametrize("fault,status", [("refuse-429:2", 429), ("unavailable-503", 503)])
async def test_upstream_throttling_is_passed_on_with_its_headers(mock_llm, make_proxy, fault,
                                                                 status):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=1))
    got, headers, _ = await post(proxy.url + CHAT, json_body=GOOD,
                                 headers={"x-mock-fault": fault})
    assert got == status
    if status == 429:
        assert headers["retry-after"] == "2"
    metrics = (await proxy.proxy.admin.handle_metrics(None)).body.decode()
    assert f'llm_throttle_upstream_errors_total{{reason="{status}",upstream="up"}} 1.0' in metrics


async def test_stream_failing_after_first_byte_ends_with_sse_error(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0.01)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=1, tokens_per_minute=6000,
                                              burst_s=10))
    status, _, body = await post(proxy.url + CHAT, json_body={**GOOD, "stream": True,
                                                              "max_tokens": 50},
                                 headers={"x-mock-fault": "die-mid-stream"})
    assert status == 200
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert events[0].startswith("data: {")
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_unreachable"
    await proxy.proxy.store.drain()
    level = (await proxy.proxy.status_json())["buckets"]["tpm:model:m"]["level"]
    # charged what was generated (a few chunks), not the 50 + prompt reservation
    assert 1000 - level < 40, level
