"""Hypothesis strategies for raw HTTP requests to the proxy: some parts fuzzed, the rest valid.

``requests(evil_port)`` fuzzes any of ``DIMENSIONS`` (method, target, version, auth, headers,
body, framing) and keeps the others well-formed so that a request gets deep into the proxy;
``admitted_requests()`` only fuzzes the body of a well-framed POST with the right ``KEY``.
A ``FuzzRequest`` becomes bytes with ``to_bytes(fuzz_id)`` (``FUZZ_ID`` header carries it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

KEY = "fuzz-key"
ADMIN_KEY = "fuzz-admin"
FUZZ_ID = "x-fuzz-id"
MAX_BODY = 64 * 1024
ADMITTED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
            "/api/generate", "/api/chat", "/api/embed")
PASSTHROUGH = ("/v1/models", "/v1/models/m", "/health", "/version", "/metrics", "/healthz",
               "/throttle/status", "/mock/echo", "/api/tags", "/nope")


_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: managed by the request builder, or the mock's fault switches: never generated
_RESERVED = ("content-length", "transfer-encoding", "host", "authorization", "api-key",
             "x-api-key", FUZZ_ID)

header_names = st.text(_TCHAR, min_size=1, max_size=24).filter(
    lambda n: n.lower() not in _RESERVED and not n.lower().startswith("x-mock"))
header_values = st.one_of(
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7f)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60).map(str.encode),
    st.sampled_from([b"", b" ", b"\t", b"\xff\xfe", "é🙂".encode(), b"a" * 9000]),
)
known_headers = st.one_of(
    st.tuples(st.just(b"Content-Type"), st.sampled_from([
        b"application/json", b"text/plain", b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b"\xff/\xfe",
        b"", b"*/*"])),
    st.tuples(st.just(b"Content-Encoding"), st.sampled_from([
        b"identity", b"gzip", b"deflate", b"br", b"zstd", b"x-unknown"])),
    st.tuples(st.just(b"Accept-Encoding"), st.sampled_from([b"gzip", b"br", b"*", b"identity"])),
    st.tuples(st.just(b"Connection"), st.sampled_from([
        b"close", b"keep-alive", b"upgrade", b"x-fuzz-id", b"content-type, accept",
        b"authorization"])),
    st.tuples(st.just(b"Upgrade"), st.sampled_from([b"websocket", b"h2c", b"\x00"])),
    st.tuples(st.just(b"Expect"), st.sampled_from([b"100-continue", b"200-ok"])),
    st.tuples(st.just(b"X-Hermes-Profile"), st.sampled_from([b"a", b"../../x", b"a" * 100])),
)
headers_strategy = st.one_of(
    st.lists(st.one_of(st.tuples(header_names.map(str.encode), header_values), known_headers),
             max_size=8),
    st.integers(100, 200).map(lambda n: [(f"X-H{i}".encode(), b"v") for i in range(n)]),
    st.just([(b"X-Huge", b"h" * 20_000)]),
)
auth_strategy = st.sampled_from([
    [(b"Authorization", b"Bearer " + KEY.encode())],
    [(b"Authorization", b"Bearer " + KEY.encode())],
    [(b"Authorization", b"Bearer " + KEY.encode())],
    [(b"api-key", KEY.encode())],
    [(b"Authorization", b"Bearer " + ADMIN_KEY.encode())],
    [(b"Authorization", b"Bearer wrong")],
    [(b"Authorization", b"Basic Zm9vOmJhcg==")],
    [(b"Authorization", b"Bearer")],
    [(b"Authorization", b"Bearer " + KEY.encode() + b"\xff")],
    [(b"Authorization", b"Bearer " + b"k" * 10_000)],
    [(b"Authorization", b"Bearer a"), (b"Authorization", b"Bearer " + KEY.encode())],
    [],
])

_SEGMENTS = ("v1", "chat", "completions", "embeddings", "models", "m", "..", ".", "%2e%2e",
             "%2E%2e", "%2F", "%2f..", "%5C", "%00", "%ff", "%", "%zz", "~", "a;b=c", "é",
             "%C3%A9", "🙂", "*", "@", ":", "", "throttle", "status", "echo")
segments = st.lists(st.one_of(st.sampled_from(_SEGMENTS),
                              st.text("abcXYZ019-._~!$&'()*+,;=:@", max_size=12)), max_size=6)
queries = st.one_of(st.just(""), st.text("abc=&%+/?#[]@!$'()*,;:é", max_size=20).map(
    lambda q: "?" + q))


def _path_from(base: str, parts: list[str], query: str) -> str:
    return base + "/".join(parts) + query


def targets(evil_port: int) -> st.SearchStrategy[bytes]:
    evil = f"127.0.0.1:{evil_port}"
    return st.one_of(
        st.sampled_from(ADMITTED + PASSTHROUGH),
        st.sampled_from(ADMITTED + PASSTHROUGH).flatmap(
            lambda p: st.builds(lambda q: p + q, queries)),
        st.builds(_path_from, st.just("/"), segments, queries),
        st.builds(_path_from, st.just("/v1/"), segments, queries),
        st.sampled_from([
            f"http://{evil}/v1/models", f"http://{evil}/v1/chat/completions",
            f"https://{evil}/", f"//{evil}/v1/models", f"{evil}", "*", "/" + "a" * 9000,
            "/v1/chat/completions/..", "/v1/chat/completions%2F..%2F..%2Fx", "/a\\b",
            "/v1/models#frag", "/v1/%2e%2e/%2e%2e/etc/passwd",
        ]),
    ).map(lambda t: t.encode())


methods = st.one_of(
    st.sampled_from(["POST"] * 4 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    st.sampled_from(["CONNECT", "TRACE", "PROPFIND", "post", "BREW", "G ET"]),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
tricky_values = st.sampled_from([
    "a lot", 42, -1, 0, 2**63, 10**40, 1e308, float("nan"), float("inf"), True, None, "", " ",
    "m", "\ud800", "a\udfffb", {"include_usage": "yes"}, {"include_usage": True}, [], {},
    [{"role": "user", "content": "\ud800"}], [{"role": "user"}], [None], "m\x00",
])
_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "max_output_tokens",
           "stream", "stream_options", "n", "temperature", "input", "prompt", "tools", "user")


def valid_body(path: str, stream: bool) -> dict[str, Any]:
    """What the mock accepts on ``path`` (the other admitted paths are 404 upstream)."""
    if path.endswith("/completions") and "chat" not in path:
        return {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": stream}
    if path.endswith(("/embeddings", "/embed")):
        return {"model": "m", "input": "hi"}
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "stream": stream}


@st.composite
def chat_bodies(draw: st.DrawFn, path: str = "/v1/chat/completions",
                max_mutations: int = 3) -> bytes:
    """A valid request for ``path`` with a few fields deleted or set to anything."""
    body = valid_body(path, draw(st.booleans()))
    for _ in range(draw(st.integers(0, max_mutations))):
        key = draw(st.sampled_from(_FIELDS))
        if draw(st.integers(0, 4)) == 0:
            body.pop(key, None)
        else:
            body[key] = draw(st.one_of(tricky_values, json_values))
    return json.dumps(body).encode()


bodies = st.one_of(
    chat_bodies(),
    chat_bodies(),
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}',
                     b'{"model":"\xc3\x28"}', b"\xef\xbb\xbf{}", b'{"model":"m"}\x00']),
    st.integers(10, 20_000).map(lambda d: b'{"model":"m","x":' + b"[" * d + b"]" * d + b"}"),
    st.integers(10, 20_000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.integers(1, 100_000).map(lambda n: b'{"model":"m","pad":"' + b"x" * (MAX_BODY + n)
                                + b'"}'),
)

framings = st.sampled_from(["length"] * 6 + ["chunked"] * 2 + ["none", "short", "both",
                                                                 "bad-length"])
versions = st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTX/1.1"])


@dataclass
class FuzzRequest:
    method: str
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str
    chunk: int

    def to_bytes(self, fuzz_id: str) -> bytes:
        lines = [self.method.encode() + b" " + self.target + b" " + self.version.encode(),
                 b"Host: proxy.test", f"{FUZZ_ID}: {fuzz_id}".encode()]
        lines += [name + b": " + value for name, value in self.headers]
        body = self.body
        if self.framing == "length" and (body or self.method == "POST"):
            lines.append(b"Content-Length: %d" % len(body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            pieces = [body[i:i + self.chunk] for i in range(0, len(body), self.chunk)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        elif self.framing == "short":
            lines.append(b"Content-Length: %d" % (len(body) + 10))
        elif self.framing == "both":
            lines += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        elif self.framing == "bad-length":
            lines.append(b"Content-Length: -1, " + str(len(body)).encode())
        elif self.framing == "none":
            body = b""
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


#: what a request may have fuzzed; the rest of it is well-formed
DIMENSIONS = ("method", "target", "version", "auth", "headers", "body", "framing")


@st.composite
def requests(draw: st.DrawFn, evil_port: int) -> FuzzRequest:
    """A request with some of its parts fuzzed and the others valid, so that it gets deep."""
    fuzzed = draw(st.sets(st.sampled_from(DIMENSIONS)))

    def pick(dimension: str, fuzz: st.SearchStrategy[T], sane: st.SearchStrategy[T]) -> T:
        return draw(fuzz if dimension in fuzzed else sane)

    method = pick("method", methods, st.sampled_from(["POST", "POST", "POST", "GET"]))
    target = pick("target", targets(evil_port), st.sampled_from(
        ADMITTED[:3] + ("/v1/models",)).map(str.encode))
    body = pick("body", bodies, chat_bodies(target.decode("latin-1"), max_mutations=0))
    return FuzzRequest(
        method, target, pick("version", versions, st.just("HTTP/1.1")),
        pick("auth", auth_strategy, st.just([(b"Authorization", b"Bearer " + KEY.encode())]))
        + pick("headers", headers_strategy, st.just([])),
        body, pick("framing", framings, st.just("length")), draw(st.integers(1, 4096)))


@st.composite
def admitted_requests(draw: st.DrawFn) -> FuzzRequest:
    """Well-framed POSTs to the generating paths with the right key: the body is the fuzz."""
    path = draw(st.sampled_from(ADMITTED[:3] * 3 + ADMITTED[3:]))
    body = draw(st.one_of(chat_bodies(path, max_mutations=0), chat_bodies(path, 1),
                          chat_bodies(path), bodies))
    chunk = draw(st.sampled_from([0, 0, 0, 1, 7, 1000]))
    headers = [(b"Authorization", b"Bearer " + KEY.encode()),
               *draw(st.lists(known_headers, max_size=2))]
    return FuzzRequest("POST", path.encode(), "HTTP/1.1", headers, body,
                       "chunked" if chunk else "length", chunk or 1)
