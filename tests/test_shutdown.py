"""SIGTERM: stop accepting, let streams finish, answer the queued 503, release, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp

from loadtest.processes import free_port
from tests.cli_proxy import hold_and_queue, kill_if_running, start_cli_proxy


async def test_sigterm_drains_gracefully(store_kind, request, mock_llm, tmp_path):
    mock = await mock_llm(ttft_s=0, tpot_s=0.1, output_tokens=15)
    port = free_port()
    store = "memory" if store_kind == "memory" else request.getfixturevalue("redis_store_url")
    config = {
        "listen": f"127.0.0.1:{port}", "shutdown_grace_s": 10, "store": store,
        "upstreams": {"up": {"url": mock.url}},
        "models": {"m": {"upstreams": ["up"], "max_in_flight": 1}},
    }
    process, url = await start_cli_proxy(config, tmp_path)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        async with aiohttp.ClientSession() as session:
            streaming, queued = await hold_and_queue(session, url, body)
            process.send_signal(signal.SIGTERM)
            for task in queued:
                response = await asyncio.wait_for(task, 5)
                assert response.status == 503
                assert response.headers["retry-after"] and response.headers["retry-after-ms"]
                assert (await response.json())["error"]["code"] == "shutting_down"
            await asyncio.sleep(0.3)
            try:
                async with aiohttp.ClientSession() as fresh, \
                        fresh.get(url + "/healthz") as response:
                    assert response.status == 503  # still draining, not accepting work
            except aiohttp.ClientConnectorError:
                pass  # listener already closed: also fine
            text = (await asyncio.wait_for(streaming.read(), 10)).decode()
            assert text.rstrip().endswith("data: [DONE]")  # the stream ran to its end
            chunks = [e for e in text.split("\n\n") if e.startswith("data: {")]
            assert len(chunks) == 16 and all("error" not in json.loads(c[6:]) for c in chunks)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        await kill_if_running(process)
    assert mock.state.in_flight == 0
    if store_kind == "redis":  # the shared store holds nothing for the host that left
        from proxy.limits.redis_status import read_status_document

        doc = await read_status_document(store)
        assert doc["queue"]["depth"] == 0
        assert all(entry["in_flight"] == 0 for group in ("models", "upstreams")
                   for entry in doc[group].values())
