"""From configuration to limits: which resources and buckets each request needs.

Everything that can be decided once is decided here at start-up (resource names, the options
of each model, bucket sizes), so the per-request work is a dict lookup and a few tuples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .auth import Identity
from .config import WILDCARD_MODEL, Config, ModelConfig, UpstreamConfig
from .errors import InvalidField, ModelNotFound
from .limits.base import BucketSpec, Charge, Demand, Fairness, Grant, LimitSpec, Option, Priority
from .parse import ParsedRequest
from .tokens import reservation

#: a client's own bound on its queue wait, in ms (shorter than the queue's only)
MAX_WAIT_HEADER = "x-llm-throttle-max-wait-ms"


def requested_max_wait(headers: Mapping[str, str]) -> float | None:
    """The wait bound a request asks for (seconds), or None; 400 when it is not a number."""
    value = headers.get(MAX_WAIT_HEADER)
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms < 0:
        raise InvalidField(f"the {MAX_WAIT_HEADER} header must be a number of milliseconds >= 0",
                           param=MAX_WAIT_HEADER)
    return ms / 1000


@dataclass(frozen=True, slots=True)
class Route:
    """A configured model: what it holds while running and where it may run."""

    model: ModelConfig
    resources: tuple[str, ...]
    options: tuple[Option, ...]
    rpm_bucket: str | None
    tpm_bucket: str | None


def build_limit_spec(config: Config) -> LimitSpec:
    """Every cap and bucket of the configuration, by resource / bucket name."""
    caps: dict[str, int | None] = {}
    buckets: dict[str, BucketSpec] = {}

    def add_buckets(kind: str, name: str, rpm: float | None, tpm: float | None,
                    burst_s: float) -> None:
        for prefix, per_minute in (("rpm", rpm), ("tpm", tpm)):
            if per_minute:
                rate = per_minute / 60.0
                buckets[f"{prefix}:{kind}:{name}"] = BucketSpec(max(rate * burst_s, 1.0), rate)

    for gpu in config.gpus.values():
        caps[f"gpu:{gpu.name}"] = gpu.max_in_flight
    for upstream in config.upstreams.values():
        caps[f"upstream:{upstream.name}"] = upstream.max_in_flight
    for model in config.models.values():
        caps[f"model:{model.name}"] = model.max_in_flight
        add_buckets("model", model.name, model.requests_per_minute, model.tokens_per_minute,
                    model.burst_s)
    for client in config.clients.values():
        caps[f"client:{client.name}"] = client.max_in_flight
        add_buckets("client", client.name, client.requests_per_minute, client.tokens_per_minute,
                    client.burst_s)
    prefix_caps = {}
    if config.attribution.max_in_flight is not None:
        prefix_caps["attr:"] = config.attribution.max_in_flight
    live = [f"gpu:{g.name}" for g in config.gpus.values() if g.adaptive]
    live += [f"upstream:{u.name}" for u in config.upstreams.values() if u.adaptive]
    return LimitSpec(
        caps=caps,
        buckets=buckets,
        max_queue_depth=config.queue.max_depth,
        max_wait_s=config.queue.max_wait_s,
        prefix_caps=prefix_caps,
        live=frozenset(live),
        fairness=Fairness(config.queue.fairness),
        starvation_s=config.queue.starvation_s,
        class_weights={Priority.parse(name): weight
                       for name, weight in config.queue.class_weights.items()},
    )


def _option(upstream: UpstreamConfig) -> Option:
    return Option(upstream.name, (f"upstream:{upstream.name}",) + tuple(
        f"gpu:{gpu}" for gpu in upstream.gpus
    ))


class AdmissionPolicy:
    """Turns an authenticated, parsed request into a ``Demand`` for the store."""

    def __init__(self, config: Config):
        self.config = config
        self.spec = build_limit_spec(config)
        self.routes = {
            name: Route(
                model=model,
                resources=(f"model:{name}",),
                options=tuple(_option(config.upstreams[u]) for u in model.upstreams),
                rpm_bucket=f"rpm:model:{name}" if model.requests_per_minute else None,
                tpm_bucket=f"tpm:model:{name}" if model.tokens_per_minute else None,
            )
            for name, model in config.models.items()
        }
        self._wildcard = self.routes.get(WILDCARD_MODEL)
        self._weights = {name: client.weight for name, client in config.clients.items()}

    def route(self, model: str | None) -> Route:
        """The model's route, else ``*``; a request without a model needs a ``*`` route."""
        if model is None:
            if self._wildcard is None:
                raise InvalidField("you must provide a model parameter", code="missing_model",
                                   param="model")
            return self._wildcard
        route = self.routes.get(model, self._wildcard)
        if route is None:
            raise ModelNotFound(
                f"the model '{model[:200]}' does not exist or is not served by this proxy",
                param="model",
            )
        return route

    def demand(self, route: Route, identity: Identity, parsed: ParsedRequest,
               request_id: str, max_wait_s: float | None = None) -> tuple[Demand, int]:
        """The demand, and the tokens it reserves (also charged to its flow's fair share).

        ``max_wait_s``: the request's own wait bound, kept only when shorter than the queue's.
        """
        reserved = reservation(
            len(parsed.body), parsed.max_tokens, route.model.max_tokens_estimate, parsed.generates,
            parsed.choices,
        )
        charges: list[Charge] = []
        if route.rpm_bucket:
            charges.append(Charge(route.rpm_bucket, 1))
        if route.tpm_bucket:
            charges.append(Charge(route.tpm_bucket, reserved))
        for bucket in identity.buckets:
            charges.append(Charge(bucket, 1 if bucket.startswith("rpm:") else reserved))
        demand = Demand(
            request_id=request_id,
            priority=identity.priority,
            resources=route.resources + identity.resources,
            options=route.options,
            charges=tuple(charges),
            max_wait_s=max_wait_s if max_wait_s is not None and
            max_wait_s < self.spec.max_wait_s else None,
            flow=identity.label,
            weight=self._weights.get(identity.name, 1.0),
            cost=float(reserved),
        )
        return demand, reserved


def settlement(grant: Grant, reserved: int, used: int) -> tuple[Charge, ...]:
    """Corrections to the token buckets once the real usage is known (may be refunds)."""
    delta = used - reserved
    if delta == 0:
        return ()
    return tuple(Charge(c.bucket, delta) for c in grant.charges if c.bucket.startswith("tpm:"))
