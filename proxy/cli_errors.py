"""One-line, human messages for the CLIs' failures to reach a proxy or Redis.

``cannot read status: ClientConnectorError: Cannot connect to host 127.0.0.1:8080
ssl:default [Connect call failed ('127.0.0.1', 8080)]`` tells a new user about aiohttp, not
about their proxy. These say what failed, where, and what to try.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp


def describe_failure(exc: BaseException, where: str) -> str:
    """``where``: the URL (or Redis URL, password hidden) that was being read."""
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status == 401:
            return f"{where}: 401, the admin key is required or wrong (--admin-key)"
        if exc.status == 404:
            return f"{where}: 404, not an llm-throttle status URL (or not its admin listener)"
        return f"{where}: HTTP {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        reason = "connection refused"
        if os_error is not None and os_error.errno:
            reason = os.strerror(os_error.errno).lower()
        return f"{where}: cannot connect ({reason}); is the proxy running there?"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{where}: not a valid URL"
    if isinstance(exc, aiohttp.ContentTypeError | ValueError):
        return f"{where}: the answer is not the status JSON ({type(exc).__name__})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"{where}: no answer in time"
    if isinstance(exc, aiohttp.ClientError):
        return f"{where}: {str(exc) or type(exc).__name__}"
    if type(exc).__module__.startswith("redis") and "connect" in str(exc).lower():
        return f"{where}: cannot connect to Redis ({str(exc).splitlines()[0]})"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{where}: {text}"


def hide_password(url: str) -> str:
    """``redis://:secret@host`` -> ``redis://host`` for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
