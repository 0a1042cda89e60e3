"""End to end with the real thing: hermes-agent 0.19.0, the proxy, the mock LLM, the companion.

A board of twelve tasks (three levels of parents) is worked by real ``hermes`` workers whose
profile points at the proxy as its OpenAI-compatible provider. The proxy caps the model at two
requests in flight. Before the companion starts, six requests that never answer (mock fault
``hang``) fill the model's slots and queue, so the backlog is over the high watermark while
every slot under ``--max-running`` is free and four tasks are ready: the companion must hold
(and still run its ``--max 0`` maintenance passes). Once the load is cancelled and the queue
drains below the low watermark it must resume, never run more than ``--max-running`` tasks, and
get every task to ``done``. The workers' requests must reach the LLM with the task and profile
headers the profile sets.

Bounded: about two to four minutes on two cores. Marked ``slow`` (own CI step) and ``hermes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .conftest import HermesHome
from .kanban_llm import TOOL, TOOL_HEADER, kanban_shim_app, mock_answers_tool_calls

pytestmark = [pytest.mark.slow, pytest.mark.hermes]

REPO = Path(__file__).resolve().parents[2]
MODEL = "qwen"
MODEL_CAP = 2
MAX_RUNNING = 3
HIGH, LOW = 4, 1
INTERVAL_S = 2.0
MAINTENANCE_S = 10.0
HOLD_S = 25.0
LOAD_REQUESTS = MODEL_CAP + HIGH  # two hang in flight, four wait in the queue
FINISH_TIMEOUT_S = 300.0

#: task -> parents; roots r*, children c*, grandchildren g*
GRAPH: dict[str, tuple[str, ...]] = {
    "r1": (), "r2": (), "r3": (), "r4": (),
    "c1": ("r1",), "c2": ("r1",), "c3": ("r2",), "c4": ("r2", "r3"), "c5": ("r3",),
    "c6": ("r4",),
    "g1": ("c1", "c2"), "g2": ("c4", "c5"),
}

WORKER_PROFILE = """\
model:
  provider: throttle
  default: {model}
providers:
  throttle:
    name: llm-throttle
    base_url: {proxy}/v1
    api_key: sk-e2e
    default_model: {model}
    extra_headers:
      x-hermes-profile: ${{HERMES_PROFILE}}
      x-hermes-task: ${{HERMES_KANBAN_TASK}}
      x-hermes-board: ${{HERMES_KANBAN_BOARD}}
      {tool_header}: {tool}
agent:
  api_max_retries: 10
kanban:
  dispatch_in_gateway: false
"""

PROXY_CONFIG = """\
listen: 127.0.0.1:{port}
upstreams:
  gpu: {{url: "{upstream}"}}
models:
  {model}: {{upstreams: [gpu], max_in_flight: {cap}}}
queue: {{max_depth: 200, max_wait_s: 150}}
attribution: {{header: x-hermes-profile}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _process(argv: list[str], log: Path, env: dict[str, str] | None = None,
                   ) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process logging to ``log``; SIGTERM (then SIGKILL) by its pid on the way out."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, cwd=REPO)
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_for(check: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError, ValueError, KeyError):
            result = await check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        resp.raise_for_status()
        return await resp.json(content_type=None)


def _env(hh: HermesHome) -> dict[str, str]:
    env = dict(hh.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _read_board(db: Path) -> tuple[dict[str, str], list[int]]:
    """(task id -> status, start times of every run), opened read-only."""
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM tasks").fetchall())
        starts = [int(r[0]) for r in conn.execute("SELECT started_at FROM task_runs")]
    return statuses, starts


async def test_companion_paces_a_real_board(hermes_home: HermesHome, tmp_path: Path) -> None:
    hh = hermes_home
    env = _env(hh)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        # -- the mock LLM, and the shim while the mock cannot answer tool calls ----------------
        mock_log = tmp_path / "mock.log"
        await stack.enter_async_context(_process(
            [sys.executable, "-m", "loadtest", "mock-llm", "--port", "0", "--models", MODEL,
             "--ttft", "0.05", "--tpot", "0.005", "--output-tokens", "8"], mock_log, env))

        async def mock_url() -> str | None:
            match = re.search(r"listening on (http://\S+)", mock_log.read_text())
            return match[1] if match else None

        mock = await _wait_for(mock_url, 30, "the mock LLM")
        upstream = mock
        if not await mock_answers_tool_calls(mock):
            runner = web.AppRunner(kanban_shim_app(mock))
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            shim_port = _free_port()
            await web.TCPSite(runner, "127.0.0.1", shim_port).start()
            upstream = f"http://127.0.0.1:{shim_port}"

        # -- the proxy -------------------------------------------------------------------------
        port = _free_port()
        proxy = f"http://127.0.0.1:{port}"
        config = tmp_path / "proxy.yaml"
        config.write_text(PROXY_CONFIG.format(port=port, upstream=upstream, model=MODEL,
                                              cap=MODEL_CAP))
        await stack.enter_async_context(_process(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            tmp_path / "proxy.log", env))
        await _wait_for(lambda: _get_json(session, proxy + "/throttle/status"), 30, "the proxy")

        # -- Hermes: a worker profile pointing at the proxy, a board of twelve tasks ------------
        await asyncio.to_thread(hh.run, "profile", "create", "worker", "--no-alias",
                                "--no-skills")
        (hh.root / "config.yaml").write_text("kanban:\n  dispatch_in_gateway: false\n")
        (hh.root / "profiles" / "worker" / "config.yaml").write_text(WORKER_PROFILE.format(
            proxy=proxy, model=MODEL, tool_header=TOOL_HEADER, tool=TOOL))
        await asyncio.to_thread(hh.create_board, "e2e")
        ids: dict[str, str] = {}
        for name, parents in GRAPH.items():
            ids[name] = await asyncio.to_thread(
                hh.create_task, "e2e", f"task {name}", parents=tuple(ids[p] for p in parents))
        db = hh.db_path("e2e")
        statuses, _ = _read_board(db)
        assert sorted(statuses.values()).count("ready") == 4

        # -- load that never answers: the model's queue goes over the high watermark -----------
        async def hanging_request() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hold"}]}
            async with session.post(proxy + "/v1/chat/completions", json=body,
                                    headers={"x-mock-fault": "hang"},
                                    timeout=aiohttp.ClientTimeout(total=None)) as resp:
                await resp.read()

        load = [asyncio.create_task(hanging_request()) for _ in range(LOAD_REQUESTS)]

        async def queued() -> int:
            doc = await _get_json(session, proxy + "/throttle/status")
            return int(doc["models"][MODEL]["queued"]) >= HIGH

        await _wait_for(queued, 30, f"{HIGH} requests queued at the proxy")

        # -- the companion ---------------------------------------------------------------------
        status_port = _free_port()
        companion_log = tmp_path / "companion.log"
        await stack.enter_async_context(_process(
            [sys.executable, "-m", "proxy.dispatcher",
             "--status-url", proxy + "/throttle/status", "--models", MODEL,
             "--boards", "e2e", "--max-running", str(MAX_RUNNING),
             "--high-watermark", str(HIGH), "--low-watermark", str(LOW),
             "--interval", str(INTERVAL_S), "--maintenance-interval", str(MAINTENANCE_S),
             "--hermes", hh.exe, "--hermes-timeout", "60",
             "--listen", f"127.0.0.1:{status_port}"],
            companion_log, env))
        companion = f"http://127.0.0.1:{status_port}"

        # Sample running tasks all along, read-only, independent of what the companion says.
        samples: list[tuple[float, int, int]] = []  # (time, running, ready)

        async def sample() -> None:
            while True:
                statuses, _ = await asyncio.to_thread(_read_board, db)
                values = list(statuses.values())
                samples.append((time.time(), values.count("running"), values.count("ready")))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        stack.callback(sampler.cancel)

        async def holding() -> bool:
            doc = await _get_json(session, companion + "/status")
            return bool(doc["last_tick"] and doc["last_tick"]["holding"])

        await _wait_for(holding, 60, "the companion to hold")
        hold_seen = time.time()
        await asyncio.sleep(max(HOLD_S - (time.time() - hold_seen), 0))

        statuses, starts = await asyncio.to_thread(_read_board, db)
        assert starts == [], "a worker was spawned while the backlog was over the watermark"
        assert list(statuses.values()).count("ready") == 4  # there was work, and free slots

        # -- drain: the queue empties, the companion resumes ------------------------------------
        released = time.time()
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)

        async def all_done() -> bool:
            statuses, _ = await asyncio.to_thread(_read_board, db)
            return all(s == "done" for s in statuses.values())

        try:
            await _wait_for(all_done, FINISH_TIMEOUT_S, "every task to reach done", every=1)
        except AssertionError:
            statuses, _ = await asyncio.to_thread(_read_board, db)
            raise AssertionError(
                f"not all done: {statuses}\n--- companion ---\n"
                f"{companion_log.read_text()[-4000:]}") from None
        doc = await _get_json(session, companion + "/status")
        metrics = await (await session.get(companion + "/metrics")).text()
        mock_stats = await _get_json(session, mock + "/mock/stats")

    log_text = companion_log.read_text()
    ticks = [line for line in log_text.splitlines() if "tick=" in line]

    # Never more than --max-running, by the independent samples and by the companion's counts.
    assert max(running for _, running, _ in samples) <= MAX_RUNNING, samples
    totals = [int(m[1]) for t in ticks if (m := re.search(r" total=(\d+)", t))]
    assert totals and max(totals) <= MAX_RUNNING
    # The cap was actually used (not a trivially serial run).
    assert max(running for _, running, _ in samples) >= 2

    # Nothing started before the load was released.
    _, starts = _read_board(db)
    assert len(starts) >= len(GRAPH)
    assert min(starts) >= int(released) - 1

    # Holding showed in the log, with maintenance passes that started nothing.
    held = [t for t in ticks if "hold=yes" in t]
    assert held and all("spawned=0" in t for t in held)
    assert sum("maintenance=e2e" in t for t in held) >= 2, held
    assert any("resume:" in t for t in ticks)
    assert doc["hermes"]["max_semantics"] == "running"
    assert 'llm_throttle_dispatch_hold_transitions_total{to="hold"} 1.0' in metrics
    assert f'llm_throttle_dispatch_spawned_total{{board="e2e"}} {float(len(starts))}' in metrics

    # The workers' chat requests reached the LLM attributed to their task and profile.
    chats = [r["headers"] for r in mock_stats.get("recent_requests", [])
             if r.get("path", "").endswith("/chat/completions")
             and "x-hermes-task" in r.get("headers", {})]
    assert chats, json.dumps(mock_stats)[:2000]
    assert {h["x-hermes-task"] for h in chats} <= set(ids.values())
    assert {h["x-hermes-profile"] for h in chats} == {"worker"}
    assert {h["x-hermes-board"] for h in chats} == {"e2e"}
