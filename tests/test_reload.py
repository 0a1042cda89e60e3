"""SIGHUP reload on a real proxy process: caps, clients and queue bounds change live; what
cannot change (listen) is refused with a log line and the old configuration stays."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import yaml

from loadtest.processes import free_port
from tests.cli_proxy import hold_and_queue, kill_if_running, read_until, start_cli_proxy

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_sighup_reloads_caps_and_clients_without_dropping_requests(
        store_kind, request, mock_llm, tmp_path):
    """Hazard: a reload that drops or re-admits requests in flight, leaves queued ones waiting
    under the old cap, or needs a restart to take a new client key."""
    mock = await mock_llm(ttft_s=0, tpot_s=0.1, output_tokens=15)
    store = "memory" if store_kind == "memory" else request.getfixturevalue("redis_store_url")
    config = {
        "listen": f"127.0.0.1:{free_port()}", "store": store,
        "upstreams": {"up": {"url": mock.url}},
        "models": {"m": {"upstreams": ["up"], "max_in_flight": 1}},
    }
    process, url = await start_cli_proxy(config, tmp_path)
    path = tmp_path / "throttle.yaml"
    try:
        async with aiohttp.ClientSession() as session:
            first, queued = await hold_and_queue(session, url, BODY)
            config["models"]["m"]["max_in_flight"] = 3
            config["queue"] = {"max_depth": 50}
            config["clients"] = {"alice": {"key": "alice-key"}}
            path.write_text(yaml.safe_dump(config))
            process.send_signal(signal.SIGHUP)
            await read_until(process, b"configuration reloaded")
            responses = await asyncio.wait_for(asyncio.gather(*queued), 5)
            assert [r.status for r in responses] == [200, 200]
            await mock.state.wait_until(lambda s: s.in_flight == 3, timeout=5)
            for response in [first, *responses]:
                text = (await asyncio.wait_for(response.read(), 10)).decode()
                chunks = [e for e in text.split("\n\n") if e.startswith("data: {")]
                assert len(chunks) == 16 and all("error" not in json.loads(c[6:]) for c in chunks)
            assert mock.state.started == 3  # nothing re-admitted, nothing dropped
            async with session.post(url + "/v1/chat/completions", json=BODY) as r:
                assert r.status == 401  # the new client list applies at once
            async with session.get(url + "/throttle/status",
                                   headers={"Authorization": "Bearer alice-key"}) as r:
                doc = await r.json()
            assert doc["models"]["m"]["cap"] == 3 and doc["queue"]["max_depth"] == 50

            moved = {**config, "listen": f"127.0.0.1:{free_port()}"}
            moved["models"] = {"m": {"upstreams": ["up"], "max_in_flight": 7}}
            path.write_text(yaml.safe_dump(moved))
            process.send_signal(signal.SIGHUP)
            out = await read_until(process, b"refused")
            assert b"listen_port cannot change while running" in out
            async with session.get(url + "/throttle/status") as r:
                assert (await r.json())["models"]["m"]["cap"] == 3  # old configuration kept
            path.write_text("models: [not, a, mapping")
            process.send_signal(signal.SIGHUP)
            assert b"refused" in await read_until(process, b"not valid YAML")
            async with session.post(url + "/v1/chat/completions", json=BODY,
                                    headers={"Authorization": "Bearer alice-key"}) as r:
                assert r.status == 200
                await r.read()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        await kill_if_running(process)
    assert mock.state.in_flight == 0
