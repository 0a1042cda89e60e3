"""CPU per request of two proxy source trees, measured in the same run.

``python -m loadtest cpu-compare OLD_TREE NEW_TREE`` starts one zero-delay mock and one proxy
per tree (each with ``PYTHONPATH=<tree>``), then sends the same closed-loop load to each in
turn, interleaved over ``--rounds``, and reads each proxy's CPU time from ``/proc``. A ratio
measured this way holds on a noisy shared machine, where absolute figures do not. Get an old
tree with ``git archive <commit> proxy loadtest | tar -x -C DIR``. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import aiohttp

from .processes import cpu_seconds, free_port

_READY_TIMEOUT_S = 30.0


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _drive(url: str, requests: int, concurrency: int, stream: bool) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}],
                       "max_tokens": 16, "stream": stream}).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        left = iter(range(requests))

        async def worker() -> None:
            for _ in left:
                async with session.post(url + "/v1/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: status {r.status}")

        await asyncio.gather(*[worker() for _ in range(concurrency)])


def _start(args: list[str], tree: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env={**os.environ, "PYTHONPATH": tree},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compare(trees: list[str], requests: int, rounds: int, concurrency: int
            ) -> dict[str, dict[str, list[float]]]:
    """ms of proxy CPU per request, per tree and kind (plain, stream), one value per round."""
    mock_port = free_port()
    procs = [_start(["-m", "loadtest", "mock-llm", "--port", str(mock_port), "--batch",
                     "100000", "--ttft", "0", "--tpot", "0"], trees[-1])]
    proxies: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        _wait_listening(mock_port)
        for tree in trees:
            port = free_port()
            proc = _start(["-m", "proxy.cli", "serve", "--upstream",
                           f"http://127.0.0.1:{mock_port}", "--max-in-flight", "64",
                           "--listen", f"127.0.0.1:{port}"], tree)
            procs.append(proc)
            proxies[tree] = (proc, f"http://127.0.0.1:{port}")
            _wait_listening(port)
        for _, url in proxies.values():
            asyncio.run(_drive(url, min(requests, 300), concurrency, False))  # warm up
        results: dict[str, dict[str, list[float]]] = {
            tree: {"plain": [], "stream": []} for tree in trees}
        for _ in range(rounds):
            for kind in ("plain", "stream"):
                for tree, (proc, url) in proxies.items():
                    before = cpu_seconds(proc.pid)
                    asyncio.run(_drive(url, requests, concurrency, kind == "stream"))
                    results[tree][kind].append((cpu_seconds(proc.pid) - before) / requests * 1000)
        return results
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trees", nargs=2, help="two source trees, each holding proxy/")
    parser.add_argument("--requests", type=int, default=5000, help="per tree, kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)


def cli_main(args: argparse.Namespace) -> int:
    results = compare(args.trees, args.requests, args.rounds, args.concurrency)
    medians = {}
    for tree, kinds in results.items():
        for kind, values in kinds.items():
            medians[tree, kind] = sorted(values)[len(values) // 2]
            print(f"{tree} {kind}: {medians[tree, kind]:.3f} ms CPU/request "
                  f"(rounds: {', '.join(f'{v:.3f}' for v in values)})")
    old, new = args.trees
    for kind in ("plain", "stream"):
        print(f"{kind}: new/old = {medians[new, kind] / medians[old, kind]:.3f}")
    return 0
