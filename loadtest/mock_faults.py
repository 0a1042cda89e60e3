"""Per-request fault injection, read from the ``x-mock-fault`` and ``x-mock-pause-after-first``
headers (the list of faults is in :mod:`loadtest.mock_llm`'s docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from loadtest.mock_protocol import BadRequest, error_response, read_json


@dataclass(slots=True)
class Faults:
    refuse_429: float | None = None
    unavailable: bool = False
    hang: bool = False
    die_mid_stream: bool = False
    delay: float = 0.0
    tokens: int | None = None
    pause_after_first: float = 0.0
    end_after_done: float = 0.0


def parse_faults(headers: CIMultiDictProxy[str]) -> Faults | None:
    """None (the fast path) unless the request carries a fault header; a malformed one is a
    ``BadRequest`` (a 400 on every route)."""
    spec = headers.get("x-mock-fault")
    pause = headers.get("x-mock-pause-after-first")
    if spec is None and pause is None:
        return None
    try:
        return _faults(spec, pause)
    except ValueError as exc:  # a number that does not parse
        raise BadRequest(f"bad x-mock header: {exc}", "bad_fault") from None


def _faults(spec: str | None, pause: str | None) -> Faults:
    faults = Faults()
    if pause is not None:
        faults.pause_after_first = float(pause)
    for item in (spec or "").split(","):
        name, _, arg = item.strip().partition(":")
        if name == "refuse-429":
            faults.refuse_429 = float(arg) if arg else 1.0
        elif name == "unavailable-503":
            faults.unavailable = True
        elif name == "hang":
            faults.hang = True
        elif name == "die-mid-stream":
            faults.die_mid_stream = True
        elif name == "delay":
            faults.delay = float(arg)
        elif name == "tokens":
            faults.tokens = int(arg)
        elif name == "end-after-done":
            faults.end_after_done = float(arg)
        elif name:
            raise BadRequest(f"unknown x-mock-fault {name!r}", "unknown_fault")
    return faults


async def read_request(request: web.Request) -> tuple[Faults | None, dict[str, Any]]:
    """What every generation and embedding route reads first: the faults asked for and the
    JSON body; ``BadRequest`` for either malformed. The refusal a fault asks for comes after
    the route's own checks (``refusal``), so a bad request is a 400 whatever its faults."""
    return parse_faults(request.headers), await read_json(request)


def rate_limited(retry_s: float) -> web.Response:
    """The mock's 429, the same on every route: ``retry-after`` in whole seconds (at least 1)
    and ``retry-after-ms`` exact, as an OpenAI-compatible server sends them."""
    return error_response(
        429, "Rate limit reached (mock)", "rate_limit_error", "rate_limit_exceeded",
        {"retry-after": str(max(1, math.ceil(retry_s))),
         "retry-after-ms": str(int(retry_s * 1000))},
    )


def refusal(faults: Faults | None) -> web.Response | None:
    """The 429 or 503 the request's faults ask for, before any work is done (None: serve it)."""
    if faults is None:
        return None
    if faults.refuse_429 is not None:
        return rate_limited(faults.refuse_429)
    if faults.unavailable:
        return error_response(503, "Service unavailable (mock)", "server_error", "unavailable")
    return None
