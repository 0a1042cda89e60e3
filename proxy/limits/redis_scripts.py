"""The Redis store's wire format: key names, Lua scripts, and how demands are encoded.

Every key of a pool shares one hash tag (``{llmthrottle}:...``) so each script can declare all
of them and run on one Redis Cluster shard. Scripts are package data files (``lua/*.lua``),
each prefixed with ``lua/lib.lua`` and registered once per client (EVALSHA; redis-py loads a
script again by itself after a Redis restart answers NOSCRIPT).

Caps and bucket specs travel in each demand (from ``LimitSpec``, which every host builds from
the same configuration), so a queued waiter carries everything a hand-off on another host must
check, and resources named at run time (``prefix_caps``) need no registry. A cap changed at
run time (``set_cap``: an adaptive cap, a reload) is a *live cap* in the config hash
(``l:<resource>``) that the scripts prefer over the one the demand carries, so every host and
every queued waiter obeys the one number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .base import Charge, Demand, Fairness, LimitSpec

KEY_NAMES = (
    "meta", "inflight", "leases", "hosts", "hostn", "tombs", "queue", "waiters", "queued",
    "blocked", "buckets", "grants", "hold", "config", "units", "fq", "fair",
)
#: the fairness mode as the scripts spell it
FAIRNESS_CODES = {Fairness.TOKENS: "t", Fairness.REQUESTS: "r", Fairness.FIFO: "f",
                  Fairness.ATTAINED: "a"}
SCRIPT_NAMES = ("admit", "release", "cancel", "scan", "heartbeat", "register", "prune",
                "leave", "snapshot", "setcap")
#: bounds the cache of encoded resource parts (resource names can be made at run time)
ENCODED_CACHE_SIZE = 4096


def pool_keys(key_prefix: str) -> list[str]:
    """Every key of one pool, in the order the scripts read ``KEYS``."""
    return [f"{{{key_prefix}}}:{name}" for name in KEY_NAMES]


def _source(name: str) -> str:
    folder = resources.files("proxy.limits") / "lua"
    return (folder / "lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    """The registered scripts of one client."""

    admit: AsyncScript
    release: AsyncScript
    cancel: AsyncScript
    scan: AsyncScript
    heartbeat: AsyncScript
    register: AsyncScript
    prune: AsyncScript
    leave: AsyncScript
    snapshot: AsyncScript
    setcap: AsyncScript

    @classmethod
    def load(cls, client: Redis) -> Scripts:
        return cls(**{name: load_script(client, name) for name in SCRIPT_NAMES})


def load_script(client: Redis, name: str) -> AsyncScript:
    """One script (``lua/<name>.lua`` after ``lua/lib.lua``), registered on ``client``."""
    return client.register_script(_source(name))


class DemandEncoder:
    """Turns demands and charges into the JSON the scripts read, caching the static part.

    Most of a demand (its resources, options and their caps) repeats from one request to the
    next of the same route, so that part is encoded once and reused.
    """

    def __init__(self, spec: LimitSpec):
        self.spec = spec
        self._parts: dict[tuple[Any, ...], str] = {}

    def demand(self, demand: Demand) -> str:
        key = (demand.priority, demand.resources, demand.options, demand.flow, demand.weight)
        part = self._parts.get(key)
        if part is None:
            part = self._static_part(demand)
            if len(self._parts) >= ENCODED_CACHE_SIZE:
                self._parts.clear()
            self._parts[key] = part
        return f'{part},"n":{demand.cost!r},"c":{self.charges(demand.charges) or "[]"}}}'

    def _static_part(self, demand: Demand) -> str:
        caps: dict[str, int] = {}
        names = list(demand.resources)
        for option in demand.options:
            names.extend(option.resources)
        for name in names:
            cap = self.spec.cap_of(name)
            if cap is not None:
                caps[name] = cap
        fields: dict[str, object] = {
            "p": int(demand.priority),
            "r": list(demand.resources),
            "o": [list(option.resources) for option in demand.options],
            "k": caps,
            "f": demand.flow,
            "w": demand.weight,
            "cw": self.spec.class_weights.get(demand.priority, 1.0),
            "m": FAIRNESS_CODES[self.spec.fairness],
        }
        if self.spec.fairness is Fairness.ATTAINED and self.spec.starvation_s is not None:
            fields["sv"] = self.spec.starvation_s * 1000.0  # ms, as the scripts' clock
        body = json.dumps(fields, separators=(",", ":"))
        # An empty Python dict or list must still decode as a Lua table: JSON gives that.
        return body[:-1]

    def charges(self, charges: Sequence[Charge]) -> str:
        """``[[bucket, amount, capacity, rate_per_s], ...]``; '' when none applies.

        Charges to buckets the configuration does not define are ignored, as in memory.
        """
        out = []
        for c in charges:
            spec = self.spec.buckets.get(c.bucket)
            if spec is not None:
                out.append([c.bucket, c.amount, spec.capacity, spec.rate_per_s])
        return json.dumps(out, separators=(",", ":")) if out else ""


def config_fields(spec: LimitSpec) -> dict[str, str]:
    """What a reader without a proxy needs to render status: caps, bucket specs, queue."""
    fields = {
        "max_depth": str(spec.max_queue_depth),
        "max_wait_s": repr(spec.max_wait_s),
    }
    for name, cap in spec.caps.items():
        fields[f"c:{name}"] = "" if cap is None else str(cap)
    for prefix, cap in spec.prefix_caps.items():
        fields[f"p:{prefix}"] = str(cap)
    for name, bucket in spec.buckets.items():
        fields[f"b:{name}"] = f"{bucket.capacity!r} {bucket.rate_per_s!r}"
    return fields


#: a live cap of this value means "no cap" (a reload removed it)
UNCAPPED = -1


def live_cap_fields(fields: dict[str, str]) -> dict[str, int | None]:
    """The live caps among the config hash's fields."""
    out: dict[str, int | None] = {}
    for name, value in fields.items():
        if name.startswith("l:"):
            cap = int(value)
            out[name[2:]] = None if cap == UNCAPPED else cap
    return out


def pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """A flat ``[k1, v1, k2, v2, ...]`` script reply as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
