"""Every error the proxy answers with, each knowing its HTTP status and OpenAI error type.

Handlers never build error JSON by hand: they raise one of these, and one middleware turns
it into the body OpenAI's SDKs expect (``{"error": {"message", "type", "code"}}``), with
``retry-after`` / ``retry-after-ms`` on every 429 and 503 that knows when to come back.

    ProxyError
    ├── BadRequest                400 invalid_request_error
    │   ├── InvalidJSON               code invalid_json
    │   └── InvalidField              code invalid_value / missing_field ...
    ├── AuthenticationFailed      401 authentication_error (invalid_api_key)
    ├── PermissionDenied          403 permission_error
    ├── NotFound                  404 invalid_request_error
    │   └── ModelNotFound             code model_not_found
    ├── MethodNotAllowed          405 invalid_request_error
    ├── RequestTimeout            408 invalid_request_error (body sent too slowly)
    ├── BodyTooLarge              413 invalid_request_error
    ├── TargetTooLong             414 invalid_request_error (request target over 8 KiB)
    ├── UnsupportedEncoding       415 invalid_request_error (body not identity/gzip/deflate)
    ├── HeadTooLarge              431 invalid_request_error (header too long, too many, head
    │                                 over 64 KiB)
    ├── VersionNotSupported       505 invalid_request_error (not HTTP/1.0 or 1.1)
    ├── Throttled                 429 rate_limit_error (carries retry_after_s)
    │   ├── QueueFull                 code queue_full
    │   ├── QueueTimeout              code queue_timeout
    │   └── RateLimited               code rate_limit_exceeded
    ├── UpstreamError             502 upstream_error (refused, reset, bad answer)
    │   ├── UpstreamUnavailable       503 (no upstream can take it)
    │   └── UpstreamTimeout           504
    └── ShuttingDown              503 service_unavailable (carries retry_after_s)
        ├── StoreUnavailable          code store_unavailable (Redis down, policy "closed")
        ├── TooManyConnections        code too_many_connections (over ``max_connections``)
        └── TooManySubscribers        code too_many_subscribers (``/throttle/events`` full)
"""

from __future__ import annotations

import json
import math
from typing import Any


class ProxyError(Exception):
    """Base of every error answered to a client; subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()

    def headers(self) -> dict[str, str]:
        """Extra response headers (``retry-after`` for the retryable ones)."""
        return {}

    def sse_event(self) -> bytes:
        """The same error as a server-sent event, for a stream that already started."""
        return b"data: " + self.to_bytes() + b"\n\n"


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidField(BadRequest):
    code = "invalid_value"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class TargetTooLong(ProxyError):
    status = 414
    type = "invalid_request_error"
    code = "target_too_long"


class UnsupportedEncoding(ProxyError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class HeadTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "header_too_large"


class VersionNotSupported(ProxyError):
    status = 505
    type = "invalid_request_error"
    code = "http_version_not_supported"


class _RetryableMixin:
    """Carries how long the client should wait before trying again."""

    retry_after_s: float

    def headers(self) -> dict[str, str]:
        # retry-after is whole seconds (rounded up, at least 1); retry-after-ms is what the
        # openai SDKs read first and is the precise figure.
        seconds = max(0.0, self.retry_after_s)
        return {
            "retry-after": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
        }


class Throttled(_RetryableMixin, ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class QueueFull(Throttled):
    code = "queue_full"


class QueueTimeout(Throttled):
    code = "queue_timeout"


class RateLimited(Throttled):
    code = "rate_limit_exceeded"


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ShuttingDown(_RetryableMixin, ProxyError):
    status = 503
    type = "service_unavailable"
    code = "shutting_down"

    def __init__(self, message: str = "the proxy is shutting down", *, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreUnavailable(ShuttingDown):
    """503: the shared limit store is unreachable and the policy says refuse."""

    code = "store_unavailable"


class TooManyConnections(ShuttingDown):
    """503 at accept: the proxy already holds ``max_connections`` client connections."""

    code = "too_many_connections"


class TooManySubscribers(ShuttingDown):
    """503: ``GET /throttle/events`` already streams to as many subscribers as it allows."""

    code = "too_many_subscribers"
