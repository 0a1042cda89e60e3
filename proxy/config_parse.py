"""From a decoded YAML document to a ``Config``, every error with its key path.

A bad file never half-loads: ``parse_config`` collects every problem it finds (unknown keys,
wrong types, references to undefined upstreams or GPUs, unset ``${ENV}`` variables) and raises
one ``ConfigError`` listing them all, each prefixed with the path of the bad key
(``models.qwen.upstreams[1]: unknown upstream 'vllm-c'``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .config_checks import check_references
from .config_schema import (
    ACCESS_LOG_FORMATS,
    DEFAULT_PASSTHROUGH_PATHS,
    ENGINES,
    FAIRNESS_MODES,
    PRIORITIES,
    STORE_ERROR_POLICIES,
    AccessLogConfig,
    AdaptiveConfig,
    AttributionConfig,
    ClientConfig,
    Config,
    ConfigError,
    EventsConfig,
    GpuConfig,
    ModelConfig,
    QueueConfig,
    RedisConfig,
    UpstreamConfig,
    defaults_of,
)
from .config_section import Section
from .paths import normalized_path


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


def _public_paths(top: Section) -> tuple[str, ...]:
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


def _listen_text(top: Section, key: str) -> str | None:
    """A bare number (``listen: 55777``) is the commonest slip: say what is expected."""
    raw = top.data.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        top.seen.add(key)
        top.problems.append(f"{key}: expected \"host:port\", got the number {raw}; write "
                            f"\"127.0.0.1:{raw}\" (this host only) or \":{raw}\" (all interfaces)")
        return None
    return top.str(key)


def _named(
    section: Section, key: str, build: Callable[[str, Section], Any]
) -> dict[str, Any]:
    group = section.section(key)
    out = {}
    for name in group.data:
        entry = group.section(str(name))
        out[str(name)] = build(str(name), entry)
        entry.finish()
    return out


def _gpu(name: str, s: Section) -> GpuConfig:
    gpu = GpuConfig(name, s.number("max_in_flight", integer=True), s.flag("adaptive", False),
                    s.number("min_in_flight", 1, integer=True))
    _check_adaptive(s, gpu.adaptive, gpu.max_in_flight, gpu.min_in_flight)
    return gpu


def _check_adaptive(s: Section, adaptive: bool, ceiling: int | None, floor: int) -> None:
    if adaptive and ceiling is None:
        s.problems.append(f"{s.key_path('adaptive')}: needs max_in_flight (the ceiling)")
    elif ceiling is not None and floor > ceiling:
        s.problems.append(f"{s.key_path('min_in_flight')}: must not exceed max_in_flight")


def _upstream(name: str, s: Section) -> UpstreamConfig:
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


def _upstream_tls(url: str, s: Section) -> dict[str, Any]:
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


def _model(name: str, s: Section) -> ModelConfig:
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


def _client(name: str, s: Section) -> ClientConfig:
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


def _class_weights(q: Section) -> dict[str, float]:
    weights = dict(defaults_of(QueueConfig)["class_weights"])
    w = q.section("class_weights")
    for name in PRIORITIES:
        weights[name] = float(w.number(name, weights[name]))
    w.finish()
    return weights


def _passthrough_paths(top: Section) -> frozenset[str]:
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
    top = Section(data, "", problems, environ)
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
        starvation_s=q.number("starvation_s", qd["starvation_s"]),
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

    ad, add = top.section("adaptive"), defaults_of(AdaptiveConfig)
    adaptive = AdaptiveConfig(
        tolerance=ad.number("tolerance", add["tolerance"]),
        window_s=ad.number("window_s", add["window_s"]),
        window_samples=ad.number("window_samples", add["window_samples"], integer=True),
        probe_interval_s=ad.number("probe_interval_s", add["probe_interval_s"]),
        engine_poll_s=ad.number("engine_poll_s", add["engine_poll_s"]),
        engine_stale_s=ad.number("engine_stale_s", add["engine_stale_s"]),
    )
    ad.finish()

    ev, evd = top.section("events"), defaults_of(EventsConfig)
    events = EventsConfig(
        max_subscribers=ev.number("max_subscribers", evd["max_subscribers"], integer=True,
                                  minimum=0, exclusive=False),
        poll_s=ev.number("poll_s", evd["poll_s"]),
        keepalive_s=ev.number("keepalive_s", evd["keepalive_s"]),
        stall_s=ev.number("stall_s", evd["stall_s"]),
    )
    ev.finish()

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
        events=events,
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
    check_references(config, problems)
    if problems:
        raise ConfigError(problems)
    return config
