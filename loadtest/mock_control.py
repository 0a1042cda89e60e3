"""The mock's own routes under ``/mock/``: stats, reset, live config, echo; and the middleware
that records every other request for assertions."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from loadtest.mock_protocol import error_response
from loadtest.mock_state import MOCK_STATE


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[MOCK_STATE].snapshot())


async def reset(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    state.reset()
    return web.json_response(state.snapshot())


async def set_config(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    try:
        values = json.loads(await request.read() or b"{}")
        if not isinstance(values, dict):
            raise TypeError("expected a JSON object")
        state.config.update(values)
    except KeyError as exc:
        return error_response(
            400, f"unknown config field {exc}", "invalid_request_error", "bad_config"
        )
    except (ValueError, TypeError) as exc:
        return error_response(400, str(exc), "invalid_request_error", "bad_config")
    return web.json_response(state.config.to_dict())


async def first_tokens(request: web.Request) -> web.Response:
    """``GET /mock/ttft[?since=<unix s>][&model=<m>]``: one sample per request's first token
    (``loadtest/mock_ttft.py``), oldest first."""
    since = request.query.get("since")
    try:
        since_t = None if since is None else float(since)
    except ValueError:
        return error_response(400, f"bad since: {since!r}", "invalid_request_error",
                              "bad_query")
    samples = request.app[MOCK_STATE].first_tokens.select(since_t, request.query.get("model"))
    return web.json_response({"samples": [s.to_dict() for s in samples]})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query_string": request.query_string,
            "query": {k: request.query.getall(k) for k in request.query},
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        }
    )


@web.middleware
async def record_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every request by path and keep its headers (introspection routes excluded)."""
    path = request.path
    if not path.startswith("/mock/") or path.startswith("/mock/echo"):
        request.app[MOCK_STATE].record(request.method, path, request.headers)
    response: web.StreamResponse = await handler(request)
    return response
