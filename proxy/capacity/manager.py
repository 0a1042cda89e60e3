"""Every adaptive cap of one proxy: controllers fed by finished requests, applied to the store.

Theory of operation
-------------------
One ``AdaptiveCap`` per adaptive resource (``upstream:<name>``, ``gpu:<id>``). A request
admitted on an upstream feeds the controllers of that upstream and of its adaptive GPUs: one
``started`` when it goes upstream, one ``Sample`` when it ends. When a controller changes its
cap, the manager hands the new number to the store (``LimitStore.set_cap``, from a tracked
background task, never inside a request). Engine signals are read by one ``EnginePoller`` and
given to the controllers of the upstream they came from (and of its GPUs).

With several hosts on one Redis, only the host holding the capacity lease decides
(``proxy.capacity.shared``); the others forward their samples to it and adopt the cap it
writes. With the memory store this host always decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from ..config import AdaptiveConfig, Config
from ..limits.base import LimitSpec, LimitStore
from .controller import AdaptiveCap, Change, ControllerSettings, Reason
from .engines import Engine, EnginePoller, EngineProbe, EngineSignals
from .signals import Sample

if TYPE_CHECKING:
    from .shared import SharedCapacity

log = logging.getLogger("llm_throttle.capacity")


def settings_for(adaptive: AdaptiveConfig, floor: int, ceiling: int,
                 initial: int | None = None) -> ControllerSettings:
    return ControllerSettings(
        floor=floor, ceiling=ceiling, initial=initial, tolerance=adaptive.tolerance,
        window_s=adaptive.window_s, window_samples=adaptive.window_samples,
        probe_interval_s=adaptive.probe_interval_s, engine_stale_s=adaptive.engine_stale_s)


class CapacityManager:
    """The adaptive caps of one proxy; ``apply`` puts their numbers into a ``LimitSpec``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.controllers: dict[str, AdaptiveCap] = {}
        #: upstream name -> the controllers its requests feed (its own, its GPUs')
        self._fed_by: dict[str, tuple[AdaptiveCap, ...]] = {}
        self.store: LimitStore | None = None
        #: whether this host decides caps (the shared lease's holder, or the only host)
        self.deciding: Callable[[], bool] = lambda: True
        #: followers hand their samples here instead of to their own controllers
        self.forward: Callable[[str, Sample], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.poller: EnginePoller | None = None
        self._shared: SharedCapacity | None = None
        self.configure(config)

    # -- configuration -----------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Build (or, on reload, rebuild keeping each cap where bounds allow) the controllers."""
        self.config = config
        old = self.controllers
        wanted: dict[str, tuple[int, int]] = {}
        for gpu in config.gpus.values():
            if gpu.adaptive and gpu.max_in_flight:
                wanted[f"gpu:{gpu.name}"] = (gpu.min_in_flight, gpu.max_in_flight)
        for up in config.upstreams.values():
            if up.adaptive and up.max_in_flight:
                wanted[f"upstream:{up.name}"] = (up.min_in_flight, up.max_in_flight)
        controllers = {}
        for resource, (floor, ceiling) in wanted.items():
            previous = old.get(resource)
            initial = previous.cap if previous is not None else None
            settings = settings_for(config.adaptive, floor, ceiling, initial)
            if previous is not None and previous.settings == settings:
                controllers[resource] = previous
                continue
            ctrl = AdaptiveCap(settings, self._clock)
            if previous is not None:
                ctrl.baseline = previous.baseline
                ctrl.last_change = Change(self._clock(), previous.cap, ctrl.cap, Reason.CONFIG)
            ctrl.listeners.append(self._changed(resource))
            controllers[resource] = ctrl
        self.controllers = controllers
        self._fed_by = {}
        for up in config.upstreams.values():
            names = [f"upstream:{up.name}"] + [f"gpu:{g}" for g in up.gpus]
            fed = tuple(controllers[n] for n in names if n in controllers)
            if fed:
                self._fed_by[up.name] = fed
        feeders = [c for fed in self._fed_by.values() for c in fed]
        for ctrl in controllers.values():
            # a GPU behind several engines: no one engine's readings are its occupancy; with
            # caps shared over Redis, other hosts' requests are in the readings too (a reload
            # must not turn the rule back on until the next shared tick)
            ctrl.owns_engine = feeders.count(ctrl) == 1 and self._shared is None
        probes = {
            up.name: EngineProbe(up.url, Engine(up.engine), up.api_key, clock=self._clock)
            for up in config.upstreams.values()
            if up.name in self._fed_by and up.engine != Engine.NONE.value
        }
        if self.poller is not None:
            for name, probe in probes.items():  # keep what auto-detection learnt
                known = self.poller.probes.get(name)
                if known is not None and known.url == probe.url and known.engine is probe.engine:
                    probes[name] = known
            self.poller.probes = probes
            self.poller.interval_s = config.adaptive.engine_poll_s
        else:
            self.poller = EnginePoller(probes, config.adaptive.engine_poll_s, self.engine_signals)
            self.poller.before = self._polling

    def apply(self, spec: LimitSpec) -> LimitSpec:
        """``spec`` with every adaptive resource's cap set to its controller's."""
        if not self.controllers:
            return spec
        return replace(spec, caps={**spec.caps,
                                   **{r: c.cap for r, c in self.controllers.items()}})

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, store: LimitStore) -> None:
        self.store = store
        if self.poller is not None:
            self.poller.start()
        if self.controllers and store.name == "redis":
            from ..limits.redis import RedisStore
            from .shared import SharedCapacity

            if isinstance(store, RedisStore):
                self._shared = SharedCapacity(self, store, self.config.adaptive.window_s)
                self._shared.start()

    async def stop(self) -> None:
        if self.poller is not None:
            await self.poller.stop()
        if self._shared is not None:
            await self._shared.stop()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- inputs ------------------------------------------------------------------------------

    def started(self, upstream: str) -> None:
        for ctrl in self._fed_by.get(upstream, ()):
            ctrl.started()

    def finished(self, upstream: str, sample: Sample) -> None:
        fed = self._fed_by.get(upstream)
        if not fed:
            return
        if self.forward is not None and not self.deciding():
            for ctrl in fed:
                ctrl.in_flight = max(0, ctrl.in_flight - 1)
            self.forward(upstream, sample)
            return
        for ctrl in fed:
            ctrl.finished(sample)

    def record_forwarded(self, upstream: str, sample: Sample) -> None:
        """A sample another host measured (the lease holder feeds its controllers)."""
        for ctrl in self._fed_by.get(upstream, ()):
            ctrl.record(sample)

    def _polling(self) -> None:
        for ctrl in self.controllers.values():
            ctrl.polling()

    def engine_signals(self, upstream: str, signals: EngineSignals) -> None:
        for ctrl in self._fed_by.get(upstream, ()):
            ctrl.set_engine(signals)

    def adopt(self, caps: Mapping[str, int | None]) -> None:
        """Caps another host decided (followers of the shared lease)."""
        for resource, cap in caps.items():
            ctrl = self.controllers.get(resource)
            if ctrl is not None and cap is not None and cap != ctrl.cap:
                ctrl.adopt(cap)

    # -- output ------------------------------------------------------------------------------

    def _changed(self, resource: str) -> Callable[[AdaptiveCap, Change], None]:
        def apply(ctrl: AdaptiveCap, change: Change) -> None:
            if change.reason is Reason.SHARED or not self.deciding():
                return  # written by the host that decided it
            log.info("adaptive cap of %s: %d -> %d (%s)", resource, change.old, change.new,
                     change.reason.value)
            if self.store is not None:
                task = asyncio.get_running_loop().create_task(self._write(resource, ctrl))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return apply

    async def _write(self, resource: str, ctrl: AdaptiveCap) -> None:
        """The cap as it is when this runs: changes in quick succession end on the last."""
        if self.store is not None:
            await self.store.set_cap(resource, ctrl.cap)

    def status(self) -> dict[str, dict]:
        return {resource: ctrl.status() for resource, ctrl in self.controllers.items()}
