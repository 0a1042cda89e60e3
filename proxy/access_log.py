"""The access log: one line per answered request, from its ``RequestRecord``.

Logger ``llm_throttle.access`` at INFO, so it goes wherever the operator sends logging (the
CLI's handler, a file, journald). Every answer is logged, refusals included (401, 429, 400),
and a client that left before its answer (499); admin routes only with ``include_admin``.
Never logged: keys, headers, bodies, the query string (it may carry secrets).

``plain``::

    2026-12-01T10:00:00.123Z client=team-a model=qwen upstream=vllm-a status=200 \
method=POST path=/v1/chat/completions queue_ms=0.0 upstream_ms=12.3 duration_ms=80.1 \
prompt_tokens=12 completion_tokens=40

``json``: the same fields as one JSON object per line (absent values are ``null``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .config import AccessLogConfig
from .record import RequestRecord

LOGGER_NAME = "llm_throttle.access"
#: a path is cut to this many characters in the log (an attacker chooses it)
_MAX_PATH = 200


def log_to_stream(stream: TextIO | None = None) -> None:
    """For the CLI: access lines go out bare (no level/name prefix, so ``json`` lines are
    JSON), one per line on ``stream`` (stderr), and not again through the root logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if any(getattr(h, "access_lines", False) for h in logger.handlers):
        return  # called again (tests run the CLI in process): one handler is enough
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.access_lines = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _timestamp(now: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{whole}.{int(now % 1 * 1000):03d}Z"


class AccessLog:
    """Writes records as lines; built once per proxy from ``access_log`` in the config."""

    def __init__(self, config: AccessLogConfig, logger: logging.Logger | None = None,
                 wall_clock: Callable[[], float] = time.time):
        self.include_admin = config.include_admin
        self._json = config.format == "json"
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._wall_clock = wall_clock

    def fields(self, record: RequestRecord) -> dict[str, Any]:
        tokens = record.tokens
        return {
            "time": _timestamp(self._wall_clock()),
            "client": record.client,
            "model": record.model,
            "upstream": record.upstream,
            "status": record.status,
            "method": record.method,
            "path": _printable(record.path[:_MAX_PATH]),
            "queue_ms": _ms(record.queue_s),
            "upstream_ms": _ms(record.upstream_s),
            "duration_ms": _ms(record.duration_s),
            "prompt_tokens": tokens[0] if tokens else None,
            "completion_tokens": tokens[1] if tokens else None,
        }

    def write(self, record: RequestRecord) -> None:
        if record.admin and not self.include_admin:
            return
        if not self._logger.isEnabledFor(logging.INFO):
            return
        fields = self.fields(record)
        if self._json:
            line = json.dumps(fields, separators=(",", ":"))
        else:
            stamp = fields.pop("time")
            line = stamp + " " + " ".join(
                f"{name}={'-' if value is None else value}" for name, value in fields.items())
        self._logger.info(line)


def _printable(text: str) -> str:
    """No control characters in a log line (a path could try to forge lines)."""
    if text.isprintable() and " " not in text:
        return text
    return "".join(c if c.isprintable() and c != " " else f"%{ord(c):02X}" for c in text)
