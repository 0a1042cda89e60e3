"""Differential test of the front's request parsing against h11 (issue 10, section 5).

The same raw bytes go to the proxy's front (``proxy/request_parser.py``, llhttp plus our
bounds; whole, and one byte per feed; and through a live ``HttpServer``, whose handler must
see exactly what the parser parsed) and to h11 (the pure-Python reference, server role).
For each request both produce, method, target, version, headers and body must be equal; where
only one side refuses, the case must be listed here with the reason:

- ``STRICTER``: we refuse what h11 accepts. Always allowed (a refused request reaches no
  upstream), listed so the difference is a decision, not an accident.
- ``LAXER``: we accept what h11 refuses. Allowed only where RFC 9112 allows it and the
  request the proxy acts on is the one the upstream will see (the proxy writes its own
  request line and framing upstream, so only method, target, headers and body travel).

Any other difference fails, including a new one found by the hypothesis property that runs
the fuzz corpus of ``tests/fuzz_requests.py`` through both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from multidict import CIMultiDict

from proxy.errors import ProxyError
from proxy.messages import Response
from proxy.request_parser import RequestParser
from proxy.server import HttpServer, ServerLimits
from tests.fuzz_requests import requests as fuzz_requests

H = b"Host: x\r\n"


def _post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST /v1/chat/completions HTTP/" + version + b"\r\n" + headers + b"\r\n" + body


def _get(headers: bytes = H, target: bytes = b"/", version: bytes = b"1.1") -> bytes:
    return b"GET " + target + b" HTTP/" + version + b"\r\n" + headers + b"\r\n"


CHUNKED = b"Transfer-Encoding: chunked\r\n"

#: name -> raw bytes: the smuggling and framing cases of issue 10 and the classic ones
CORPUS: dict[str, bytes] = {
    "plain get": _get(),
    "post with length": _post(H + b"Content-Length: 5\r\n", b"hello"),
    "chunked": _post(H + CHUNKED, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    "chunked upper-case coding": _post(H + b"Transfer-Encoding: CHUNKED\r\n", b"0\r\n\r\n"),
    "chunk extension": _post(H + CHUNKED, b"5;a=b;c=\"d\"\r\nhello\r\n0\r\n\r\n"),
    "chunk trailer": _post(H + CHUNKED, b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
    "CL and TE": _post(H + b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\nhello"),
    "TE and CL": _post(H + CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\nhello"),
    "duplicate CL, same": _post(H + b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
    "duplicate CL, different": _post(H + b"Content-Length: 5\r\nContent-Length: 6\r\n",
                                     b"hello!"),
    "CL list": _post(H + b"Content-Length: 5, 5\r\n", b"hello"),
    "CL plus sign": _post(H + b"Content-Length: +5\r\n", b"hello"),
    "CL negative": _post(H + b"Content-Length: -1\r\n"),
    "CL hex": _post(H + b"Content-Length: 0x5\r\n", b"hello"),
    "CL empty": _post(H + b"Content-Length: \r\n"),
    "CL overflow": _post(H + b"Content-Length: 99999999999999999999999\r\n"),
    "CL space inside": _post(H + b"Content-Length: 5 5\r\n", b"hello"),
    "TE twice": _post(H + CHUNKED + CHUNKED, b"0\r\n\r\n"),
    "TE gzip, chunked": _post(H + b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    "TE chunked, gzip": _post(H + b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
    "TE identity": _post(H + b"Transfer-Encoding: identity\r\n"),
    "TE xchunked": _post(H + b"Transfer-Encoding: xchunked\r\n"),
    "TE with space before colon": _post(H + b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "TE on HTTP/1.0": _post(H + CHUNKED, b"5\r\nhello\r\n0\r\n\r\n", version=b"1.0"),
    "bad chunk size": _post(H + CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk size 0x": _post(H + CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk size overflow": _post(H + CHUNKED, b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    "chunk size then space": _post(H + CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk data too long": _post(H + CHUNKED, b"5\r\nhelloX0\r\n\r\n"),
    "chunks with bare LF": _post(H + CHUNKED, b"5\nhello\n0\n\n"),
    "obs-fold": _get(H + b"X-A: a\r\n b\r\n"),
    "bare LF everywhere": b"GET / HTTP/1.1\nHost: x\n\n",
    "bare LF in a header": b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
    "space before colon": _get(H + b"X-A : b\r\n"),
    "empty header name": _get(H + b": v\r\n"),
    "space in header name": _get(H + b"X A: v\r\n"),
    "whitespace line before headers": b"GET / HTTP/1.1\r\n X: v\r\nHost: x\r\n\r\n",
    "NUL in a value": _get(H + b"X: a\x00b\r\n"),
    "control char in a value": _get(H + b"X: a\x01b\r\n"),
    "DEL in a value": _get(H + b"X: a\x7fb\r\n"),
    "obs-text in a value": _get(H + b"X: caf\xe9\r\n"),
    "tab in a value": _get(H + b"X: a\tb\r\n"),
    "trailing whitespace in a value": _get(H + b"Authorization: Bearer k \t\r\n"),
    "no Host": _get(b""),
    "two Hosts": _get(b"Host: a\r\nHost: b\r\n"),
    "no Host on HTTP/1.0": _get(b"", version=b"1.0"),
    "empty line before the request": b"\r\n" + _get(),
    "lower-case method": b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    "two spaces in the request line": b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in the target": _get(target=b"/a b"),
    "control char in the target": _get(target=b"/a\x01b"),
    "UTF-8 in the target": _get(target="/é".encode()),
    "fragment in the target": _get(target=b"/v1/chat/completions#x"),
    "absolute-form target": _get(target=b"http://evil.example/v1/models"),
    "asterisk-form target": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case version": b"GET / http/1.1\r\nHost: x\r\n\r\n",
    "space after the version": b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/1.2": _get(version=b"1.2"),
    "HTTP/2.0": _get(version=b"2.0"),
    "GET with a body": _get(H + b"Content-Length: 2\r\n") + b"hi",
    "pipelined": _get(target=b"/a") + _post(H + b"Content-Length: 2\r\n", b"hi") +
    _get(target=b"/c"),
    "pipelined after chunked": _post(H + CHUNKED, b"2\r\nhi\r\n0\r\n\r\n") + _get(),
    "HTTP/1.0 keep-alive, pipelined": _get(b"Connection: keep-alive\r\n", version=b"1.0") +
    _get(b"", target=b"/b", version=b"1.0"),
    "data after Connection: close": _get(H + b"Connection: close\r\n") + _get(),
    "CONNECT": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    "CONNECT with a body": b"CONNECT /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 2\r\n\r\nhi",
    "Upgrade": _get(H + b"Connection: upgrade\r\nUpgrade: websocket\r\n"),
    "Upgrade with a body": _post(H + b"Connection: upgrade\r\nUpgrade: h2c\r\n"
                                 b"Content-Length: 2\r\n", b"hi"),
    "incomplete head": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "incomplete body": _post(H + b"Content-Length: 10\r\n", b"hello"),
}

#: we refuse, h11 accepts: why that is right
STRICTER = {
    "CL and TE": "RFC 9112 6.3: may be refused; refusing closes the classic smuggling hole",
    "TE and CL": "as 'CL and TE'",
    "duplicate CL, same": "RFC 9112 6.3 allows either; refusing needs no agreement on which",
    "CL list": "as 'duplicate CL, same'",
    "chunk size overflow": "a chunk over 2^64 bytes is an attack, whatever h11 makes of it",
    "chunk size then space": "BWS in a chunk size is not in RFC 9112 7.1's grammar",
    "chunks with bare LF": "llhttp is strict about CRLF; a bare LF is a classic desync vector",
    "obs-fold": "RFC 9112 5.2: a server may reject obs-fold with 400",
    "bare LF everywhere": "RFC 9112 2.2: a recipient may accept bare LF; we do not",
    "bare LF in a header": "as 'bare LF everywhere'",
    "control char in a value": "RFC 9110 5.5: CTLs are not field-vchar",
    "DEL in a value": "as 'control char in a value'",
    "lower-case method": "methods are case-sensitive (RFC 9110 9.1); 'get' is no method we serve",
    "HTTP/1.2": "we serve HTTP/1.0 and 1.1 only: 505",
    "HTTP/2.0": "an HTTP/2.0 request line over HTTP/1.1 framing: 505",
    "CONNECT": "the proxy switches no protocol: nothing after the head is parsed, the app "
               "refuses CONNECT (405) and the connection closes",
    "CONNECT with a body": "as 'CONNECT'",
    "Upgrade": "as 'CONNECT': answered as plain HTTP, then the connection closes",
    "Upgrade with a body": "400 upgrade_not_supported: llhttp would leave the body unparsed",
}

#: we accept, h11 refuses: why the upstream still sees the request we decided on
LAXER = {
    "empty line before the request": "RFC 9112 2.2: a server SHOULD ignore at least one empty "
                                     "line before the request line",
    "two spaces in the request line": "RFC 9112 3: recipients MAY split on whitespace; the "
                                      "proxy sends the upstream its own request line",
    "HTTP/1.0 keep-alive, pipelined": "h11 never keeps HTTP/1.0 alive; RFC 9112 C.2.2 allows "
                                      "it with Connection: keep-alive (both parse the first)",
}


@dataclass
class Parsed:
    """What one side made of the bytes: the requests, and whether it refused."""

    requests: list[dict] = field(default_factory=list)
    refused: str | None = None
    #: the refusal came after a request that ends the connection (nobody answers it)
    refused_after_last: bool = False


class _Recorder:
    """A ``ParserSink`` keeping what the parser reports."""

    def __init__(self) -> None:
        self.parsed = Parsed()
        self.keep_alive = True
        self.stopped = False

    def head_received(self, method: str, target: str, version: str,
                      headers: CIMultiDict[str], keep_alive: bool,
                      raw_headers: list[tuple[bytes, bytes]]) -> None:
        if not self.keep_alive:  # the server answers nothing after a last request
            self.stopped = True
            return
        self.keep_alive = keep_alive
        self.parsed.requests.append({
            "method": method.encode(), "target": target.encode("utf-8", "surrogateescape"),
            "version": version, "headers": [(n.lower(), v) for n, v in raw_headers],
            "body": b"", "complete": False})

    def body_received(self, data: bytes) -> None:
        if not self.stopped:
            self.parsed.requests[-1]["body"] += data

    def message_complete(self) -> None:
        if not self.stopped:
            self.parsed.requests[-1]["complete"] = True

    def parse_failed(self, error: ProxyError) -> None:
        self.parsed.refused = f"{error.status} {error.code}: {error.message}"
        self.parsed.refused_after_last = not self.keep_alive
        self.stopped = True

    def upgraded(self) -> None:
        # nothing after this head is parsed, and the server closes after answering it
        self.parsed.refused = "protocol upgrade"
        if self.parsed.requests:
            self.parsed.requests[-1]["complete"] = False
        self.stopped = True


def ours(raw: bytes, piece: int | None = None) -> Parsed:
    recorder = _Recorder()
    parser = RequestParser(recorder)
    pieces = [raw] if piece is None else [raw[i:i + piece] for i in range(0, len(raw), piece)]
    for data in pieces:
        if recorder.stopped:
            break
        parser.feed(data)
    return recorder.parsed


def theirs(raw: bytes) -> Parsed:
    # h11's default head limit is 16 KiB; ours is 64 KiB
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536 + 8192)
    conn.receive_data(raw)
    parsed = Parsed()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            parsed.refused = str(exc)
            return parsed
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return parsed
        if event is h11.PAUSED:  # answer, to let it parse the next pipelined request
            try:
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return parsed  # Connection: close or HTTP/1.0: nothing more is read
        elif isinstance(event, h11.Request):
            parsed.requests.append({
                "method": event.method, "target": event.target,
                "version": event.http_version.decode(),
                "headers": [(n, v.lower() if n == b"transfer-encoding" else v)
                            for n, v in event.headers],
                "body": b"", "complete": False})
        elif isinstance(event, h11.Data):
            parsed.requests[-1]["body"] += event.data
        elif isinstance(event, h11.EndOfMessage):
            parsed.requests[-1]["complete"] = True


def _comparable(request: dict) -> dict:
    return {**request, "headers": [(n, v.lower() if n == b"transfer-encoding" else v)
                                   for n, v in request["headers"]]}


def compare(name: str, raw: bytes) -> str:
    """'same', 'stricter' or 'laxer'; raises AssertionError on a difference not allowed."""
    mine, reference = ours(raw), theirs(raw)
    piecewise = ours(raw, piece=1)
    if piecewise != mine and "chunk_framing_too_large" in (piecewise.refused or ""):
        # The chunk-framing bound is measured per read (what llhttp consumed beyond the data):
        # a body in one-byte chunks read a byte at a time meets it where one big read of the
        # same bytes does not. A refusal is always allowed; an acceptance must not differ.
        assert mine.refused is None or "413" in mine.refused, f"{name}: {mine.refused}"
        mine = piecewise
    assert piecewise == mine, f"{name}: one byte per read parses differently"
    both = min(len(mine.requests), len(reference.requests))
    for got, want in zip(mine.requests[:both], reference.requests[:both], strict=True):
        if got["complete"] and want["complete"]:
            assert _comparable(got) == want, f"{name}: {got} != h11's {want}"
        else:  # a request one side refused in its body: what both saw of the head agrees
            assert {k: v for k, v in _comparable(got).items() if k not in ("body", "complete")} \
                == {k: v for k, v in want.items() if k not in ("body", "complete")}, name
    mine_done = [r for r in mine.requests if r["complete"]]
    reference_done = [r for r in reference.requests if r["complete"]]
    if (mine.refused is None) == (reference.refused is None) and \
            len(mine_done) == len(reference_done):
        return "same"
    if len(mine_done) < len(reference_done) or (mine.refused and not reference.refused):
        return "stricter"
    return "laxer"


@pytest.mark.parametrize("name", list(CORPUS))
def test_front_parses_as_h11_does_or_differs_as_documented(name: str) -> None:
    """Hazard: a request the proxy frames differently from a reference parser is a request the
    proxy decides on while the upstream serves another (request smuggling, desync)."""
    relation = compare(name, CORPUS[name])
    expected = "stricter" if name in STRICTER else "laxer" if name in LAXER else "same"
    assert relation == expected, (
        f"{name}: ours {ours(CORPUS[name]).refused or 'accepts'}, "
        f"h11 {theirs(CORPUS[name]).refused or 'accepts'}")


def test_the_documented_differences_are_in_the_corpus() -> None:
    assert set(STRICTER) <= set(CORPUS) and set(LAXER) <= set(CORPUS)


#: h11 refusals that the fuzz corpus hits and that are not framing: the generated requests
#: vary these on purpose, and ours is fine to accept them (see the reasons)
_FUZZ_LAXER_OK = (
    "Missing mandatory Host",  # never generated: fuzz requests all carry Host
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(request=fuzz_requests(evil_port=9))
def test_the_fuzz_corpus_parses_as_h11_does_or_stricter(request) -> None:
    """The generated requests of tests/fuzz_requests.py (methods, targets, versions, headers,
    bodies, framings): ours may refuse more, never accept what h11 refuses, never differ."""
    raw = request.to_bytes("f1")
    relation = compare("fuzz", raw)
    if relation == "laxer":
        refused = theirs(raw).refused or ""
        assert any(reason in refused for reason in _FUZZ_LAXER_OK), (
            f"ours accepts what h11 refuses ({refused}): {raw[:300]!r}")


# -- the same corpus through a live front server -------------------------------------------------


@pytest.fixture
async def live_front():
    """A bare ``HttpServer`` whose handler records what it was given, and its address."""
    seen: list[tuple[bytes, bytes, bytes | str]] = []

    async def handler(request):
        try:
            body: bytes | str = await request.read_body()
        except ProxyError as exc:
            body = f"refused {exc.status}"
            seen.append((request.method.encode(), request.target.encode(), body))
            return Response.for_error(exc)
        seen.append((request.method.encode(), request.target.encode(), body))
        return Response.text("ok")

    server = HttpServer(handler, ServerLimits(max_body_bytes=1 << 20, body_read_timeout_s=0.3,
                                              header_read_timeout_s=5))
    host, port = await server.listen("127.0.0.1", 0)
    yield host, port, seen
    await server.close()


async def _served(host: str, port: int, raw: bytes, seen: list, expected: int) -> bytes:
    """Send ``raw``; read until the server closes, or ``expected`` requests were handled and
    nothing more came for a moment."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    try:
        while loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.1)
            except TimeoutError:
                if len(seen) >= expected and data:
                    break
                continue
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return data


@pytest.mark.parametrize("name", [n for n in CORPUS if not n.startswith(("CONNECT", "Upgrade"))])
async def test_the_live_front_serves_what_its_parser_parsed(live_front, name: str) -> None:
    """Hazard: the connection layer (read slicing, pipelining, pauses, error ordering) hands
    the handler something else than the parser decided, or serves past a refusal."""
    host, port, seen = live_front
    raw = CORPUS[name]
    parsed = ours(raw)
    complete = [(r["method"], r["target"], r["body"]) for r in parsed.requests if r["complete"]]
    heads = len(parsed.requests)
    data = await _served(host, port, raw, seen, heads)
    served = [entry for entry in seen if not isinstance(entry[2], str)]
    assert served == complete, f"{name}: handler saw {seen}, parser {complete}"
    if parsed.refused is not None and not parsed.refused_after_last:
        status = parsed.refused.split(" ", 1)[0].encode()
        assert b"HTTP/1.1 " + status in data, f"{name}: no {status!r} answer in {data[:300]!r}"
