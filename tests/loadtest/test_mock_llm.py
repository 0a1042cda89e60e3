"""The mock as an app, a restartable server and a command-line process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.mock_llm import MOCK_STATE, MockLLM, MockLLMConfig, create_app

ROOT = Path(__file__).resolve().parents[2]


async def test_create_app_in_test_client(aiohttp_client: Any) -> None:
    app = create_app(MockLLMConfig(ttft_s=0, tpot_s=0, models=["x"]))
    http = await aiohttp_client(app)
    async with http.get("/v1/models") as r:
        assert (await r.json())["data"][0]["id"] == "x"
    assert app[MOCK_STATE].requests_by_path["/v1/models"] == 1


async def test_restart_keeps_port_and_counters(mock: MockLLM) -> None:
    url = mock.url
    await mock.stop()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(url + "/health")
        await mock.start()
        async with http.get(url + "/health") as r:
            assert r.status == 200
    assert mock.url == url and mock.state.requests_by_path["/health"] == 1


def test_cli_subprocess() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "mock-llm", "--port", "0", "--ttft", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mock-llm listening on http://127.0.0.1:")
        url = line.split()[-1]
        import urllib.request

        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            assert b"mock-model" in r.read()
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
