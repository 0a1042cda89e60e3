"""Configuration reload (SIGHUP): what may change while running, and how it is applied.

Live: caps (models, clients, upstreams, GPUs, attribution), adaptive bounds, token buckets,
clients and their keys, model routes, queue bounds. The store takes the new caps and buckets
through the same mechanism as adaptive caps (``LimitStore.update_spec``): requests admitted
under the old configuration finish normally, queued ones stay queued and are served under the
new caps, nothing is re-admitted. Not live (refused whole, the old configuration stays, one log
line says why): listen addresses, the store and its Redis settings, server limits, and any
upstream's address, key or timeouts (their connection pools are built at start).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .access_log import AccessLog
from .admission import AdmissionPolicy
from .auth import Authenticator
from .catalog import ModelCatalog
from .config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from .app import Proxy

log = logging.getLogger("llm_throttle")


def refused_changes(old: Config, new: Config) -> list[str]:
    """What ``new`` changes that a running proxy cannot take (empty: reload is possible)."""
    problems = []
    for key in ("listen_host", "listen_port", "admin_listen", "store", "redis",
                "max_body_bytes", "body_read_timeout_s", "header_read_timeout_s"):
        if getattr(old, key) != getattr(new, key):
            problems.append(f"{key} cannot change while running")
    if set(old.upstreams) != set(new.upstreams):
        problems.append("upstreams cannot be added or removed while running")
    else:
        for name, up in new.upstreams.items():
            before = old.upstreams[name]
            for key in ("url", "api_key", "connect_timeout_s", "read_timeout_s"):
                if getattr(before, key) != getattr(up, key):
                    problems.append(f"upstreams.{name}.{key} cannot change while running")
    return problems


async def apply_config(proxy: Proxy, new: Config) -> list[str]:
    """Switch ``proxy`` to ``new``; returns the refusals (then nothing changed)."""
    problems = refused_changes(proxy.config, new)
    if problems:
        return problems
    proxy.capacity.configure(new)
    policy = AdmissionPolicy(new)
    policy.spec = proxy.capacity.apply(policy.spec)
    await proxy.store.update_spec(policy.spec)
    proxy.config = new
    proxy.policy = policy
    proxy.auth = Authenticator(new)
    proxy.catalog = ModelCatalog(new, proxy.forwarder)
    proxy.access_log = AccessLog(new.access_log) if new.access_log.enabled else None
    return []


async def reload_file(proxy: Proxy, path: str | Path) -> bool:
    """Read ``path`` and apply it; logs and keeps the old configuration on any problem."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload of %s refused, old configuration kept: %s", path, exc)
        return False
    problems = await apply_config(proxy, new)
    if problems:
        log.error("reload of %s refused, old configuration kept: %s", path, "; ".join(problems))
        return False
    log.warning("configuration reloaded from %s", path)
    return True
