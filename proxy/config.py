"""The proxy's configuration: YAML in, frozen dataclasses out, every error with its key path.

The entry points live here (``load_config`` for a file, ``quick_config`` for the file-less
mode); the work is split by job:

- ``proxy/config_schema.py``: the dataclasses, their defaults, the allowed values, ``ConfigError``
- ``proxy/config_section.py``: ``Section``, the typed reader of one YAML mapping (``${ENV}``)
- ``proxy/config_parse.py``: ``parse_config``, each section built and validated
- ``proxy/config_checks.py``: checks across sections (references, duplicate client keys)

Every public name of those is re-exported, so ``from proxy.config import X`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config_parse import parse_config, parse_listen
from .config_schema import (
    ACCESS_LOG_FORMATS,
    DEFAULT_PASSTHROUGH_PATHS,
    ENGINES,
    FAIRNESS_MODES,
    PRIORITIES,
    STORE_ERROR_POLICIES,
    WILDCARD_MODEL,
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
from .config_section import Section, interpolate_env
from .yamlfile import YamlProblems, load_yaml

__all__ = [
    "ACCESS_LOG_FORMATS", "DEFAULT_PASSTHROUGH_PATHS", "ENGINES", "FAIRNESS_MODES", "PRIORITIES",
    "STORE_ERROR_POLICIES", "WILDCARD_MODEL", "AccessLogConfig", "AdaptiveConfig",
    "AttributionConfig", "ClientConfig", "Config", "ConfigError", "EventsConfig", "GpuConfig", "ModelConfig",
    "QueueConfig", "RedisConfig", "Section", "UpstreamConfig", "defaults_of", "interpolate_env",
    "load_config", "parse_config", "parse_listen", "quick_config",
]


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
