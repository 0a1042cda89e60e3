"""Three proxy processes on one Redis in front of one mock LLM: the caps hold across hosts,
and a host killed with SIGKILL gives its permits back within lease TTL + one heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.limits.redis_status import read_snapshot
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 0.2
LEASE_TTL_S = 1.0


class Process:
    """A child process that printed ``... listening on http://HOST:PORT``."""

    def __init__(self, args: list[str], banner: str):
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = ""
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"{args} exited with {self.proc.wait()}")
            if banner in line:
                self.url = line.split(banner, 1)[1].split()[0]
                return
        raise RuntimeError(f"{args} did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill(signal.SIGTERM)


@pytest.fixture
def mock(processes: list[Process]) -> Process:
    process = Process(["-m", "loadtest", "mock-llm", "--port", "0", "--batch", "4",
                       "--ttft", "0.01", "--tpot", "0.005"], "mock-llm listening on ")
    processes.append(process)
    return process


def start_proxies(n: int, config: dict[str, Any], tmp_path: Path,
                  processes: list[Process]) -> list[Process]:
    out = []
    for i in range(n):
        path = tmp_path / f"proxy{i}.yaml"
        path.write_text(yaml.safe_dump({**config, "listen": f"127.0.0.1:{free_port()}"}))
        process = Process(["-m", "proxy", "serve", "--config", str(path)],
                          "llm-throttle listening on ")
        processes.append(process)
        out.append(process)
    return out


def shared_config(store: str, mock_url: str, **models: dict[str, Any]) -> dict[str, Any]:
    return {
        "store": store,
        "redis": {"heartbeat_s": HEARTBEAT_S, "lease_ttl_s": LEASE_TTL_S},
        "gpus": {"g": {"max_in_flight": 6}},
        "upstreams": {"up-a": {"url": mock_url, "gpus": ["g"]},
                      "up-b": {"url": mock_url, "gpus": ["g"]}},
        "models": models,
        "queue": {"max_depth": 1000, "max_wait_s": 60},
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


async def stream(client: aiohttp.ClientSession, proxy: str, model: str,
                 headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One streaming chat completion; (status, body)."""
    body = {"model": model, "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}
    async with client.post(f"{proxy}/v1/chat/completions", json=body,
                           headers=headers or {}) as response:
        return response.status, await response.text()


async def mock_stats(client: aiohttp.ClientSession, mock: Process) -> dict[str, Any]:
    async with client.get(f"{mock.url}/mock/stats") as response:
        return await response.json()


@pytest.mark.slow
async def test_caps_hold_across_three_proxy_processes(tmp_path, redis_store_url, mock,
                                                      processes, session):
    """150 concurrent streams over 3 hosts; model caps 4 and a GPU cap of 6 shared by both
    models: the mock's peaks never pass a cap, reach them, and every request completes."""
    config = shared_config(redis_store_url, mock.url,
                           a={"upstreams": ["up-a"], "max_in_flight": 4},
                           b={"upstreams": ["up-b"], "max_in_flight": 4})
    proxies = start_proxies(3, config, tmp_path, processes)
    # One model alone: its cap (4) binds before the GPU's (6).
    alone = await asyncio.wait_for(asyncio.gather(*(
        stream(session, proxies[i % 3].url, "a") for i in range(40))), 60)
    stats = await mock_stats(session, mock)
    print(f"\nmodel a alone: mock peak {stats['peak']}")
    assert stats["peak"] == 4  # the model cap, reached and never passed
    async with session.post(f"{mock.url}/mock/reset"):
        pass
    # Both models: the shared GPU cap (6) binds.
    results = await asyncio.wait_for(asyncio.gather(*(
        stream(session, proxies[i % 3].url, "ab"[i % 2]) for i in range(150))), 90)
    stats = await mock_stats(session, mock)
    print(f"both models: mock peak {stats['peak']} by model {stats['peak_by_model']}, "
          f"completed {stats['completed']}")
    assert all(status == 200 and body.rstrip().endswith("data: [DONE]")
               for status, body in alone + results)
    assert stats["peak_by_model"]["a"] <= 4 and stats["peak_by_model"]["b"] <= 4
    assert stats["peak"] == 6  # the GPU cap, reached and never passed
    assert stats["completed"] == 150
    snapshot, _ = await read_snapshot(redis_store_url)
    assert snapshot.hosts == 3
    assert all(state.in_flight == 0 for state in snapshot.resources.values())
    assert snapshot.queue_depth == 0


async def test_sigkilled_host_permits_return_within_ttl_and_a_heartbeat(
        tmp_path, redis_store_url, mock, processes, session):
    config = shared_config(redis_store_url, mock.url,
                           a={"upstreams": ["up-a"], "max_in_flight": 2})
    victim, survivor = start_proxies(2, config, tmp_path, processes)
    hang = {"x-mock-fault": "hang"}
    holders = [asyncio.create_task(stream(session, victim.url, "a", hang)) for _ in range(2)]
    for _ in range(200):
        snapshot, _ = await read_snapshot(redis_store_url)
        if snapshot.resources["model:a"].in_flight == 2:
            break
        await asyncio.sleep(0.02)
    waiters = [asyncio.create_task(stream(session, survivor.url, "a")) for _ in range(2)]
    for _ in range(200):
        snapshot, _ = await read_snapshot(redis_store_url)
        if snapshot.queue_depth == 2:
            break
        await asyncio.sleep(0.02)
    assert snapshot.resources["model:a"].in_flight == 2 and snapshot.queue_depth == 2

    killed_at = time.monotonic()
    victim.kill(signal.SIGKILL)
    done, _ = await asyncio.wait(waiters, timeout=10)
    took = time.monotonic() - killed_at
    print(f"\npermits of the SIGKILLed host came back after {took:.2f} s "
          f"(lease TTL {LEASE_TTL_S} s + heartbeat {HEARTBEAT_S} s)")
    assert len(done) == 2 and all(t.result()[0] == 200 for t in done)
    assert took <= LEASE_TTL_S + HEARTBEAT_S + 0.5
    for task in holders:
        with contextlib.suppress(aiohttp.ClientError):
            await task
    snapshot, _ = await read_snapshot(redis_store_url)
    assert snapshot.resources["model:a"].in_flight == 0
    assert snapshot.hosts == 1


async def test_status_from_redis_without_a_proxy_and_on_every_host(
        tmp_path, redis_store_url, mock, processes, session):
    """``llm-throttle status --redis`` reads the shared view with no proxy running for it, and
    every host's /throttle/status shows the same shared numbers."""
    config = shared_config(redis_store_url, mock.url,
                           a={"upstreams": ["up-a"], "max_in_flight": 1})
    first, second = start_proxies(2, config, tmp_path, processes)
    hang = {"x-mock-fault": "hang"}
    holder = asyncio.create_task(stream(session, first.url, "a", hang))
    for _ in range(200):
        snapshot, _ = await read_snapshot(redis_store_url)
        if snapshot.resources["model:a"].in_flight == 1:
            break
        await asyncio.sleep(0.02)
    queued = asyncio.create_task(stream(session, second.url, "a"))
    for _ in range(200):
        snapshot, _ = await read_snapshot(redis_store_url)
        if snapshot.queue_depth == 1 and snapshot.resources["model:a"].in_flight == 1:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    out = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "proxy", "status", "--redis", redis_store_url, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    model = doc["models"]["a"]
    assert (model["in_flight"], model["cap"], model["queued"]) == (1, 1, 1)
    assert model["oldest_wait_s"] >= 0.2
    assert doc["queue"]["depth"] == 1 and doc["hosts"] == 2 and doc["store"] == "redis"
    table = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "proxy", "status", "--redis", redis_store_url],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    print("\n" + table.stdout)
    assert "model:a" in table.stdout
    for proxy in (first, second):
        async with session.get(f"{proxy.url}/throttle/status") as response:
            view = (await response.json())["models"]["a"]
        assert (view["in_flight"], view["queued"]) == (1, 1)
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await holder
    status, _ = await asyncio.wait_for(queued, 10)
    assert status == 200
