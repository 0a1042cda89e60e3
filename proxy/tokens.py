"""Token accounting: what a request reserves before it runs, and what it really used.

A request reserves ``prompt estimate + min(max_tokens, model cap)`` against its TPM buckets.
The prompt estimate is the body size / 4 (about 4 bytes per token for English and JSON), which
costs nothing to compute and errs on the high side; the real ``usage`` settles the difference.
A stream cut short is charged what it generated: one token per content chunk.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

BYTES_PER_TOKEN = 4
_USAGE = b'"usage"'
_DONE = b"[DONE]"
_EVENT_END = re.compile(rb"\r?\n\r?\n")
#: a usage object (not ``"usage": null``): the one event of a stream worth parsing
_REAL_USAGE = re.compile(rb'"usage"\s*:\s*\{')
#: a partial event longer than this is passed on as is (not SSE after all, or a huge event)
_MAX_PENDING = 1 << 20


def estimate_prompt_tokens(body_size: int) -> int:
    return body_size // BYTES_PER_TOKEN + 1


def reservation(body_size: int, max_tokens: int | None, cap: int, generates: bool) -> int:
    """Tokens to reserve; embeddings (``generates=False``) only pay for their input."""
    completion = min(max_tokens if max_tokens is not None else cap, cap) if generates else 0
    return estimate_prompt_tokens(body_size) + completion


def usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) from an OpenAI ``usage`` object, or None when absent or malformed."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        total = usage.get("total_tokens")
        return (total, 0) if isinstance(total, int) else None
    return prompt, completion


def usage_from_body(body: bytes) -> tuple[int, int] | None:
    """Usage of a plain JSON response; cheap when there is none."""
    if _USAGE not in body:
        return None
    try:
        return usage_tokens(orjson.loads(body).get("usage"))
    except (ValueError, AttributeError):
        return None


class SSEUsageTap:
    """Watches a server-sent-event stream for ``usage`` as it is relayed, event by event.

    Complete events are passed on at once; only a partial event at the end of a read waits
    for its remainder. With ``strip_usage`` the usage-only chunk that the proxy asked for on
    the client's behalf (``choices: []``) is removed, so the client sees what it asked for.
    """

    __slots__ = ("strip_usage", "usage", "chunks", "_pending")

    def __init__(self, strip_usage: bool):
        self.strip_usage = strip_usage
        #: (prompt, completion) once the usage chunk went by
        self.usage: tuple[int, int] | None = None
        #: data events seen (not counting [DONE] or the usage chunk): a floor for completion
        self.chunks = 0
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """Returns the bytes to send on now."""
        if not self._pending and data.endswith(b"\n\n") and _USAGE not in data:
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
        """Whole events: only one carrying a usage object is parsed; the rest is counted and
        passed on with byte scans (no per-event Python work)."""
        out = []
        while (found := _REAL_USAGE.search(data)) is not None:
            at = found.start()
            lf, crlf = data.rfind(b"\n\n", 0, at), data.rfind(b"\n\r\n", 0, at)
            start = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
            end_match = _EVENT_END.search(data, found.end())
            stop = end_match.end() if end_match is not None else len(data)
            before, event, data = data[:start], data[start:stop], data[stop:]
            self.chunks += before.count(b"data:") - before.count(_DONE)
            out.append(before)
            if self._consume(event):
                out.append(event)
        self.chunks += data.count(b"data:") - data.count(_DONE)
        if not out:
            return data
        out.append(data)
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left when the upstream ends (a stream not ending in a blank line)."""
        rest, self._pending = self._pending, b""
        return rest

    def _consume(self, event: bytes) -> bool:
        """Record the usage in ``event``; False when the event is to be dropped."""
        payload = None
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    payload = orjson.loads(line[5:])
                except ValueError:
                    payload = None
        if not isinstance(payload, dict):
            return True
        usage = usage_tokens(payload.get("usage"))
        if usage is not None:
            self.usage = usage
        if payload.get("choices"):
            self.chunks += 1
            return True
        return not (self.strip_usage and usage is not None)
