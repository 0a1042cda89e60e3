"""SIGTERM: stop accepting, let streams finish, answer the queued 503, release, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import yaml

from tests.test_app_security import free_port


async def start_cli_proxy(config: dict, tmp_path) -> tuple[asyncio.subprocess.Process, str]:
    path = tmp_path / "throttle.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert b"listening on" in line, line
    url = line.decode().split("listening on ")[1].split()[0]
    return process, url


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
            streaming = await session.post(url + "/v1/chat/completions", json=body)
            assert streaming.status == 200
            queued = [asyncio.create_task(session.post(url + "/v1/chat/completions", json=body))
                      for _ in range(2)]
            for _ in range(100):
                async with session.get(url + "/throttle/status") as response:
                    if (await response.json())["queue"]["depth"] == 2:
                        break
                await asyncio.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            for task in queued:
                response = await asyncio.wait_for(task, 5)
                assert response.status == 503
                assert response.headers["retry-after"] and response.headers["retry-after-ms"]
                assert (await response.json())["error"]["code"] == "shutting_down"
            await asyncio.sleep(0.3)
            try:
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(url + "/healthz") as response:
                        assert response.status == 503  # still draining, not accepting work
            except aiohttp.ClientConnectorError:
                pass  # listener already closed: also fine
            text = (await asyncio.wait_for(streaming.read(), 10)).decode()
            assert text.rstrip().endswith("data: [DONE]")  # the stream ran to its end
            chunks = [e for e in text.split("\n\n") if e.startswith("data: {")]
            assert len(chunks) == 16 and all("error" not in json.loads(c[6:]) for c in chunks)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert mock.state.in_flight == 0
    if store_kind == "redis":  # the shared store holds nothing for the host that left
        from proxy.limits.redis_status import read_status_document

        doc = await read_status_document(store)
        assert doc["queue"]["depth"] == 0
        assert all(entry["in_flight"] == 0 for group in ("models", "upstreams")
                   for entry in doc[group].values())
