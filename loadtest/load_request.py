"""One load run's shared state (the request bodies, the budget, the client mix) and sending
one request through it.

aiohttp is used directly, not the SDK, so the generator costs little next to what it measures;
a stream is read as SSE and only its usage chunk and error events are parsed.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from .load_result import RequestRecord, credit_stream, stream_slot
from .load_spec import LoadSpec
from .sse import SSEData

#: response header in which the proxy reports how long the request queued (milliseconds)
QUEUE_WAIT_HEADER = "x-llm-throttle-queue-ms"


class LoadRun:
    """State of one run: shared by workers, arrival loop and sampler (never module-level)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.urls = [u.rstrip("/") + "/chat/completions" for u in spec.base_urls or [spec.base_url]]
        self.url = self.urls[0]
        self.records: list[RequestRecord] = []
        self.series: list[dict[str, Any]] = []
        self.started = 0
        self.in_flight = 0
        self.ok = 0
        self.t0 = 0.0
        self.deadline = math.inf
        self.bodies = {
            False: self._body(stream=False),
            True: self._body(stream=True),
        }
        self.class_headers = {
            c.name: {"Authorization": f"Bearer {c.api_key}", "Content-Type": "application/json",
                     **spec.headers}
            for c in spec.mix
        }
        self._weights = [c.weight for c in spec.mix]
        #: completion tokens of successful streams, by the STREAM_SLOT_S slot they arrived in
        self.streamed: dict[int, float] = {}

    def _body(self, *, stream: bool) -> bytes:
        words = ("load", "test", "prompt", "with", "some", "plain", "words")
        text = " ".join(words[i % len(words)] for i in range(self.spec.prompt_chars))
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": "user", "content": text[: self.spec.prompt_chars]}],
            "stream": stream,
        }
        if self.spec.max_tokens is not None:
            body["max_tokens"] = self.spec.max_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def take(self) -> bool:
        """Claim the next request of the budget; False once the run is over."""
        spec = self.spec
        if spec.requests is not None and self.started >= spec.requests:
            return False
        if self.now() >= self.deadline:
            return False
        self.started += 1
        return True

    def next_url(self) -> str:
        """Round-robin over the endpoints, by request number."""
        return self.urls[self.started % len(self.urls)]

    def pick_class(self) -> str:
        if len(self.spec.mix) == 1:
            return self.spec.mix[0].name
        return self.rng.choices(self.spec.mix, weights=self._weights)[0].name


async def send_request(run: LoadRun, session: aiohttp.ClientSession, client: str) -> None:
    spec = run.spec
    rec = RequestRecord(start=run.now(), client=client)
    url = run.url if len(run.urls) == 1 else run.next_url()
    t0 = time.perf_counter()
    run.in_flight += 1
    try:
        async with session.post(
            url, data=run.bodies[spec.stream], headers=run.class_headers[client]
        ) as resp:
            rec.status = resp.status
            waited = resp.headers.get(QUEUE_WAIT_HEADER)
            if waited is not None:
                try:
                    rec.queue_wait = float(waited) / 1000.0
                except ValueError:
                    pass
            if resp.status != 200:
                await resp.read()
                rec.error = f"http_{resp.status}"
            elif spec.stream:
                await read_stream(resp, rec, t0, run)
            else:
                data = await resp.json(content_type=None)
                usage = data.get("usage") or {}
                rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                rec.completion_tokens = int(usage.get("completion_tokens") or 0)
                rec.ok = True
    except TimeoutError:
        rec.error = "timeout"
    except aiohttp.ClientPayloadError:
        rec.error = "incomplete_stream"
    except aiohttp.ClientError as exc:
        rec.error = "connection" if rec.status == 0 else f"client_{type(exc).__name__}"
    except ValueError:
        rec.error = "bad_json"
    finally:
        rec.latency = time.perf_counter() - t0
        run.in_flight -= 1
        run.records.append(rec)
        if rec.ok:
            run.ok += 1


async def read_stream(resp: aiohttp.ClientResponse, rec: RequestRecord, t0: float,
                       run: LoadRun) -> None:
    """Consume SSE; only the usage chunk and error events are parsed (cheap per chunk).

    Each content chunk is counted in the time slot it arrived in; once the stream ends well,
    those counts (scaled to the usage's completion tokens: a finish chunk carries none) join
    the run's ``streamed`` tokens, so a window of the run counts the tokens that arrived in it,
    not whole requests that started in it.
    """
    chunks = 0
    slots: Counter[int] = Counter()
    events = SSEData(resp.content)
    async for payload in events:
        now = time.perf_counter()
        if rec.ttft is None:
            rec.ttft = now - t0
        if b'"usage":{' in payload or payload.startswith(b'{"error"'):
            data = json.loads(payload)
            if "error" in data:
                rec.error = "stream_error"
                return
            usage = data.get("usage") or {}
            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            rec.completion_tokens = int(usage.get("completion_tokens") or 0)
            if data.get("choices"):
                chunks += 1
                slots[stream_slot(now - run.t0)] += 1
        else:
            chunks += 1
            slots[stream_slot(now - run.t0)] += 1
    if not events.done:
        rec.error = "incomplete_stream"
        return
    if rec.ttft is None:  # [DONE] was the first event
        rec.ttft = time.perf_counter() - t0
    if rec.completion_tokens == 0:
        rec.completion_tokens = max(0, chunks - 1)  # no usage: count content chunks
    rec.ok = True
    credit_stream(run.streamed, slots, rec.completion_tokens)
