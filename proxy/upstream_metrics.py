"""``GET /upstreams/<name>/metrics``: one upstream's own Prometheus metrics, through the proxy.

``/metrics`` on the proxy is the proxy's; llama.cpp's and vLLM's own ``/metrics`` (KV-cache
use, tokens/s, their queue) were hidden behind it. This admin route fetches the named
upstream's ``/metrics`` with its configured key and passes the answer on unchanged, so
Prometheus can scrape every server through the one port it may reach.
"""

from __future__ import annotations

from urllib.parse import unquote

from .config import Config, UpstreamConfig
from .errors import NotFound
from .forward import Forwarder
from .messages import Request, Response

_PREFIX = "/upstreams/"
_SUFFIX = "/metrics"
#: the upstream's content type (plain text 0.0.4 or OpenMetrics) is kept; nothing else is
_KEPT = ("Content-Type",)


def is_upstream_metrics_path(path: str) -> bool:
    return path.startswith(_PREFIX) and path.endswith(_SUFFIX) and \
        len(path) > len(_PREFIX) + len(_SUFFIX)


def upstream_of(config: Config, path: str) -> UpstreamConfig:
    name = unquote(path[len(_PREFIX):-len(_SUFFIX)])
    upstream = config.upstreams.get(name)
    if upstream is None:
        known = ", ".join(config.upstreams)
        raise NotFound(f"no upstream named {name!r} (configured: {known})")
    return upstream


async def fetch_upstream_metrics(forwarder: Forwarder, upstream: UpstreamConfig,
                                 request: Request) -> Response:
    """The upstream's ``/metrics`` answer as it came; raises UpstreamError (502/504)."""
    headers = forwarder.injected[upstream.name]
    accept = request.headers.get("Accept")
    if accept and accept.isprintable():
        headers += f"Accept: {accept}\r\n".encode("utf-8", "surrogateescape")
    target = _SUFFIX + (f"?{request.query_string}" if request.query_string else "")
    response = await forwarder.open(upstream, "GET", target, headers, None)
    try:
        body = await response.read()
    finally:
        response.close()
    kept = [(name, response.headers[name]) for name in _KEPT if name in response.headers]
    return Response(response.status, body, kept)
