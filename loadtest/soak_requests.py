"""The soak's request mix: each kind of request, how it is sent, and the causes it may end with.

A request's *cause* is its status and OpenAI error code, or what the client saw (a timeout,
a payload error, a planned leave); :data:`KINDS` lists the causes each kind allows.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

from loadtest.sse import SSEData

MODEL = "mock-model"
CHAT = "/v1/chat/completions"
KEYS = {"interactive": "soak-interactive", "batch": "soak-batch"}
#: what a client that leaves on purpose is recorded as
LEFT = "client left (planned)"


@dataclass(frozen=True, slots=True)
class Kind:
    """One sort of request in the mix, and the causes it may legitimately end with."""

    name: str
    weight: float
    expected: frozenset[str]


def _causes(*names: str) -> frozenset[str]:
    # A busy proxy may always refuse with a queue-full or queue-timeout 429.
    return frozenset(names) | {"429 queue_full", "429 queue_timeout"}


KINDS: tuple[Kind, ...] = (
    Kind("plain", 25, _causes("200")),
    Kind("stream", 25, _causes("200")),
    Kind("leave-early", 8, _causes(LEFT, "200")),  # may still be queued when it leaves
    Kind("leave-mid-stream", 8, _causes(LEFT, "200")),
    Kind("die-mid-stream", 5, _causes("200 stream error upstream_unreachable")),
    Kind("hang", 3, _causes("504 upstream_timeout")),
    Kind("upstream-429", 5, _causes("429 rate_limit_exceeded")),
    Kind("upstream-503", 5, _causes("503 unavailable")),
    Kind("bad-json", 3, _causes("400 invalid_json")),
    Kind("bad-field", 3, _causes("400 invalid_value", "400 missing_model")),
    Kind("unknown-model", 2, _causes("404 model_not_found")),
    Kind("bad-key", 2, frozenset({"401 invalid_api_key", "401 missing_api_key"})),
    Kind("too-large", 1, frozenset({"413 request_too_large"})),
    Kind("passthrough", 5, frozenset({"200"})),
)


def _body(rng: random.Random, stream: bool, **extra: Any) -> dict[str, Any]:
    words = " ".join(rng.choice(("soak", "load", "token", "gpu", "queue")) for _ in range(20))
    return {"model": MODEL, "messages": [{"role": "user", "content": words}],
            "max_tokens": rng.randint(4, 24), "stream": stream, **extra}


async def _error_cause(response: aiohttp.ClientResponse) -> str:
    raw = await response.read()
    try:
        code = json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "non-openai-body"
    return f"{response.status} {code}"


async def _read_stream(response: aiohttp.ClientResponse, leave_after: int | None) -> str:
    """Consume SSE events; leave after ``leave_after`` of them when set."""
    events = 0
    stream = SSEData(response.content)
    async for payload in stream:
        if payload.startswith(b'{"error"'):
            return f"200 stream error {json.loads(payload)['error'].get('code')}"
        events += 1
        if leave_after is not None and events >= leave_after:
            response.close()
            return LEFT
    return "200" if stream.done else "200 stream ended without [DONE]"


async def _send(session: aiohttp.ClientSession, base: str, kind: str,
                rng: random.Random) -> str:
    """Send one request of ``kind``; returns its cause."""
    headers = {"Authorization": f"Bearer {KEYS[rng.choice(('interactive', 'batch'))]}"}
    method, path, data = "POST", CHAT, None
    body: dict[str, Any] | None = _body(rng, stream=kind in (
        "stream", "leave-mid-stream", "die-mid-stream") or rng.random() < 0.5)
    leave_after = None
    if kind == "leave-mid-stream":
        assert body is not None
        body.update(stream=True, max_tokens=200)
        leave_after = rng.randint(1, 20)
    elif kind == "die-mid-stream":
        assert body is not None
        body.update(stream=True, max_tokens=20)
        headers["x-mock-fault"] = "die-mid-stream"
    elif kind == "hang":
        headers["x-mock-fault"] = "hang"
    elif kind == "upstream-429":
        headers["x-mock-fault"] = "refuse-429:1"
    elif kind == "upstream-503":
        headers["x-mock-fault"] = "unavailable-503"
    elif kind == "bad-json":
        body, data = None, rng.choice((b"{not json", b"\xff\xfe\x00", b"[1, 2]", b""))
    elif kind == "bad-field":
        assert body is not None
        body.update(rng.choice(({"model": 42}, {"max_tokens": "a lot"}, {"stream": "yes"},
                                {"model": None})))
    elif kind == "unknown-model":
        assert body is not None
        body["model"] = "no-such-model"
    elif kind == "bad-key":
        if rng.random() < 0.5:
            headers["Authorization"] = "Bearer wrong-key"
        else:
            del headers["Authorization"]
    elif kind == "too-large":
        assert body is not None
        body["pad"] = "x" * 300_000
    elif kind == "passthrough":
        method, path, body = "GET", "/v1/models", None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    async with session.request(method, base + path, data=data, headers=headers) as response:
        if response.status != 200:
            return await _error_cause(response)
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            return await _read_stream(response, leave_after)
        await response.read()
        return "200"


async def run_request(session: aiohttp.ClientSession, base: str, kind: str, rng: random.Random,
               timeout_s: float) -> str:
    """A request whose client may leave at a random point; exceptions become causes."""
    attempt = asyncio.ensure_future(_send(session, base, kind, rng))
    try:
        if kind == "leave-early":
            # Leave after 0-300 ms: often while queued, sometimes mid-generation.
            done, _ = await asyncio.wait({attempt}, timeout=rng.uniform(0.0, 0.3))
            if not done:
                attempt.cancel()
                return LEFT
        return await asyncio.wait_for(attempt, timeout_s)
    except TimeoutError:
        return "client timeout"
    except aiohttp.ClientPayloadError:
        return "client payload error"
    except aiohttp.ClientError as exc:
        return f"client {type(exc).__name__}"
    finally:
        if not attempt.done():
            attempt.cancel()
