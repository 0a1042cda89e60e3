"""What a failed Redis call means: every failure is "the store is unavailable", with a reason.

The hot-path pipeline parses error replies with redis-py's own table (``-OOM`` is
``OutOfMemoryError``, ``-READONLY`` is ``ReadOnlyError``, ...), so both stacks raise the same
classes for the same reply. None of them may reach a client as a 500: the store degrades, the
configured policy applies, and ``/healthz`` and ``/throttle/status`` say why.
"""

from __future__ import annotations

import enum

from redis._parsers import BaseParser
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: every failure of a Redis call: the store is unavailable now (never a 500)
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class StoreFault(enum.Enum):
    """Why the store is degraded (shown in ``/healthz`` and ``/throttle/status``)."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    NOPERM = "noperm"
    OOM = "oom"
    READONLY = "readonly"
    LOADING = "loading"
    MASTERDOWN = "masterdown"
    CLUSTER = "cluster"
    ERROR = "error"


#: most specific first: BusyLoadingError and AuthenticationError are ConnectionErrors too
_ORDER: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], StoreFault], ...] = (
    (BusyLoadingError, StoreFault.LOADING),
    ((AuthenticationError, AuthorizationError), StoreFault.AUTH),
    (NoPermissionError, StoreFault.NOPERM),
    (OutOfMemoryError, StoreFault.OOM),
    (ReadOnlyError, StoreFault.READONLY),
    (MasterDownError, StoreFault.MASTERDOWN),
    ((AskError, TryAgainError, ClusterDownError), StoreFault.CLUSTER),
    ((RedisTimeoutError, TimeoutError), StoreFault.TIMEOUT),
    ((RedisConnectionError, OSError), StoreFault.UNREACHABLE),
)


def classify(exc: BaseException) -> StoreFault:
    """The reason a Redis failure gives (``ERROR`` for a reply no class names)."""
    for kinds, fault in _ORDER:
        if isinstance(exc, kinds):
            return fault
    if isinstance(exc, ResponseError):
        text = str(exc)
        if text.startswith("NOAUTH"):
            return StoreFault.AUTH
        if "can't run this command" in text:  # a script's command refused by the ACL (7.0)
            return StoreFault.NOPERM
    return StoreFault.ERROR


def error_reply(message: str) -> ResponseError:
    """An error reply (``-OOM ...`` without the dash) as the exception redis-py raises."""
    return BaseParser.parse_error(message)


class CallAbandoned(RedisConnectionError):
    """A call given up because the store degraded meanwhile (it says nothing new)."""


class StoreMisconfigured(Exception):
    """Redis refuses this host for good (wrong credentials, a missing ACL permission): no
    waiting fixes it, so the proxy does not start (exit code 2)."""
