"""Credentials and ACL: the proxy runs with a Redis user that has exactly the ACL
docs/redis.md lists; wrong credentials or one missing permission stop it at start-up with a
one-line error naming what is wrong, exit code 2 (not a traceback, not degraded for good)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.limits.redis import mark_fresh
from tests.conftest import one_model_config
from tests.redis_server import RedisServer, redis_server_binary

#: the ACL docs/redis.md documents, word for word (after the user name and password)
DOCUMENTED_ACL = (
    "resetkeys ~{llmthrottle}:* resetchannels -@all "
    "+evalsha +script|load +xread +hset +hello +select +ping +client|setname "
    "+time +exists +hget +hmget +hincrby +hincrbyfloat +hexists +hgetall +hkeys +hlen +hdel +del "
    "+zadd +zcard +zscore +zcount +zrange +zrangebyscore +zrangebylex +zremrangebyscore +zrem "
    "+xadd +xrevrange"
)


def test_every_command_the_scripts_call_is_probed_and_documented():
    """A script that starts calling a new command (the fair queue's ZRANGEBYLEX did) must not
    break a host running with the documented ACL, nor slip past the start-up probe."""
    lua = Path(__file__).parents[2] / "proxy" / "limits" / "lua"
    called = set()
    for script in lua.glob("*.lua"):
        if script.name != "probe.lua":
            called |= {c.upper() for c in re.findall(
                r"redis\.p?call\(\s*['\"]([A-Za-z]+)", script.read_text())}
    probe = lua.joinpath("probe.lua").read_text()
    probed = {c.upper() for c in re.findall(r"\{'([A-Z]+)'", probe)}
    allowed = {w[1:].upper() for w in DOCUMENTED_ACL.split() if w.startswith("+")}
    assert called - probed == set()
    assert called - allowed == set()


def test_the_documented_acl_is_the_one_tested():
    doc = (Path(__file__).parents[2] / "docs" / "redis.md").read_text()
    assert DOCUMENTED_ACL in " ".join(doc.split())


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    if redis_server_binary() is None:
        pytest.skip("redis-server not found")
    server = RedisServer(password="admin")
    server.start()
    for user, acl in (("throttle", DOCUMENTED_ACL), ("lacking", DOCUMENTED_ACL.replace(
            " +xadd", ""))):
        reply = server.command("ACL", "SETUSER", user, "reset", "on", ">pw", *acl.split())
        assert reply.startswith(b"+OK"), reply
    yield server
    server.stop()


async def test_the_proxy_runs_with_exactly_the_documented_acl(
        acl_server: RedisServer, mock_llm: Any, make_proxy: Any):
    acl_server.command("FLUSHALL")
    url = f"redis://throttle:pw@127.0.0.1:{acl_server.port}/0"
    mark_fresh(f"redis://:admin@127.0.0.1:{acl_server.port}/0")
    mock = await mock_llm()
    proxy = await make_proxy({**one_model_config(mock.url, max_in_flight=2), "store": url})
    assert not proxy.proxy.store.degraded
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
        async with session.get(f"{proxy.url}/healthz") as response:
            assert (await response.json())["status"] == "ok"


def _serve(tmp_path: Path, store: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**one_model_config("http://127.0.0.1:9/"),
                                      "store": store}))
    return subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(config),
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(("user", "named"), [("throttle:wrong", "invalid username-password"),
                                             ("lacking:pw", "xadd")])
def test_bad_credentials_or_a_missing_permission_exit_2_with_one_line(
        acl_server: RedisServer, tmp_path: Path, user: str, named: str):
    """Hazard: a wrong password ran degraded for good while /healthz said ok; an ACL user
    missing one command made the proxy exit with a raw traceback."""
    done = _serve(tmp_path, f"redis://{user}@127.0.0.1:{acl_server.port}/0")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert "pw@" not in lines[0] and "wrong@" not in lines[0]  # no credentials echoed
