"""The proxy's configuration: YAML in, frozen dataclasses out, every error with its key path.

A bad file never half-loads: ``parse_config`` collects every problem it finds (unknown keys,
wrong types, references to undefined upstreams or GPUs, unset ``${ENV}`` variables) and raises
one ``ConfigError`` listing them all, each prefixed with the path of the bad key
(``models.qwen.upstreams[1]: unknown upstream 'vllm-c'``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .paths import normalized_path
from .yamlfile import YamlProblems, load_yaml

WILDCARD_MODEL = "*"
#: see ``proxy/families.py``: llama.cpp's tokenizer and template helpers, Ollama's model info
DEFAULT_PASSTHROUGH_PATHS = frozenset({"/tokenize", "/detokenize", "/apply-template",
                                       "/api/show"})
PRIORITIES = ("interactive", "batch")
STORE_ERROR_POLICIES = ("local_share", "local_split", "open", "closed")
ENGINES = ("auto", "vllm", "llamacpp", "ollama", "none")
FAIRNESS_MODES = ("tokens", "requests", "fifo")
ACCESS_LOG_FORMATS = ("plain", "json")

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
    fairness: str = "tokens"  # tokens | requests | fifo (strict priority, then arrival)
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


def interpolate_env(text: str, environ: Mapping[str, str], problems: list[str], path: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_PATTERN.sub(replace, text)


class _Section:
    """Reads one mapping of the file, recording problems instead of raising at the first."""

    def __init__(self, data: Any, path: str, problems: list[str], environ: Mapping[str, str]):
        self.path = path
        self.problems = problems
        self.environ = environ
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.append(f"{path or '(top level)'}: expected a mapping, got {_kind(data)}")
            data = {}
        self.data: Mapping[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if isinstance(value, str):
            value = interpolate_env(value, self.environ, self.problems, self.key_path(key))
        return value

    def has(self, key: str) -> bool:
        return key in self.data

    def section(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key), self.key_path(key), self.problems, self.environ)

    def str(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problems.append(f"{self.key_path(key)}: expected a string, got {_kind(value)}")
            return default
        if choices and value not in choices:
            self.problems.append(
                f"{self.key_path(key)}: must be one of {', '.join(choices)}, got {value!r}"
            )
            return default
        return value

    def number(
        self, key: str, default: Any = None, *, integer: bool = False, minimum: float = 0,
        exclusive: bool = True,
    ) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = _parse_number(value)
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            what = "an integer" if integer else "a number"
            self.problems.append(f"{self.key_path(key)}: expected {what}, got {_kind(value)}")
            return default
        if value < minimum or (exclusive and value == minimum):
            sign = ">" if exclusive else ">="
            self.problems.append(f"{self.key_path(key)}: must be {sign} {minimum}, got {value}")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"{self.key_path(key)}: expected true or false, got "
                                 f"{_kind(value)}")
            return default
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problems.append(f"{self.key_path(key)}: expected a list, got {_kind(value)}")
            return ()
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problems.append(f"{self.key_path(key)}[{i}]: expected a string")
                continue
            where = f"{self.key_path(key)}[{i}]"
            out.append(interpolate_env(item, self.environ, self.problems, where))
        return tuple(out)

    def finish(self) -> None:
        """Unknown keys are errors: a typo must not silently drop a limit."""
        for key in self.data:
            if key not in self.seen:
                self.problems.append(f"{self.key_path(str(key))}: unknown key")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def _parse_number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` or ``:port``; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:8080, [::1]:8080, or :8080 for "
                         f"all interfaces), got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port_number = int(port)
    except ValueError:
        raise ValueError(f"expected host:port with a numeric port, got {text!r}") from None
    if not 0 <= port_number < 65536:
        raise ValueError(f"port out of range: {port_number}")
    return host, port_number


def _public_paths(top: _Section) -> tuple[str, ...]:
    """``/path`` (GET/HEAD) or ``POST /path`` (a read-only POST probe such as Ollama's
    ``/api/show``); never an admitted path, an admin route, or everything."""
    entries = top.str_list("public_paths")
    for i, entry in enumerate(entries):
        where = f"public_paths[{i}]"
        method, _, path = entry.rpartition(" ")
        if method not in ("", "POST") or not path.startswith("/") or "?" in path \
                or "*" in path[:-1]:
            top.problems.append(f"{where}: expected a path like /version or /api/*, or "
                                f"'POST /api/show', got {entry!r}")
        elif path.rstrip("*") in ("/throttle/status", "/metrics", "/healthz", "/", ""):
            top.problems.append(f"{where}: {entry!r} would open the admin routes or every path")
        elif method == "POST" and path.endswith("*"):
            top.problems.append(f"{where}: {entry!r}: a POST prefix would cover admitted "
                                "paths, which always need a key")
    return entries


def _listen_text(top: _Section, key: str) -> str | None:
    """A bare number (``listen: 55777``) is the commonest slip: say what is expected."""
    raw = top.data.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        top.seen.add(key)
        top.problems.append(f"{key}: expected \"host:port\", got the number {raw}; write "
                            f"\"127.0.0.1:{raw}\" (this host only) or \":{raw}\" (all interfaces)")
        return None
    return top.str(key)


def _named(
    section: _Section, key: str, build: Callable[[str, _Section], Any]
) -> dict[str, Any]:
    group = section.section(key)
    out = {}
    for name in group.data:
        entry = group.section(str(name))
        out[str(name)] = build(str(name), entry)
        entry.finish()
    return out


def _gpu(name: str, s: _Section) -> GpuConfig:
    gpu = GpuConfig(name, s.number("max_in_flight", integer=True), s.flag("adaptive", False),
                    s.number("min_in_flight", 1, integer=True))
    _check_adaptive(s, gpu.adaptive, gpu.max_in_flight, gpu.min_in_flight)
    return gpu


def _check_adaptive(s: _Section, adaptive: bool, ceiling: int | None, floor: int) -> None:
    if adaptive and ceiling is None:
        s.problems.append(f"{s.key_path('adaptive')}: needs max_in_flight (the ceiling)")
    elif ceiling is not None and floor > ceiling:
        s.problems.append(f"{s.key_path('min_in_flight')}: must not exceed max_in_flight")


def _upstream(name: str, s: _Section) -> UpstreamConfig:
    d = defaults_of(UpstreamConfig)
    url = s.str("url")
    if url is None:
        s.problems.append(f"{s.key_path('url')}: required")
        url = ""
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            s.problems.append(f"{s.key_path('url')}: expected http(s)://host:port, got {url!r}")
        elif parts.query or parts.fragment:
            s.problems.append(f"{s.key_path('url')}: must not carry a query or fragment")
        url = url.rstrip("/")
    api_key = s.str("api_key") or None
    if api_key is not None and not api_key.isprintable():
        # it becomes a header line: a newline in it would add headers of its own
        s.problems.append(f"{s.key_path('api_key')}: must not contain control characters "
                          "(a stray newline from an environment variable?)")
    upstream = UpstreamConfig(
        name=name,
        url=url,
        api_key=api_key,
        gpus=s.str_list("gpus"),
        max_in_flight=s.number("max_in_flight", integer=True),
        connect_timeout_s=s.number("connect_timeout_s", d["connect_timeout_s"]),
        read_timeout_s=s.number("read_timeout_s", d["read_timeout_s"]),
        adaptive=s.flag("adaptive", False),
        min_in_flight=s.number("min_in_flight", 1, integer=True),
        engine=s.str("engine", "auto", choices=ENGINES),
        idle_timeout_s=s.number("idle_timeout_s", d["idle_timeout_s"]),
        max_response_body_bytes=s.number("max_response_body_bytes",
                                         d["max_response_body_bytes"], integer=True),
        **_upstream_tls(url, s),
    )
    _check_adaptive(s, upstream.adaptive, upstream.max_in_flight, upstream.min_in_flight)
    return upstream


def _upstream_tls(url: str, s: _Section) -> dict[str, Any]:
    """``ca_file``, ``verify``, ``server_hostname``: only meaningful for https."""
    ca_file = s.str("ca_file")
    server_hostname = s.str("server_hostname")
    verify = s.flag("verify", True)
    https = urlsplit(url).scheme == "https"
    for key, value in (("ca_file", ca_file), ("server_hostname", server_hostname),
                       ("verify", None if verify else False)):
        if value is not None and not https:
            s.problems.append(f"{s.key_path(key)}: only for an https:// url")
    if ca_file is not None and https and not os.path.isfile(ca_file):
        s.problems.append(f"{s.key_path('ca_file')}: no such file {ca_file!r}")
    return {"ca_file": ca_file, "verify": verify, "server_hostname": server_hostname}


def _model(name: str, s: _Section) -> ModelConfig:
    d = defaults_of(ModelConfig)
    upstreams = s.str_list("upstreams")
    if not upstreams:
        s.problems.append(f"{s.key_path('upstreams')}: at least one upstream is required")
    return ModelConfig(
        name=name,
        upstreams=upstreams,
        max_in_flight=s.number("max_in_flight", integer=True),
        requests_per_minute=s.number("requests_per_minute"),
        tokens_per_minute=s.number("tokens_per_minute"),
        max_tokens_estimate=s.number("max_tokens_estimate", d["max_tokens_estimate"],
                                     integer=True),
        burst_s=s.number("burst_s", d["burst_s"]),
    )


def _client(name: str, s: _Section) -> ClientConfig:
    d = defaults_of(ClientConfig)
    key, digest = s.str("key") or None, s.str("key_sha256")
    if digest is not None:
        digest = digest.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            s.problems.append(f"{s.key_path('key_sha256')}: expected 64 hex digits")
    if key is None and digest is None:
        s.problems.append(f"{s.path}: needs a key or a key_sha256")
    return ClientConfig(
        name=name,
        key=key,
        key_sha256=digest,
        priority=s.str("priority", d["priority"], choices=PRIORITIES),
        max_in_flight=s.number("max_in_flight", integer=True),
        requests_per_minute=s.number("requests_per_minute"),
        tokens_per_minute=s.number("tokens_per_minute"),
        burst_s=s.number("burst_s", d["burst_s"]),
        weight=s.number("weight", d["weight"]),
        queue_keepalive=s.flag("queue_keepalive", d["queue_keepalive"]),
    )


def _class_weights(q: _Section) -> dict[str, float]:
    weights = dict(defaults_of(QueueConfig)["class_weights"])
    w = q.section("class_weights")
    for name in PRIORITIES:
        weights[name] = float(w.number(name, weights[name]))
    w.finish()
    return weights


def _passthrough_paths(top: _Section) -> frozenset[str]:
    """Exact paths (as normalized by ``proxy/paths.py``) that need no admission."""
    if not top.has("passthrough_paths"):
        top.seen.add("passthrough_paths")
        return DEFAULT_PASSTHROUGH_PATHS
    paths = top.str_list("passthrough_paths")
    for i, path in enumerate(paths):
        if not path.startswith("/") or "?" in path or "#" in path:
            top.problems.append(f"passthrough_paths[{i}]: expected a path like /tokenize, "
                                f"got {path!r}")
    return frozenset(normalized_path(path) for path in paths)


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded YAML document; raises ``ConfigError`` listing every problem."""
    problems: list[str] = []
    environ = os.environ if environ is None else environ
    top = _Section(data, "", problems, environ)
    cd = defaults_of(Config)

    host, port = cd["listen_host"], cd["listen_port"]
    listen = _listen_text(top, "listen")
    if listen is not None:
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            problems.append(f"listen: {exc}")
    admin_listen = None
    if (admin := _listen_text(top, "admin_listen")) is not None:
        try:
            admin_listen = parse_listen(admin)
        except ValueError as exc:
            problems.append(f"admin_listen: {exc}")

    store = top.str("store", cd["store"])
    if store != "memory":
        from .limits.redis_connect import check_store_url  # imports redis-py only when used

        if (problem := check_store_url(store)) is not None:
            problems.append(f"store: {problem}")

    gpus = _named(top, "gpus", _gpu)
    upstreams = _named(top, "upstreams", _upstream)
    models = _named(top, "models", _model)
    clients = _named(top, "clients", _client)

    q, qd = top.section("queue"), defaults_of(QueueConfig)
    queue = QueueConfig(
        max_depth=q.number("max_depth", qd["max_depth"], integer=True, minimum=0,
                           exclusive=False),
        max_wait_s=q.number("max_wait_s", qd["max_wait_s"]),
        fairness=q.str("fairness", qd["fairness"], choices=FAIRNESS_MODES),
        class_weights=_class_weights(q),
        keepalive_after_s=q.number("keepalive_after_s", qd["keepalive_after_s"]),
        keepalive_interval_s=q.number("keepalive_interval_s", qd["keepalive_interval_s"]),
    )
    q.finish()

    a, atd = top.section("attribution"), defaults_of(AttributionConfig)
    attribution = AttributionConfig(
        header=(a.str("header") or "").lower() or None,
        max_in_flight=a.number("max_in_flight", integer=True),
        priority_header=(a.str("priority_header") or "").lower() or None,
        max_values=a.number("max_values", atd["max_values"], integer=True, minimum=0,
                            exclusive=False),
        value_idle_s=a.number("value_idle_s", atd["value_idle_s"]),
    )
    a.finish()

    ad = top.section("adaptive")
    adaptive = AdaptiveConfig(
        tolerance=ad.number("tolerance", 0.15),
        window_s=ad.number("window_s", 1.0),
        window_samples=ad.number("window_samples", 8, integer=True),
        probe_interval_s=ad.number("probe_interval_s", 60.0),
        engine_poll_s=ad.number("engine_poll_s", 2.0),
        engine_stale_s=ad.number("engine_stale_s", 10.0),
    )
    ad.finish()

    al, ald = top.section("access_log"), defaults_of(AccessLogConfig)
    access_log = AccessLogConfig(
        enabled=al.flag("enabled", ald["enabled"]),
        format=al.str("format", ald["format"], choices=ACCESS_LOG_FORMATS),
        include_admin=al.flag("include_admin", ald["include_admin"]),
    )
    al.finish()

    r, rd = top.section("redis"), defaults_of(RedisConfig)
    redis_config = RedisConfig(
        heartbeat_s=r.number("heartbeat_s", rd["heartbeat_s"]),
        lease_ttl_s=r.number("lease_ttl_s", rd["lease_ttl_s"]),
        command_timeout_s=r.number("command_timeout_s", rd["command_timeout_s"]),
        on_store_error_concurrency=r.str(
            "on_store_error_concurrency", rd["on_store_error_concurrency"],
            choices=STORE_ERROR_POLICIES
        ),
        on_store_error_rates=r.str("on_store_error_rates", rd["on_store_error_rates"],
                                   choices=STORE_ERROR_POLICIES),
        key_prefix=r.str("key_prefix", rd["key_prefix"]),
    )
    r.finish()

    config = Config(
        listen_host=host,
        listen_port=port,
        admin_listen=admin_listen,
        admin_key=top.str("admin_key") or None,
        store=store,
        gpus=gpus,
        upstreams=upstreams,
        models=models,
        clients=clients,
        queue=queue,
        attribution=attribution,
        redis=redis_config,
        adaptive=adaptive,
        access_log=access_log,
        max_body_bytes=top.number("max_body_bytes", cd["max_body_bytes"], integer=True),
        passthrough_upstream=top.str("passthrough_upstream"),
        passthrough_paths=_passthrough_paths(top),
        public_paths=_public_paths(top),
        shutdown_grace_s=top.number("shutdown_grace_s", cd["shutdown_grace_s"], minimum=0,
                                    exclusive=False),
        body_read_timeout_s=top.number("body_read_timeout_s", cd["body_read_timeout_s"]),
        header_read_timeout_s=top.number("header_read_timeout_s", cd["header_read_timeout_s"]),
        max_connections=top.number("max_connections", cd["max_connections"], integer=True),
    )
    top.finish()
    _check_references(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _check_references(config: Config, problems: list[str]) -> None:
    for i, entry in enumerate(config.public_paths):
        if entry.startswith("POST ") and \
                normalized_path(entry.removeprefix("POST ")) not in config.passthrough_paths:
            # every other POST is admitted (proxy/families.py): admitted means keyed
            problems.append(f"public_paths[{i}]: {entry!r}: a POST that is admitted always "
                            "needs a key; only a passthrough_paths entry can be public")
    if not config.upstreams:
        problems.append("upstreams: at least one upstream is required")
    if not config.models:
        problems.append("models: at least one model is required (use '*' to match any)")
    for up in config.upstreams.values():
        for i, gpu in enumerate(up.gpus):
            if gpu not in config.gpus:
                problems.append(f"upstreams.{up.name}.gpus[{i}]: unknown gpu {gpu!r}")
    for model in config.models.values():
        for i, up_name in enumerate(model.upstreams):
            if up_name not in config.upstreams:
                problems.append(f"models.{model.name}.upstreams[{i}]: unknown upstream {up_name!r}")
    if config.admin_listen and config.admin_listen == (config.listen_host, config.listen_port):
        problems.append("admin_listen: must differ from listen")
    if config.passthrough_upstream and config.passthrough_upstream not in config.upstreams:
        problems.append(f"passthrough_upstream: unknown upstream {config.passthrough_upstream!r}")
    _check_client_keys(config, problems)


def _check_client_keys(config: Config, problems: list[str]) -> None:
    """Two clients must never share a key: the second would log in as the first, with its
    priority. Plain keys are compared by digest, so a plain ``key`` that equals another's
    ``key_sha256`` is caught too."""
    seen: dict[str, str] = {}  # sha256 hex -> "clients.<name>.key[_sha256]"
    for client in config.clients.values():
        if client.key and client.key_sha256:
            problems.append(f"clients.{client.name}: give key or key_sha256, not both")
        for field_name, digest in (("key", _sha256(client.key)),
                                   ("key_sha256", client.key_sha256)):
            if digest is None:
                continue
            where = f"clients.{client.name}.{field_name}"
            if digest in seen:
                problems.append(f"{where}: same key as {seen[digest]}")
            else:
                seen[digest] = where


def _sha256(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file; raises ``ConfigError`` (also for unreadable files)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = load_yaml(text)
    except YamlProblems as exc:
        raise ConfigError(exc.problems) from exc
    return parse_config(data, environ)


def quick_config(upstream_url: str, max_in_flight: int | None, listen: str = "127.0.0.1:8080",
                 api_key: str | None = None) -> Config:
    """The file-less mode: one upstream, one wildcard model with an in-flight cap."""
    data: dict[str, Any] = {
        "listen": listen,
        "upstreams": {"default": {"url": upstream_url}},
        "models": {WILDCARD_MODEL: {"upstreams": ["default"]}},
    }
    if api_key:
        data["upstreams"]["default"]["api_key"] = api_key
    if max_in_flight:
        data["models"][WILDCARD_MODEL]["max_in_flight"] = max_in_flight
    return parse_config(data, environ={})
