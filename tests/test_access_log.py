"""The access log: one line per answered request (refusals included), from its record."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from proxy.access_log import LOGGER_NAME
from tests.raw_upstream import RawUpstream, Reply, replies

ANSWER = Reply.json({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
                    hold_s=0.3)
CHAT = {"model": "m", "messages": [], "max_tokens": 2}


def config(url: str, **access_log: object) -> dict[str, object]:
    return {
        "upstreams": {"up": {"url": url}},
        "models": {"m": {"upstreams": ["up"], "max_in_flight": 1}},
        "clients": {"team-a": {"key": "ka"}},
        "queue": {"max_depth": 0},
        "admin_key": "adm",
        "access_log": {"enabled": True, **access_log},
    }


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    """Lines written to the access logger (its own handler: the CLI stops propagation)."""
    logger = logging.getLogger(LOGGER_NAME)
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_json_lines_for_answers_and_refusals(make_proxy, access_lines):
    """Every answer is one line: 200 with its tokens and times, 429 and 401 too; admin routes
    only with include_admin; no key or query string ever appears."""
    async with RawUpstream(replies(lambda seen: ANSWER)) as upstream:
        proxy = await make_proxy(config(upstream.url, format="json"))
        url = proxy.url + "/v1/chat/completions?secret=s3"
        async with aiohttp.ClientSession() as session:

            async def post(key: str) -> int:
                async with session.post(url, json=CHAT,
                                        headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.read()
                    return r.status

            first = asyncio.create_task(post("ka"))
            while not upstream.seen:
                await asyncio.sleep(0.01)
            assert await post("ka") == 429  # cap 1, no queue
            assert await first == 200
            assert await post("wrong") == 401
            async with session.get(proxy.url + "/metrics",
                                   headers={"Authorization": "Bearer adm"}) as r:
                assert r.status == 200
    records = [json.loads(line) for line in access_lines]
    assert [r["status"] for r in records] == [429, 200, 401]
    refused, ok, unknown = records
    assert refused["client"] == "team-a" and refused["model"] == "m"
    assert refused["upstream"] is None and refused["prompt_tokens"] is None
    assert ok["upstream"] == "up" and ok["prompt_tokens"] == 4 and ok["completion_tokens"] == 2
    assert ok["queue_ms"] == 0.0 and ok["upstream_ms"] >= 250 and ok["duration_ms"] >= 250
    assert ok["path"] == "/v1/chat/completions" and ok["time"].endswith("Z")
    assert unknown["client"] == "-"
    text = "\n".join(access_lines)
    assert "ka" not in text.replace("team-a", "") and "s3" not in text and "adm" not in text


async def test_plain_format_and_admin_routes_when_asked(make_proxy, access_lines):
    usage = Reply.json({"usage": {"prompt_tokens": 1}})
    async with RawUpstream(replies(lambda seen: usage)) as upstream:
        proxy = await make_proxy(config(upstream.url, include_admin=True))
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/v1/chat/completions", json=CHAT,
                                    headers={"Authorization": "Bearer ka"}) as r:
                assert r.status == 200
            async with session.get(proxy.url + "/healthz") as r:
                assert r.status == 401
    chat, health = access_lines
    assert " client=team-a model=m upstream=up status=200 method=POST " in chat
    assert "prompt_tokens=1 completion_tokens=0" in chat
    assert " status=401 method=GET path=/healthz " in health and "upstream=-" in health


async def test_off_by_default(make_proxy, access_lines):
    async with RawUpstream(replies(lambda seen: Reply.json({}))) as upstream:
        cfg = config(upstream.url)
        del cfg["access_log"]
        proxy = await make_proxy(cfg)
        async with aiohttp.ClientSession() as session, session.post(
                proxy.url + "/v1/chat/completions", json=CHAT,
                headers={"Authorization": "Bearer ka"}) as r:
            assert r.status == 200
    assert access_lines == []


def test_a_path_cannot_forge_log_lines():
    """``/x%0A...`` arrives decoded as a newline in the path: it is escaped in the line."""
    from proxy.access_log import AccessLog
    from proxy.config import AccessLogConfig
    from proxy.record import RequestRecord

    lines: list[str] = []
    logger = logging.getLogger("test.access.forge")
    handler = _Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log = AccessLog(AccessLogConfig(enabled=True), logger, wall_clock=lambda: 0.0)
        log.write(RequestRecord(0.0, "POST", "/v1/x\nfake=1 status=200", status=404))
        lines = handler.lines
    finally:
        logger.removeHandler(handler)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "path=/v1/x%0Afake=1%20status=200 " in lines[0]
    assert lines[0].startswith("1970-01-01T00:00:00.000Z ")
