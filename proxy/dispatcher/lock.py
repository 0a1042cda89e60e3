"""One dispatcher per board: per-board locks, and a check for Hermes' own embedded dispatcher.

Two companions dispatching one board would each see free slots and together overshoot the cap.
Each board therefore has a lock: an ``flock`` file (one host; the kernel drops it when the
process dies) or, with ``--redis``, a key set with ``SET NX PX`` and renewed in the background
(several hosts; a dead holder's key expires after its TTL). A board whose lock another
companion holds is skipped, not fought over.

Hermes' gateway runs its own dispatcher unless ``kanban.dispatch_in_gateway`` is false; that one
ignores our caps. :func:`gateway_dispatch_warnings` says so loudly, and the gateway's own
singleton lock (``<root>/kanban/.dispatcher.lock``) can be held by the companion so that a
gateway started later does not dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

log = logging.getLogger("llm_throttle.dispatch")

GATEWAY_LOCK = Path("kanban") / ".dispatcher.lock"


class BoardLock(Protocol):
    #: where the lock lives, for messages
    description: str

    async def acquire(self) -> bool:
        """Take the lock without waiting; True if this process holds it now."""

    async def renew(self) -> bool:
        """Extend a held lock; False if it was lost (another process may hold it now)."""

    async def release(self) -> None: ...


class FileLock:
    """An exclusive ``flock`` on a file, held for as long as the file stays open."""

    def __init__(self, path: Path, *, write_owner: bool = True) -> None:
        self.path = path
        self.description = str(path)
        self.write_owner = write_owner
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    async def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        if self.write_owner:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} "
                         f"since={int(time.time())}\n".encode())
        self._fd = fd
        return True

    async def renew(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def owner(self) -> str:
        """What the current holder wrote into the file (best effort)."""
        with contextlib.suppress(OSError):
            return self.path.read_text(encoding="utf-8").strip()
        return ""


class RedisLock:
    """``SET key token NX PX ttl``, renewed while held; redis-py's lock does the atomic steps."""

    def __init__(self, client: Any, key: str, ttl_s: float) -> None:
        from redis.asyncio.lock import Lock

        self.description = f"redis key {key}"
        self._lock = Lock(client, key, timeout=ttl_s, blocking=False, thread_local=False)
        self._held = False

    async def acquire(self) -> bool:
        if self._held:
            return await self.renew()
        self._held = bool(await self._lock.acquire(blocking=False))
        return self._held

    async def renew(self) -> bool:
        from redis.exceptions import LockError

        if not self._held:
            return False
        try:
            await self._lock.reacquire()
        except LockError:
            self._held = False
        return self._held

    async def release(self) -> None:
        from redis.exceptions import LockError, RedisError

        if not self._held:
            return
        self._held = False
        with contextlib.suppress(LockError, RedisError):
            await self._lock.release()


class NullLock:
    """Always granted, never exclusive: for ``--dry-run``, which must not get in the way of a
    running companion's locks."""

    description = "none (dry run)"

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class BoardLocks:
    """The set of boards this companion may dispatch, kept by one lock per board."""

    def __init__(self, make_lock: Callable[[str], BoardLock]) -> None:
        self._make_lock = make_lock
        self._locks: dict[str, BoardLock] = {}
        self.owned: set[str] = set()

    async def claim(self, boards: Iterable[str]) -> tuple[set[str], set[str]]:
        """Acquire or renew the locks of ``boards``: (boards we own, boards another holds).

        Errors of the lock store (Redis unreachable) propagate: the tick then dispatches
        nothing.
        """
        taken: set[str] = set()
        for slug in boards:
            lock = self._locks.get(slug)
            if lock is None:
                lock = self._locks[slug] = self._make_lock(slug)
            ok = await (lock.renew() if slug in self.owned else lock.acquire())
            if ok:
                if slug not in self.owned:
                    log.info("holding dispatch lock for board %s (%s)", slug, lock.description)
                self.owned.add(slug)
            else:
                if slug in self.owned:
                    log.warning("lost dispatch lock for board %s (%s)", slug, lock.description)
                self.owned.discard(slug)
                taken.add(slug)
        return {s for s in boards if s in self.owned}, taken

    async def still_owned(self, slug: str) -> bool:
        """Checked right before a dispatch call: renew, and forget the board if it was lost.

        A lock that cannot be renewed (Redis unreachable) counts as lost: better to skip a
        board than to dispatch it beside a companion that may have taken it over.
        """
        lock = self._locks.get(slug)
        if lock is None or slug not in self.owned:
            return False
        try:
            if await lock.renew():
                return True
            why = "lost"
        except Exception as exc:  # noqa: BLE001 - any failure to renew means "not ours"
            why = f"could not renew ({type(exc).__name__}: {exc})"
        self.owned.discard(slug)
        log.warning("dispatch lock for board %s %s (%s)", slug, why, lock.description)
        return False

    async def renew_forever(self, every_s: float) -> None:
        """Background renewal, so a slow tick cannot let a Redis lock expire."""
        while True:
            await asyncio.sleep(every_s)
            for slug in list(self.owned):
                await self.still_owned(slug)

    async def release_all(self) -> None:
        for lock in self._locks.values():
            with contextlib.suppress(Exception):
                await lock.release()
        self.owned.clear()

    def describe(self) -> dict[str, str]:
        return {slug: self._locks[slug].description for slug in sorted(self.owned)}


def file_lock_factory(lock_dir: Path) -> Callable[[str], BoardLock]:
    return lambda slug: FileLock(lock_dir / f"{slug}.lock")


def redis_lock_factory(client: Any, prefix: str, ttl_s: float) -> Callable[[str], BoardLock]:
    return lambda slug: RedisLock(client, f"{prefix}:{slug}", ttl_s)


# -- Hermes' embedded dispatcher --------------------------------------------------------------


def flock_is_held(path: Path, locks_file: Path = Path("/proc/locks")) -> bool | None:
    """Whether some process holds an ``flock`` on ``path``, read from ``/proc/locks``.

    Looking, not locking: trying the lock ourselves could make a gateway starting at that
    instant give up dispatching for its whole life. None where the kernel table is unavailable.
    """
    try:
        st = path.stat()
        table = locks_file.read_text()
    except OSError:
        return None
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or len(fields) < 6:
            continue
        for item in fields:
            parts = item.split(":")
            if len(parts) != 3:
                continue
            try:
                major, minor, inode = int(parts[0], 16), int(parts[1], 16), int(parts[2])
            except ValueError:
                continue
            if inode == st.st_ino and (major, minor) == dev:
                return True
    return False


def _dispatch_in_gateway(config_path: Path) -> bool | None:
    """The flag as a gateway using this config would read it; None if unreadable."""
    try:
        doc = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    kanban = doc.get("kanban") if isinstance(doc, dict) else None
    if not isinstance(kanban, dict) or "dispatch_in_gateway" not in kanban:
        return True  # Hermes' default
    value = kanban["dispatch_in_gateway"]
    if isinstance(value, str):
        return value.strip().lower() not in {"0", "false", "no", "off"}
    return bool(value)


def gateway_dispatch_warnings(root: Path, *, holding_gateway_lock: bool = False) -> list[str]:
    """Why Hermes itself may dispatch these boards too: one line per reason, empty if none."""
    warnings: list[str] = []
    configs = [root / "config.yaml"]
    profiles = root / "profiles"
    if profiles.is_dir():
        configs += sorted(p / "config.yaml" for p in profiles.iterdir() if p.is_dir())
    on: list[str] = []
    for path in configs:
        exists = path.exists()
        if not exists and path != configs[0]:
            continue  # a profile without its own config is only reachable via the root one
        flag = _dispatch_in_gateway(path) if exists else True
        if flag:
            on.append(str(path) if exists else f"{path} (missing: default on)")
    if on:
        warnings.append(
            "kanban.dispatch_in_gateway is on in " + ", ".join(on)
            + ": a `hermes gateway` started with that config dispatches too and ignores these "
            "caps; set `kanban: {dispatch_in_gateway: false}` (docs/hermes.md)"
        )
    lock_path = root / GATEWAY_LOCK
    if not holding_gateway_lock and flock_is_held(lock_path):
        warnings.append(
            f"a Hermes gateway is dispatching right now (it holds {lock_path}): two "
            "dispatchers will overshoot --max-running"
        )
    return warnings
