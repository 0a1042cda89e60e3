"""The Redis store's state, shared by the modules that make it up (see ``redis``).

``RedisStore`` is assembled from one mixin per job: admission (``redis_admission``), release
(``redis_release``), heartbeat and registration (``redis_heartbeat``), degraded mode and the
heal (``redis_degraded``), live caps (``redis_caps``) and snapshots (``redis_snapshot``). Each
mixin subclasses ``RedisStoreCore``, which holds every field and the few calls the mixins make
of one another, declared here so each module reads on its own.
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import Redis

from ..config import RedisConfig
from .base import Demand, Grant, LimitSpec, LimitStore
from .redis_errors import STORE_ERRORS
from .redis_grants import GrantsReader
from .redis_health import StoreHealth
from .redis_local import LocalShare
from .redis_pipeline import ScriptPipeline
from .redis_scripts import DemandEncoder, Scripts, pool_keys
from .wakeup import EarliestWakeup

#: retries of one command after a dropped connection (scripts are idempotent)
COMMAND_RETRIES = 1
#: an admit told "the epoch changed" re-registers and retries at most this many times
EPOCH_RETRIES = 3
#: a healing host registers its local grants at most this many times in one heartbeat
HEAL_ROUNDS = 3


class StoreDown(Exception):
    """Redis became unreachable while a request was being admitted or waited."""


class Waiter:
    """One request of this host queued in Redis, resolved by the grants reader."""

    __slots__ = ("deadline", "demand", "enqueued", "future", "score")

    def __init__(self, demand: Demand, future: asyncio.Future[Grant], now: float,
                 deadline: float):
        self.demand = demand
        self.future = future
        self.enqueued = now
        self.deadline = deadline
        #: queue position in Redis; None until the admit reply says the request is queued
        self.score: str | None = None


class RedisStoreCore(LimitStore):
    """Every field of the Redis store, and the seams between its modules."""

    name = "redis"

    def __init__(self, spec: LimitSpec, url: str, config: RedisConfig | None = None, *,
                 recovery_pause_s: float | None = None, host_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(spec)
        self.url = url
        self.config = config or RedisConfig()
        #: unique per process: a restarted host is a new host, its old leases expire
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: admissions pause this long after data loss, while hosts re-register
        self.recovery_pause_s = (2 * self.config.heartbeat_s if recovery_pause_s is None
                                 else recovery_pause_s)
        self._clock = clock
        self._keys = pool_keys(self.config.key_prefix)
        self._grants_key = self._keys[11]
        self._encoder = DemandEncoder(spec)
        self._ttl_ms = str(int(self.config.lease_ttl_s * 1000))
        self._pause_ms = str(int(self.recovery_pause_s * 1000))
        self._tomb_ms = str(int(max(3 * self.config.lease_ttl_s, 10.0) * 1000))
        self._max_depth = str(spec.max_queue_depth)
        self._client: Redis | None = None
        self._reader: Redis | None = None
        self._scripts: Scripts | None = None
        self._pipe: ScriptPipeline | None = None
        self._epoch = ""
        #: request id -> (grant, option index in Redis, granted locally while degraded)
        self._held: dict[str, tuple[Grant, int, bool]] = {}
        self._waiters: dict[str, Waiter] = {}
        #: request id -> (settle JSON, refund): state Redis may hold for requests this host is
        #: done with (a release that failed, an admit whose answer never came); sent once
        #: Redis answers. refund: the host never used the grant, so its charges go back too.
        self._orphans: dict[str, tuple[str, bool]] = {}
        self._degraded = False
        self._health = StoreHealth(clock)
        #: deadline of every Redis call (``redis.command_timeout_s``)
        self._deadline_s = self.config.command_timeout_s
        #: grants made from the local share so far: healing registers until none is missed
        self._local_grants = 0
        self._local: LocalShare | None = None
        #: when the last call that renewed this host's leases was sent (monotonic): Redis
        #: keeps them at least ``lease_ttl_s`` from then, so ``local_share`` may reuse them
        self._renewed_at = clock()
        self._recovered = asyncio.Event()
        self._live_hosts = 1
        self._resync_lock = asyncio.Lock()
        self._grants: GrantsReader | None = None
        #: rescans when a bucket refills or a recovery pause ends
        self._scan_wakeup = EarliestWakeup(lambda: self._spawn(self._scan()))
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._shut = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _arm_scan(self, delay_s: float) -> None:
        """Ask Redis to serve the queue again when a bucket refills or a pause ends."""
        if not self._closed:
            self._scan_wakeup.arm(delay_s + 0.002)  # a little late: never before Redis' clock

    async def _scan(self) -> None:
        if self._degraded or self._scripts is None or self._pipe is None or self._closed:
            return
        try:
            reply = await self._pipe.call(self._scripts.scan, self._keys, ())
        except STORE_ERRORS as exc:
            self._enter_degraded(exc)
            return
        if float(reply[0]) >= 0:
            self._arm_scan(float(reply[0]) / 1000)

    def _where(self) -> str:
        return self.url.rpartition("@")[2]  # no credentials in a message

    # -- seams: each is implemented by the module named ------------------------------------

    @abc.abstractmethod
    def _enter_degraded(self, exc: BaseException) -> None:
        """Go degraded (or record a new reason): ``redis_degraded``."""

    @abc.abstractmethod
    async def _acquire_local(self, demand: Demand, deadline: float) -> Grant | None:
        """Admit from the local share while degraded: ``redis_degraded``."""

    @abc.abstractmethod
    async def _reconcile(self, data_changed: bool) -> bool:
        """Register what this host holds, then leave degraded mode: ``redis_degraded``."""

    @abc.abstractmethod
    async def _resync(self) -> None:
        """Register every lease and waiter of this host: ``redis_heartbeat``."""

    @abc.abstractmethod
    async def _release_id(self, rid: str, settle: str, refund: bool = False,
                          used: str = "") -> None:
        """Release one request in Redis, now or once it answers: ``redis_release``."""

    @abc.abstractmethod
    def _forget_later(self, rid: str) -> None:
        """Undo what Redis holds for a request given up on: ``redis_release``."""

    @abc.abstractmethod
    async def _send_orphans(self) -> None:
        """Send the releases Redis has not acknowledged yet: ``redis_release``."""

    @abc.abstractmethod
    def _hand_over(self, rid: str, option: int, queued_ms: float) -> None:
        """Resolve a waiter Redis granted: ``redis_admission``."""

    @abc.abstractmethod
    async def _write_caps(self, caps: Mapping[str, int | None]) -> None:
        """Write live caps to Redis: ``redis_caps``."""
