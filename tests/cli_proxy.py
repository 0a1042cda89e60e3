"""A proxy run as its own process (``python -m proxy serve``), for signals and its own RSS.

``start_cli_proxy`` writes the configuration to ``throttle.yaml`` under ``tmp_path`` (a test
rewrites that file to reload it), starts the process and returns it with its URL once it
listens; the caller ends it (``kill_if_running``). ``hold_and_queue`` fills a cap of one and queues more behind it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml


async def start_cli_proxy(config: dict[str, Any], tmp_path: Path,
                          ) -> tuple[asyncio.subprocess.Process, str]:
    path = tmp_path / "throttle.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert b"listening on" in line, line
    url = line.decode().split("listening on ")[1].split()[0]
    return process, url


async def kill_if_running(process: asyncio.subprocess.Process) -> None:
    """For the test's ``finally``: a proxy that has not exited by itself is killed and reaped."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def read_until(process: asyncio.subprocess.Process, needle: bytes,
                     timeout: float = 10) -> bytes:
    """Lines of the proxy's output up to the first holding ``needle``."""
    assert process.stdout is not None
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            line = await process.stdout.readline()
            if not line:
                break
            seen += line
    return seen


async def hold_and_queue(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                         queued: int = 2,
                         ) -> tuple[aiohttp.ClientResponse, list[asyncio.Task[Any]]]:
    """One streaming request that holds a cap of one (its head read, its body not), and
    ``queued`` more posted behind it; returns once the proxy's status shows them queued (or
    after about 4 s: the caller's own assertions then say what went wrong)."""
    first = await session.post(url + "/v1/chat/completions", json=body)
    assert first.status == 200
    waiting = [asyncio.create_task(session.post(url + "/v1/chat/completions", json=body))
               for _ in range(queued)]
    for _ in range(200):
        async with session.get(url + "/throttle/status") as response:
            if (await response.json())["queue"]["depth"] == queued:
                break
        await asyncio.sleep(0.02)
    return first, waiting
