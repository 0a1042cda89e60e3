"""Token accounting: what a request reserves before it runs, and what it really used.

A request reserves ``prompt estimate + min(max_tokens, model cap)`` against its TPM buckets.
The prompt estimate is the body size / 4 (about 4 bytes per token for English and JSON), which
costs nothing to compute and errs on the high side; the real usage settles the difference.
A stream cut short is charged what it generated: one token per content chunk.

A streamed answer is watched on its way through by a tap chosen from its content type:
server-sent events (OpenAI, Responses, Anthropic, llama.cpp), NDJSON lines (Ollama), or any
other body (kept up to ``_MAX_KEPT`` bytes to read its usage at the end). Each passes bytes
on as they arrive; only the events that carry a usage marker of the route family are parsed.
"""

from __future__ import annotations

import re
from typing import Protocol

import orjson

from .families import OPENAI_USAGE, UsageMarkers
from .usage import UsageTally, read_usage, usage_from_json

BYTES_PER_TOKEN = 4
_DONE = b"[DONE]"
_EVENT_END = re.compile(rb"\r?\n\r?\n")
#: a partial event longer than this is passed on as is (not SSE after all, or a huge event)
_MAX_PENDING = 1 << 20
#: a body that is neither SSE nor NDJSON is relayed as it comes; this much is kept to read usage
_MAX_KEPT = 1 << 20
#: fields of an OpenAI usage-only chunk; anything else in it (llama.cpp's ``timings``) is kept
_CHUNK_FIELDS = frozenset({"id", "object", "created", "model", "system_fingerprint", "choices",
                           "usage", "service_tier", "obfuscation"})


def estimate_prompt_tokens(body_size: int) -> int:
    return body_size // BYTES_PER_TOKEN + 1


def reservation(body_size: int, max_tokens: int | None, cap: int, generates: bool,
                choices: int = 1) -> int:
    """Tokens to reserve; embeddings (``generates=False``) only pay for their input; ``n``
    choices may each generate up to the cap."""
    completion = min(max_tokens if max_tokens is not None else cap, cap) if generates else 0
    return estimate_prompt_tokens(body_size) + completion * choices


def usage_from_body(body: bytes, markers: UsageMarkers = OPENAI_USAGE) -> tuple[int, int] | None:
    """Usage of a plain JSON response, in any known shape; cheap when there is none."""
    needles = markers.needles
    if needles[0] not in body and (len(needles) == 1 or not any(n in body for n in needles)):
        return None
    return usage_from_json(body)


class UsageTap(Protocol):
    """What the relay (``proxy/forward.py``) asks of a tap."""

    chunks: int

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    @property
    def usage(self) -> tuple[int, int] | None: ...


def tap_for(content_type: str, markers: UsageMarkers, strip_usage: bool) -> UsageTap:
    """The tap for a streamed body of this content type."""
    if content_type.startswith("text/event-stream"):
        return SSEUsageTap(strip_usage, markers)
    if content_type.startswith(("application/x-ndjson", "application/jsonl",
                                "application/json-seq")):
        return LineUsageTap(markers)
    return BodyUsageTap(markers)


class SSEUsageTap:
    """Watches a server-sent-event stream for usage as it is relayed, event by event.

    Complete events are passed on at once; only a partial event at the end of a read waits
    for its remainder. With ``strip_usage`` the usage-only chunk that the proxy asked for on
    the client's behalf (``choices: []``) is removed, so the client sees what it asked for;
    whatever else that chunk carries (llama.cpp's ``timings``) goes on without the usage.
    """

    __slots__ = ("_needles", "_pattern", "_pending", "chunks", "strip_usage", "tally")

    def __init__(self, strip_usage: bool, markers: UsageMarkers = OPENAI_USAGE):
        self.strip_usage = strip_usage
        self.tally = UsageTally()
        #: data events seen (not counting [DONE] or the usage chunk): a floor for completion
        self.chunks = 0
        self._pending = b""
        self._needles = markers.needles
        self._pattern = markers.pattern

    @property
    def usage(self) -> tuple[int, int] | None:
        """(prompt, completion) once a usage report went by (several add up, see usage.py)."""
        return self.tally.result

    def _marked(self, data: bytes) -> bool:
        needles = self._needles
        if needles[0] in data:
            return True
        return len(needles) > 1 and any(n in data for n in needles[1:])

    def feed(self, data: bytes) -> bytes:
        """Returns the bytes to send on now."""
        if not self._pending and data.endswith(b"\n\n") and not self._marked(data):
            # The common case: whole events, none with usage: count them, pass them as they are.
            self.chunks += data.count(b"data:") - data.count(_DONE)
            return data
        if self._pending:
            data = self._pending + data
        end = data.rfind(b"\n\n") + 2
        if end < 2:
            end = data.rfind(b"\n\r\n") + 3
            if end < 3:
                if len(data) > _MAX_PENDING:
                    self._pending = b""
                    return data
                self._pending = data
                return b""
        self._pending = data[end:]
        return self._complete_events(data[:end])

    def _complete_events(self, data: bytes) -> bytes:
        """Whole events: only one carrying a usage marker is parsed; the rest is counted and
        passed on with byte scans (no per-event Python work)."""
        out = []
        while (found := self._pattern.search(data)) is not None:
            at = found.start()
            lf, crlf = data.rfind(b"\n\n", 0, at), data.rfind(b"\n\r\n", 0, at)
            start = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
            end_match = _EVENT_END.search(data, found.end())
            stop = end_match.end() if end_match is not None else len(data)
            before, event, data = data[:start], data[start:stop], data[stop:]
            self.chunks += before.count(b"data:") - before.count(_DONE)
            out.append(before)
            out.append(self._consume(event))
        self.chunks += data.count(b"data:") - data.count(_DONE)
        if not out:
            return data
        out.append(data)
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left when the upstream ends (a stream not ending in a blank line)."""
        rest, self._pending = self._pending, b""
        return rest

    def _consume(self, event: bytes) -> bytes:
        """Record the usage in ``event``; returns what of the event goes on to the client."""
        payload = None
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    payload = orjson.loads(line[5:])
                except ValueError:
                    payload = None
        if not isinstance(payload, dict):
            return event
        report = read_usage(payload)
        if report is not None:
            self.tally.add(report)
        if payload.get("choices"):
            self.chunks += 1
            return event
        if report is None or not self.strip_usage:
            return event
        if _CHUNK_FIELDS.issuperset(payload):
            return b""  # the usage-only chunk the proxy asked for: the client did not
        del payload["usage"]  # it carries more (llama.cpp's timings): only the usage goes
        return b"data: " + orjson.dumps(payload) + b"\n\n"


class LineUsageTap:
    """The same for newline-delimited JSON (Ollama streams): every line goes on as it comes;
    a line carrying a usage marker is parsed (a partial line waits for its end)."""

    __slots__ = ("_markers", "_pending", "chunks", "tally")

    def __init__(self, markers: UsageMarkers):
        self.tally = UsageTally()
        self.chunks = 0
        self._pending = b""
        self._markers = markers

    @property
    def usage(self) -> tuple[int, int] | None:
        return self.tally.result

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(b"\n") + 1
        lines, self._pending = buffer[:end], buffer[end:]
        if len(self._pending) > _MAX_PENDING:
            self._pending = b""  # not NDJSON after all: stop looking
        if lines:
            self.chunks += lines.count(b"\n")
            if any(n in lines for n in self._markers.needles):
                for line in lines.splitlines():
                    if self._markers.pattern.search(line):
                        self._read(line)
        return data

    def _read(self, line: bytes) -> None:
        try:
            report = read_usage(orjson.loads(line))
        except ValueError:
            return
        if report is not None:
            self.tally.add(report)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        if rest.strip():
            self.chunks += 1
            if self._markers.pattern.search(rest):
                self._read(rest)
        return b""  # every byte went on already


class BodyUsageTap:
    """Any other streamed body: relayed as it comes, up to ``_MAX_KEPT`` bytes kept to read its
    usage once it ends (a chunked JSON answer)."""

    __slots__ = ("_kept", "_markers", "_size", "chunks", "usage")

    def __init__(self, markers: UsageMarkers):
        self.chunks = 0
        self.usage: tuple[int, int] | None = None
        self._kept: list[bytes] = []
        self._size = 0
        self._markers = markers

    def feed(self, data: bytes) -> bytes:
        if self._size <= _MAX_KEPT:
            self._size += len(data)
            if self._size <= _MAX_KEPT:
                self._kept.append(data)
            else:
                self._kept.clear()  # too big to parse for usage: the reservation stands
        return data

    def flush(self) -> bytes:
        if self._kept:
            self.usage = usage_from_body(b"".join(self._kept), self._markers)
            self._kept.clear()
        return b""
