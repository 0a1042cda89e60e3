"""The limiter interface: what a request asks for, what it gets, and what a store must keep.

Theory of operation
-------------------
A request needs a set of *resources*, each an in-flight counter with a cap
(``model:<name>``, ``client:<name>``, ``upstream:<name>``, ``gpu:<id>``), and draws from
*buckets* (``rpm:model:<name>``, ``tpm:client:<name>``, ...). Some resources are needed
whatever happens (``Demand.resources``); the rest come with the upstream the store picks among
``Demand.options`` (an upstream and its GPUs). A store admits a demand in ONE atomic step:
every resource of the shared set and of one option, and every bucket charge, or nothing.
Nothing is held while waiting, so no two requests can deadlock on each other.

A request's life in the store::

    QUEUED -> GRANTED -> (STREAMING, outside the store) -> RELEASED
       |         \\-> LOST  (its host died: the lease expires and the store takes it back)
       |-> CANCELLED  (client went away while queued)
       \\-> TIMED_OUT (waited longer than the queue allows)

Waiters are shared out fairly (``proxy.limits.fairness``): between classes by class weight,
between flows (client, or attribution value) by weighted token counters. A waiter that cannot be
served blocks only what it lacks (a resource at cap, an empty bucket): later waiters that
need none of those go ahead, later waiters that need one of them wait behind it (no barging,
no starvation of big requests). A release hands permits straight to the next eligible waiter.

Buckets may go into debt: a request needs ``min(amount, capacity)`` tokens in the bucket and
then takes its whole amount, so a request larger than the burst waits a finite time instead of
starving. A charge that could not be met within the queue's max wait is refused at once with
the time it would take (and charges nothing).

Every store implements ``LimitStore``; ``proxy.limits.memory`` (one process) and
``proxy.limits.redis`` (shared by many hosts) pass the same test suite.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Lower is served first."""

    INTERACTIVE = 0
    BATCH = 1

    @classmethod
    def parse(cls, name: str) -> Priority:
        return cls[name.upper()]


class Fairness(enum.Enum):
    """How the queue shares capacity between flows and classes (see ``fairness``)."""

    TOKENS = "tokens"
    REQUESTS = "requests"
    FIFO = "fifo"
    ATTAINED = "attained"


DEFAULT_CLASS_WEIGHTS: Mapping[Priority, float] = {Priority.INTERACTIVE: 9.0, Priority.BATCH: 1.0}


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A token bucket: holds at most ``capacity``, refills at ``rate_per_s``."""

    capacity: float
    rate_per_s: float


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Every cap and bucket a store enforces, built once from the configuration."""

    caps: Mapping[str, int | None]
    buckets: Mapping[str, BucketSpec] = field(default_factory=dict)
    max_queue_depth: int = 1000
    max_wait_s: float = 120.0
    #: caps for resources named at run time (``attr:<client>/<header value>``), by prefix
    prefix_caps: Mapping[str, int] = field(default_factory=dict)
    #: resources whose cap changes at run time (adaptive): in the Redis store every host
    #: obeys the one live cap stored there, whatever cap its own spec holds
    live: frozenset[str] = frozenset()
    fairness: Fairness = Fairness.TOKENS
    #: in attained order, a waiter queued this long goes first (None: never)
    starvation_s: float | None = 30.0
    class_weights: Mapping[Priority, float] = field(
        default_factory=lambda: dict(DEFAULT_CLASS_WEIGHTS))

    def cap_of(self, resource: str) -> int | None:
        cap = self.caps.get(resource)
        if cap is None and self.prefix_caps:
            for prefix, prefix_cap in self.prefix_caps.items():
                if resource.startswith(prefix):
                    return prefix_cap
        return cap


@dataclass(frozen=True, slots=True)
class Option:
    """One way to serve a request: an upstream and the resources it needs (its GPUs)."""

    name: str
    resources: tuple[str, ...]


@dataclass(slots=True)  # not frozen: built on every request, and frozen init costs 6x
class Charge:
    """Tokens taken from (or, negative, given back to) one bucket."""

    bucket: str
    amount: float


@dataclass(slots=True)  # not frozen: built on every request, and frozen init costs 6x
class Demand:
    """Everything one request needs, decided before it asks the store."""

    request_id: str
    priority: Priority
    resources: tuple[str, ...]
    options: tuple[Option, ...]
    charges: tuple[Charge, ...] = ()
    max_wait_s: float | None = None  # None: the queue's default
    flow: str = ""  # who shares fairly: the client, or client/attribution value
    weight: float = 1.0  # the flow's share against other flows of its class
    cost: float = 1.0  # tokens reserved (prompt estimate + max tokens), charged to the flow


@dataclass(slots=True)  # not frozen: built on every request, and frozen init costs 6x
class Grant:
    """What a request holds once admitted; handed back whole to ``release``."""

    request_id: str
    option: Option
    resources: tuple[str, ...]  # everything held: shared resources + the option's
    charges: tuple[Charge, ...]
    queued_s: float  # how long it waited before the grant
    priority: Priority = Priority.BATCH
    flow: str = ""
    weight: float = 1.0
    cost: float = 1.0
    #: tokens really used, set by the caller before release: corrects the flow's counter
    used: float | None = None


@dataclass(frozen=True, slots=True)
class ResourceState:
    in_flight: int
    cap: int | None
    queued: int
    oldest_wait_s: float


@dataclass(frozen=True, slots=True)
class BucketState:
    level: float
    capacity: float
    rate_per_s: float


@dataclass(frozen=True, slots=True)
class FlowState:
    """One flow's place in the fair share (``fairness``)."""

    queued: int
    counter: float  # tokens (or requests) served / weight, as the scheduler compares them
    served: float  # tokens (or requests) served since the store started


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent read of the whole store, for status pages and the dispatcher."""

    resources: Mapping[str, ResourceState]
    buckets: Mapping[str, BucketState]
    queue_depth: int
    oldest_wait_s: float
    store: str
    degraded: bool = False
    hosts: int = 1
    #: "<class>:<flow>" -> state; the busiest MAX_REPORTED_FLOWS only (bounded)
    flows: Mapping[str, FlowState] = field(default_factory=dict)
    #: why the store is degraded (``unreachable``, ``auth``, ``oom``, ...); None when it is not
    degraded_reason: str | None = None


class LimitStore(abc.ABC):
    """Admits demands atomically, queues the rest fairly, and takes permits back.

    Guarantees every implementation keeps:
    - no resource's in-flight count exceeds its cap (while the store is healthy);
    - ``acquire`` either returns a ``Grant`` the caller must ``release``, or raises and holds
      nothing (also when the calling task is cancelled while queued);
    - ``release`` is idempotent per request id.
    """

    name: str = "abstract"

    def __init__(self, spec: LimitSpec):
        self.spec = spec
        #: releases in progress; they never run inside a request task, so a cancelled
        #: handler cannot abandon one half done
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect, load scripts, start background loops."""

    async def close(self) -> None:
        """Release what this host holds and stop background loops."""
        await self.drain()

    def release_nowait(self, grant: Grant, settle: tuple[Charge, ...] = ()) -> None:
        """Release from a tracked background task (safe from a handler being cancelled)."""
        task = asyncio.get_running_loop().create_task(self.release(grant, settle))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for every background release to finish (shutdown, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    @abc.abstractmethod
    async def acquire(self, demand: Demand) -> Grant:
        """Admit now, or wait in the queue; raises QueueFull, QueueTimeout or RateLimited."""

    @abc.abstractmethod
    async def release(self, grant: Grant, settle: tuple[Charge, ...] = ()) -> None:
        """Give the permits back and apply ``settle`` (actual minus reserved) to the buckets."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Current in-flight, queue and bucket state."""

    async def cancel_waiters(self, reason: Exception) -> int:
        """Fail every request of this host still queued (shutdown); returns how many."""
        return 0

    @property
    def degraded_reason(self) -> str | None:
        """Why this store runs degraded now (None: it does not)."""
        return None

    async def set_cap(self, resource: str, cap: int | None) -> None:
        """Change one resource's cap now, atomically with admissions.

        Permits held above a lowered cap stay held until released (never revoked); a raised
        cap serves the waiters it lets in at once.
        """
        raise NotImplementedError

    async def update_spec(self, spec: LimitSpec) -> None:
        """Take new caps, buckets and queue bounds (configuration reload) with the same
        guarantees as ``set_cap``; bucket levels carry over (clipped to a smaller capacity)."""
        raise NotImplementedError
