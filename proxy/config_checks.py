"""Checks across sections of a parsed ``Config``: references resolve, client keys are unique."""

from __future__ import annotations

import hashlib

from .config_schema import Config
from .paths import normalized_path


def check_references(config: Config, problems: list[str]) -> None:
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
