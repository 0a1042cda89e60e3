"""A minimal aiohttp reverse proxy (``python -m loadtest passthrough``): a benchmark reference.

It does what any aiohttp-based proxy must do and nothing else: read the request, send it
upstream on a pooled keep-alive ``ClientSession`` (no cookie jar, no decompression, no
automatic headers), relay the answer (chunk by chunk when it is a stream) with its status and
content type only. No auth, limits, parsing, metrics or header forwarding: not for use in front
of anything real. Its CPU per request, next to llm-throttle's in the same run, shows how much of
the proxy's cost is the aiohttp server + client stack itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from contextlib import suppress

import aiohttp
from aiohttp import web

from .runtime import loop_factory


def create_app(upstream: str) -> web.Application:
    origin = upstream.rstrip("/")
    app = web.Application()
    sessions: list[aiohttp.ClientSession] = []

    async def on_startup(_: web.Application) -> None:
        sessions.append(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar()))

    async def on_cleanup(_: web.Application) -> None:
        for session in sessions:
            await session.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with sessions[0].request(request.method, origin + request.path_qs, data=body,
                                       headers=headers, allow_redirects=False,
                                       compress=None) as upstream_response:
            content_type = upstream_response.headers.get("Content-Type", "")
            out_headers = {"Content-Type": content_type}
            if content_type.startswith("text/event-stream"):
                response = web.StreamResponse(status=upstream_response.status,
                                              headers=out_headers)
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            return web.Response(status=upstream_response.status, headers=out_headers,
                                body=await upstream_response.read())

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _serve(upstream: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(upstream), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"passthrough listening on http://{host}:{port} -> {upstream}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", required=True, help="origin to forward to")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)


def cli_main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM, on uvloop when available (as llm-throttle serve does)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(args.upstream, args.host, args.port))
    return 0
