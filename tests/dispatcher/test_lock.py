"""One dispatcher per board: file and Redis locks, and the embedded-dispatcher warnings."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import time
from pathlib import Path

import pytest

from proxy.dispatcher.lock import (
    GATEWAY_LOCK,
    BoardLocks,
    FileLock,
    RedisLock,
    file_lock_factory,
    flock_is_held,
    gateway_dispatch_warnings,
    redis_lock_factory,
)


async def test_file_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "a.lock"), FileLock(tmp_path / "a.lock")
    assert await first.acquire()
    assert await first.acquire()  # idempotent
    assert not await second.acquire()
    assert f"pid={os.getpid()}" in second.owner()
    await first.release()
    assert await second.acquire()
    await second.release()


async def test_file_lock_goes_with_a_dead_holder(tmp_path: Path) -> None:
    """A crashed companion never leaves a board locked: the kernel drops its flock."""
    path = tmp_path / "b.lock"
    script = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        lock = FileLock(path)
        assert not await lock.acquire()
    finally:
        holder.kill()
        await holder.wait()
    assert await lock.acquire()
    await lock.release()


async def test_board_locks_claim_and_report(tmp_path: Path) -> None:
    other = FileLock(tmp_path / "beta.lock")
    assert await other.acquire()
    locks = BoardLocks(file_lock_factory(tmp_path))
    owned, taken = await locks.claim(["alpha", "beta"])
    assert owned == {"alpha"} and taken == {"beta"}
    assert await locks.still_owned("alpha") and not await locks.still_owned("beta")
    await other.release()
    owned, taken = await locks.claim(["alpha", "beta"])
    assert owned == {"alpha", "beta"} and not taken
    await locks.release_all()
    assert locks.owned == set()


def test_flock_is_held_reads_the_kernel_table(tmp_path: Path) -> None:
    path = tmp_path / ".dispatcher.lock"
    assert flock_is_held(path) is None  # no such file
    path.touch()
    if not Path("/proc/locks").exists():
        pytest.skip("no /proc/locks")
    assert flock_is_held(path) is False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert flock_is_held(path) is True
    finally:
        os.close(fd)
    assert flock_is_held(path) is False


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_gateway_warnings_follow_the_hermes_configs(tmp_path: Path) -> None:
    root = tmp_path / ".hermes"
    root.mkdir()
    # No config at all: Hermes' default is to dispatch from the gateway.
    [warning] = gateway_dispatch_warnings(root)
    assert "dispatch_in_gateway is on" in warning and "default on" in warning
    _write(root / "config.yaml", "kanban:\n  dispatch_in_gateway: false\n")
    assert gateway_dispatch_warnings(root) == []
    _write(root / "profiles" / "worker" / "config.yaml", "model:\n  default: qwen\n")
    [warning] = gateway_dispatch_warnings(root)
    assert "profiles/worker/config.yaml" in warning
    _write(root / "profiles" / "worker" / "config.yaml",
           "kanban:\n  dispatch_in_gateway: 'off'\n")
    assert gateway_dispatch_warnings(root) == []


def test_gateway_dispatching_now_is_reported(tmp_path: Path) -> None:
    if not Path("/proc/locks").exists():
        pytest.skip("no /proc/locks")
    root = tmp_path / ".hermes"
    _write(root / "config.yaml", "kanban:\n  dispatch_in_gateway: false\n")
    lock = root / GATEWAY_LOCK
    _write(lock, "")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        [warning] = gateway_dispatch_warnings(root)
        assert "dispatching right now" in warning
        assert gateway_dispatch_warnings(root, holding_gateway_lock=True) == []
    finally:
        os.close(fd)


async def test_redis_lock_is_exclusive_renewed_and_expires(dispatch_redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(dispatch_redis_url)
    key = f"test:dispatch-lock:{time.monotonic_ns()}"
    try:
        first, second = RedisLock(client, key, ttl_s=0.5), RedisLock(client, key, ttl_s=0.5)
        assert await first.acquire()
        assert not await second.acquire()
        for _ in range(4):  # renewed past several TTLs, still ours
            await asyncio.sleep(0.2)
            assert await first.renew()
        assert not await second.acquire()
        # A holder that stops renewing (a dead host) loses the board after its TTL.
        await asyncio.sleep(0.7)
        assert await second.acquire()
        assert not await first.renew()
        await first.release()  # not ours any more: must not delete the new holder's key
        assert await client.exists(key) == 1
        await second.release()
        assert await client.exists(key) == 0
    finally:
        await client.aclose()


async def test_board_locks_over_redis(dispatch_redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(dispatch_redis_url)
    prefix = f"test:{time.monotonic_ns()}"
    try:
        one = BoardLocks(redis_lock_factory(client, prefix, 5.0))
        two = BoardLocks(redis_lock_factory(client, prefix, 5.0))
        assert (await one.claim(["a", "b"]))[0] == {"a", "b"}
        assert await two.claim(["a", "b", "c"]) == ({"c"}, {"a", "b"})
        await one.release_all()
        assert (await two.claim(["a", "b", "c"]))[0] == {"a", "b", "c"}
        await two.release_all()
    finally:
        await client.aclose()
