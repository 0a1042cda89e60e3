"""Admission by default: no path, spelling or engine route gets work past the limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.raw_upstream import RawUpstream, Reply, Seen, replies

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
CHAT_ANSWER = {"id": "x", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def capped_config(url: str, *, wildcard: bool = False, **top: Any) -> dict[str, Any]:
    """One upstream, model ``m`` capped at one request at once (and ``*`` with it, if asked)."""
    models: dict[str, Any] = {"m": {"upstreams": ["up"], "max_in_flight": 1}}
    if wildcard:
        models["*"] = {"upstreams": ["up"], "max_in_flight": 1}
    return {"upstreams": {"up": {"url": url}}, "models": models, **top}


async def post_many(url: str, n: int, body: bytes) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*[one() for _ in range(n)])


def holding(seen: Seen) -> Reply:
    return Reply.json(CHAT_ANSWER, hold_s=0.15)


@pytest.mark.parametrize("suffix", [";x", "%23x", "%3Bx", "/", ";"])
async def test_path_spellings_are_admitted_never_more_than_the_cap_at_once(make_proxy, suffix):
    """Hazard: ``/v1/chat/completions;x`` (or ``%23x``) looked like an unknown path and was
    passed through unadmitted, while a permissive upstream served it as a chat completion:
    with a cap of 1, six ran at once on the upstream."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        statuses = await post_many(proxy.url + "/v1/chat/completions" + suffix, 6,
                                   json.dumps(CHAT).encode())
        assert statuses == [200] * 6
        assert len(upstream.seen) == 6
        assert upstream.peak == 1


@pytest.mark.parametrize("target", ["/v1/chat/completions#x", "/v1/completions#y",
                                    "/chat/completions#"])
async def test_a_fragment_is_refused_before_anything_is_forwarded(make_proxy, target):
    """Hazard: the upstream drops ``#x`` and serves the chat completion the proxy did not
    admit; the proxy now refuses any target with ``#``."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
        body = json.dumps(CHAT).encode()
        writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (target.encode(), len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert b'"invalid_path"' in answer
        assert upstream.seen == []


ENGINE_ROUTES = ["/completion", "/completions", "/infill", "/embedding", "/rerank",
                 "/v1/rerank", "/v1/messages", "/v1/audio/speech", "/v1/images/generations",
                 "/api/chat", "/api/generate", "/something/new"]


@pytest.mark.parametrize("path", ENGINE_ROUTES)
async def test_engine_routes_are_admitted(make_proxy, path):
    """Hazard: llama.cpp's own routes (``/completion``, ``/infill``, ``/rerank``, Anthropic-style
    ``/v1/messages``) and any route the proxy did not know were passed through: six
    ``/completion`` requests ran at once with the proxy showing 0 in flight."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        body = json.dumps({"model": "m", "prompt": "hi", "n_predict": 4, "stream": False})
        statuses = await post_many(proxy.url + path, 4, body.encode())
        assert statuses == [200] * 4
        assert upstream.peak == 1


async def test_a_body_without_model_goes_to_the_wildcard_route(make_proxy):
    """llama-server answers requests that name no model; they are admitted under ``*``."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url, wildcard=True))
        statuses = await post_many(proxy.url + "/completion", 4, b'{"prompt": "hi"}')
        assert statuses == [200] * 4
        assert upstream.peak == 1
        # not even JSON, on a route of no known family: admitted as model-less too
        statuses = await post_many(proxy.url + "/v1/audio/transcriptions", 3, b"\x00binary")
        assert statuses == [200] * 3
        assert upstream.peak == 1
        assert upstream.seen[-1].body == b"\x00binary"


async def test_a_body_without_model_is_400_without_a_wildcard(make_proxy):
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/completion", json={"prompt": "hi"}) as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "missing_model"
            async with session.post(proxy.url + "/v1/chat/completions", data=b"{nope") as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "invalid_json"
        assert upstream.seen == []


async def test_passthrough_paths_and_probes_need_no_permit(make_proxy):
    """The cheap routes (``/tokenize`` ...) and GET probes are not held to the model cap."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        statuses = await post_many(proxy.url + "/tokenize", 4, b'{"content": "hi"}')
        assert statuses == [200] * 4
        assert upstream.peak > 1
        upstream.peak = 0
        # a configured list replaces the default: /tokenize is then admitted
        other = await make_proxy(capped_config(upstream.url, passthrough_paths=["/props"]))
        statuses = await post_many(other.url + "/tokenize", 4, b'{"model": "m"}')
        assert statuses == [200] * 4
        assert upstream.peak == 1


async def test_passthrough_is_matched_on_the_normalized_path(make_proxy):
    """``/tok%65nize`` is ``/tokenize`` to the upstream, and to the proxy; ``/tokenize;x`` is
    another path (admitted), since upstreams differ on what ``;`` means."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        assert await post_many(proxy.url + "/tok%65nize", 3, b"{}") == [200] * 3
        assert upstream.seen[-1].target == "/tokenize"
        assert upstream.peak > 1
        upstream.peak = 0
        statuses = await post_many(proxy.url + "/tokenize;x", 3, b'{"model": "m"}')
        assert statuses == [200] * 3
        assert upstream.peak == 1


async def test_a_multipart_upload_is_admitted_under_its_model(make_proxy):
    """OpenAI's audio uploads are ``multipart/form-data`` with a ``model`` field: they are
    held to that model's cap (no ``*`` needed), and the file part reaches the upstream as is."""
    async with RawUpstream(replies(holding)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url))
        async with aiohttp.ClientSession() as session:

            async def upload() -> int:
                form = aiohttp.FormData()
                form.add_field("model", "m")
                form.add_field("file", b"RIFF\x00\x01audio", filename="a.wav",
                               content_type="audio/wav")
                async with session.post(proxy.url + "/v1/audio/transcriptions",
                                        data=form) as response:
                    await response.read()
                    return response.status

            assert await asyncio.gather(*[upload() for _ in range(3)]) == [200] * 3
        assert upstream.peak == 1
        assert b"RIFF\x00\x01audio" in upstream.seen[0].body


def test_passthrough_paths_and_access_log_are_validated():
    from proxy.config import ConfigError, parse_config

    base = {"upstreams": {"up": {"url": "http://127.0.0.1:1"}},
            "models": {"m": {"upstreams": ["up"]}}}
    config = parse_config({**base, "passthrough_paths": ["/tok%65nize", "/props"]}, environ={})
    assert config.passthrough_paths == frozenset({"/tokenize", "/props"})
    assert "/tokenize" in parse_config(base, environ={}).passthrough_paths
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "passthrough_paths": ["tokenize", "/a#b"],
                      "access_log": {"enabled": "yes", "format": "xml", "colour": 1}},
                     environ={})
    text = str(info.value)
    # a keyless POST may only be a pass-through one: every other POST is admitted
    assert parse_config({**base, "clients": {"a": {"key": "k"}},
                         "public_paths": ["POST /api/show"]}, environ={}).public_paths
    with pytest.raises(ConfigError) as public:
        parse_config({**base, "clients": {"a": {"key": "k"}},
                      "public_paths": ["POST /completion"]}, environ={})
    assert "public_paths[0]: 'POST /completion': a POST that is admitted" in str(public.value)
    for problem in ("passthrough_paths[0]", "passthrough_paths[1]", "access_log.enabled",
                    "access_log.format", "access_log.colour: unknown key"):
        assert problem in text, problem


async def test_engine_requests_show_in_flight_and_queued(make_proxy):
    """Hazard: with 6 ``/completion`` requests running, the proxy showed 0 in flight (and
    llama-server queued them itself); now the proxy holds and queues them."""
    answer = Reply.json({"content": "ok"}, hold_s=0.5)
    async with RawUpstream(replies(lambda seen: answer)) as upstream:
        proxy = await make_proxy(capped_config(upstream.url, wildcard=True))
        task = asyncio.create_task(post_many(proxy.url + "/completion", 6, b'{"prompt": "x"}'))
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(proxy.url + "/throttle/status") as response:
                    doc = await response.json()
                if doc["queue"]["depth"] == 5:
                    break
                await asyncio.sleep(0.02)
        assert doc["models"]["*"]["in_flight"] == 1 and doc["queue"]["depth"] == 5
        assert await task == [200] * 6
        assert upstream.peak == 1
