"""Engine signals: what the upstream server says about its own load, read in the background.

Formats read (``engine:`` of an upstream; ``auto`` tries them in this order and keeps the
first that answers):

- ``vllm``: ``GET /metrics`` (Prometheus text): ``vllm:num_requests_waiting``,
  ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc`` (older releases:
  ``vllm:gpu_cache_usage_perc``), each summed over its label sets;
- ``llamacpp``: ``GET /slots`` (busy = ``is_processing``, or ``state != 0`` on older builds),
  ``GET /props`` (``total_slots``), and ``GET /metrics`` when the server runs with
  ``--metrics`` (``llamacpp:requests_deferred`` is its waiting queue);
- ``ollama``: ``GET /api/ps`` (the models loaded now; Ollama publishes no queue).

A signal is a snapshot with the time it was read (``fetched_at``); the controller ignores one
older than its staleness bound, so a poller that stops answering leaves latency alone in
charge. Nothing here decides a cap.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from ..tasks import cancel_and_wait

log = logging.getLogger("llm_throttle.capacity")


class Engine(enum.Enum):
    AUTO = "auto"
    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    OLLAMA = "ollama"
    NONE = "none"


ENGINE_NAMES = tuple(e.value for e in Engine)


@dataclass(frozen=True, slots=True)
class EngineSignals:
    engine: Engine
    fetched_at: float
    waiting: int | None = None
    running: int | None = None
    kv_usage: float | None = None  # 0..1
    slots_total: int | None = None
    slots_busy: int | None = None
    loaded_models: tuple[str, ...] | None = None

    def to_dict(self, age_s: float) -> dict[str, Any]:
        return {
            "engine": self.engine.value,
            "age_s": round(age_s, 3),
            "waiting": self.waiting,
            "running": self.running,
            "kv_usage": self.kv_usage,
            "slots_total": self.slots_total,
            "slots_busy": self.slots_busy,
            "loaded_models": list(self.loaded_models) if self.loaded_models is not None
            else None,
        }


def prometheus_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of every sample of each wanted metric name (labels ignored)."""
    wanted = set(names)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = len(line)
        for sep in ("{", " "):
            i = line.find(sep)
            if 0 <= i < name_end:
                name_end = i
        name = line[:name_end]
        if name not in wanted:
            continue
        rest = line[name_end:]
        if rest.startswith("{"):
            rest = rest.rsplit("}", 1)[-1]
        value_text = rest.split()
        if not value_text:
            continue
        try:
            value = float(value_text[0])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def _int(value: float | None) -> int | None:
    return None if value is None else round(value)


def parse_vllm_metrics(text: str, now: float) -> EngineSignals | None:
    sums = prometheus_sums(text, ("vllm:num_requests_waiting", "vllm:num_requests_running",
                                  "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"))
    if "vllm:num_requests_waiting" not in sums and "vllm:num_requests_running" not in sums:
        return None
    kv = sums.get("vllm:kv_cache_usage_perc", sums.get("vllm:gpu_cache_usage_perc"))
    return EngineSignals(Engine.VLLM, now, waiting=_int(sums.get("vllm:num_requests_waiting")),
                         running=_int(sums.get("vllm:num_requests_running")), kv_usage=kv)


def parse_llamacpp(slots: Any, props: Any, metrics_text: str | None,
                   now: float) -> EngineSignals | None:
    """``/slots`` (a list), ``/props`` (a mapping) and optional ``/metrics`` text."""
    total = busy = None
    if isinstance(slots, list):
        total = len(slots)
        busy = 0
        for slot in slots:
            if isinstance(slot, Mapping):
                if "is_processing" in slot:
                    busy += bool(slot["is_processing"])
                elif slot.get("state"):
                    busy += 1
    if isinstance(props, Mapping) and isinstance(props.get("total_slots"), int):
        total = props["total_slots"]
    waiting = running = None
    if metrics_text:
        sums = prometheus_sums(metrics_text, ("llamacpp:requests_deferred",
                                              "llamacpp:requests_processing"))
        waiting = _int(sums.get("llamacpp:requests_deferred"))
        running = _int(sums.get("llamacpp:requests_processing"))
    if total is None and waiting is None:
        return None
    return EngineSignals(Engine.LLAMACPP, now, waiting=waiting,
                         running=running if running is not None else busy,
                         slots_total=total, slots_busy=busy)


def parse_ollama_ps(doc: Any, now: float) -> EngineSignals | None:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        return None
    names = tuple(str(m.get("name", "")) for m in doc["models"] if isinstance(m, Mapping))
    return EngineSignals(Engine.OLLAMA, now, loaded_models=names)


class EngineProbe:
    """Reads one upstream's engine signals over HTTP (one call per poll)."""

    def __init__(self, url: str, engine: Engine, api_key: str | None = None,
                 timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.engine = engine
        self.detected: Engine | None = None if engine is Engine.AUTO else engine
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock

    async def _get(self, session: aiohttp.ClientSession, path: str, json_body: bool) -> Any:
        async with session.get(self.url + path, headers=self._headers,
                               timeout=self._timeout) as response:
            if response.status != 200:
                return None
            if json_body:
                return await response.json(content_type=None)
            return await response.text()

    async def read(self, session: aiohttp.ClientSession) -> EngineSignals | None:
        kinds = [self.detected] if self.detected else [Engine.VLLM, Engine.LLAMACPP,
                                                       Engine.OLLAMA]
        for kind in kinds:
            try:
                signals = await self._read_kind(session, kind)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                signals = None
            if signals is not None:
                self.detected = kind
                return signals
        return None

    async def _read_kind(self, session: aiohttp.ClientSession,
                         kind: Engine) -> EngineSignals | None:
        if kind is Engine.VLLM:
            text = await self._get(session, "/metrics", False)
            return parse_vllm_metrics(text, self._clock()) if text else None
        if kind is Engine.LLAMACPP:
            slots = await self._get(session, "/slots", True)
            props = await self._get(session, "/props", True)
            try:
                metrics = await self._get(session, "/metrics", False)
            except (TimeoutError, aiohttp.ClientError):
                metrics = None
            if metrics and "llamacpp:" not in metrics:
                metrics = None
            if slots is None and metrics is None:
                return None  # /props alone is every OpenAI-ish server's probe answer
            return parse_llamacpp(slots, props, metrics, self._clock())
        if kind is Engine.OLLAMA:
            doc = await self._get(session, "/api/ps", True)
            return parse_ollama_ps(doc, self._clock())
        return None


class EnginePoller:
    """One background loop reading every probe each ``interval_s``; hands results on."""

    def __init__(self, probes: Mapping[str, EngineProbe], interval_s: float,
                 deliver: Callable[[str, EngineSignals], None]):
        self.probes = probes
        self.interval_s = interval_s
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        self.last: dict[str, EngineSignals] = {}
        #: called as each poll begins (the controllers count their requests at the engine)
        self.before: Callable[[], None] | None = None

    def start(self) -> None:
        if self.probes and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        if self.before is not None:
            self.before()
        names = list(self.probes)
        results = await asyncio.gather(*(self.probes[n].read(session) for n in names),
                                       return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, EngineSignals):
                self.last[name] = result
                self._deliver(name, result)
            elif isinstance(result, BaseException) and \
                    not isinstance(result, asyncio.CancelledError):
                log.debug("engine probe of %s failed: %r", name, result)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self.poll_once(session)
                await asyncio.sleep(self.interval_s)


def with_age(signals: EngineSignals, fetched_at: float) -> EngineSignals:
    """The same signals stamped with another read time (tests)."""
    return replace(signals, fetched_at=fetched_at)
