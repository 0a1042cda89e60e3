"""The configuration's shape: frozen dataclasses, their defaults, and the allowed values.

Each default is written once, on its dataclass field; the parser reads it back with
``defaults_of`` (``proxy/config_parse.py``), so the file format and the Python API cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

WILDCARD_MODEL = "*"
#: see ``proxy/families.py``: llama.cpp's tokenizer and template helpers, Ollama's model info
DEFAULT_PASSTHROUGH_PATHS = frozenset({"/tokenize", "/detokenize", "/apply-template",
                                       "/api/show"})
PRIORITIES = ("interactive", "batch")
STORE_ERROR_POLICIES = ("local_share", "local_split", "open", "closed")
ENGINES = ("auto", "vllm", "llamacpp", "ollama", "none")
FAIRNESS_MODES = ("tokens", "requests", "fifo", "attained")
ACCESS_LOG_FORMATS = ("plain", "json")


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class GpuConfig:
    name: str
    max_in_flight: int | None = None
    adaptive: bool = False  # max_in_flight becomes the ceiling (docs/capacity.md)
    min_in_flight: int = 1


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str  # origin, no trailing slash; the request path is appended
    api_key: str | None = None
    gpus: tuple[str, ...] = ()
    max_in_flight: int | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0  # longest silence allowed between two upstream bytes
    adaptive: bool = False  # max_in_flight becomes the ceiling (docs/capacity.md)
    min_in_flight: int = 1
    engine: str = "auto"  # where engine signals come from (proxy/capacity/engines.py)
    #: pooled connections unused this long are closed: below common upstream keep-alive
    #: timeouts (uvicorn and llama-server 5 s), so the upstream never closes one under a request
    idle_timeout_s: float = 4.0
    max_response_body_bytes: int = 64 * 1024 * 1024  # a non-streamed answer read whole
    ca_file: str | None = None  # https: CA bundle to verify the upstream (default: system)
    verify: bool = True  # https: verify the certificate and host name
    server_hostname: str | None = None  # https: name for SNI and verification (default: host)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    upstreams: tuple[str, ...]
    max_in_flight: int | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_tokens_estimate: int = 4096  # cap on what a request without max_tokens reserves
    burst_s: float = 5.0  # bucket size, in seconds of rate


@dataclass(frozen=True, slots=True)
class ClientConfig:
    name: str
    key: str | None = None
    key_sha256: str | None = None
    priority: str = "batch"
    max_in_flight: int | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_s: float = 5.0
    weight: float = 1.0  # share of the queue against other clients of its class
    #: a queued streaming request is answered 200 with SSE comments while it waits
    queue_keepalive: bool = False


@dataclass(frozen=True, slots=True)
class QueueConfig:
    max_depth: int = 1000
    max_wait_s: float = 120.0
    fairness: str = "tokens"  # tokens | requests | fifo | attained (least served flow first)
    starvation_s: float = 30.0  # attained: a waiter queued this long goes first, oldest first
    class_weights: Mapping[str, float] = field(
        default_factory=lambda: {"interactive": 9.0, "batch": 1.0})
    keepalive_after_s: float = 5.0  # a kept-alive stream's head goes after this long queued
    keepalive_interval_s: float = 5.0  # then one SSE comment line this often


@dataclass(frozen=True, slots=True)
class AttributionConfig:
    """Finer client identity from a request header, under an authenticated key."""

    header: str | None = None  # e.g. "x-hermes-profile"
    max_in_flight: int | None = None  # per attributed identity, within the key's own limits
    priority_header: str | None = None  # may lower priority (interactive -> batch), never raise
    #: distinct values shown in metrics and status; the rest are folded into "<client>/other"
    max_values: int = 100
    value_idle_s: float = 600.0  # a value unseen this long is forgotten (its series dropped)


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """One line per answered request on logger ``llm_throttle.access`` (proxy/access_log.py)."""

    enabled: bool = False
    format: str = "plain"  # or "json"
    include_admin: bool = False  # also /metrics, /throttle/status, /healthz


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """``GET /throttle/events``, the pushed admission state (proxy/events.py)."""

    max_subscribers: int = 16  # one more is refused with a 503
    poll_s: float = 0.1  # how often the state is looked at while someone listens
    keepalive_s: float = 15.0  # a comment line after this long without an event
    stall_s: float = 30.0  # a subscriber that takes nothing this long is disconnected


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """Tuning shared by every adaptive cap (docs/capacity.md)."""

    tolerance: float = 0.15  # latency within baseline * (1 + tolerance) counts as no load
    window_s: float = 1.0  # shortest decision window
    window_samples: int = 8  # fewest finished requests per decision (at least the cap)
    probe_interval_s: float = 60.0  # how often the no-load baseline is measured again
    engine_poll_s: float = 2.0  # how often engine signals are read
    engine_stale_s: float = 10.0  # older engine signals are ignored


@dataclass(frozen=True, slots=True)
class RedisConfig:
    heartbeat_s: float = 1.0
    lease_ttl_s: float = 5.0
    #: deadline of every Redis call, hot path included (a silent Redis degrades the store)
    command_timeout_s: float = 1.0
    on_store_error_concurrency: str = "local_share"
    on_store_error_rates: str = "open"
    key_prefix: str = "llmthrottle"


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_listen: tuple[str, int] | None = None  # serve /metrics and /throttle/status apart
    admin_key: str | None = None
    store: str = "memory"
    gpus: Mapping[str, GpuConfig] = field(default_factory=dict)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    clients: Mapping[str, ClientConfig] = field(default_factory=dict)
    queue: QueueConfig = field(default_factory=QueueConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    max_body_bytes: int = 16 * 1024 * 1024
    passthrough_upstream: str | None = None  # where model-less paths go; default: the first
    #: normalized paths whose POSTs pass through without admission (cheap engine routes)
    passthrough_paths: frozenset[str] = DEFAULT_PASSTHROUGH_PATHS
    #: GET/HEAD paths served without a client key (read-only probes: /version, /api/tags...);
    #: a trailing ``*`` matches any path under that prefix
    public_paths: tuple[str, ...] = ()
    shutdown_grace_s: float = 30.0
    body_read_timeout_s: float = 60.0  # a client slower than this to send its body gets 408
    #: a connection without a whole request head this long after opening (or after its last
    #: response) is closed: slow-header (slowloris) and idle keep-alive guard; also one whose
    #: client has not taken its written answers for this long
    header_read_timeout_s: float = 30.0
    #: client connections served at once; one more is answered 503 and closed
    max_connections: int = 4096

    @property
    def requires_client_keys(self) -> bool:
        return bool(self.clients)

    @property
    def default_passthrough(self) -> UpstreamConfig:
        name = self.passthrough_upstream or next(iter(self.upstreams))
        return self.upstreams[name]


def defaults_of(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults by name: the parser takes each default from the dataclass,
    so it is written once (a second copy in the parser drifted)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
