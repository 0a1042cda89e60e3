"""Load generator for any OpenAI-compatible endpoint (``python -m loadtest run``).

Two arrival models: *closed loop* (``clients`` workers, each sends its next request when the
previous one ends: measures capacity) and *open loop* (Poisson arrivals at ``rate`` per second
whatever the server does: shows queueing and collapse). Every run is bounded by a request
count and/or a duration, and each request by ``timeout``.

aiohttp is used directly, not the SDK, so the generator costs little next to what it measures.
While it runs, a sampler records every ``sample_interval`` seconds the requests done and, when
given, the upstream's vLLM gauges and the proxy's ``/throttle/status`` queue depth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .runtime import loop_factory
from .sse import SSEData

#: response header in which the proxy reports how long the request queued (milliseconds)
QUEUE_WAIT_HEADER = "x-llm-throttle-queue-ms"
#: width of the time slots streamed tokens are counted in (``summary["streamed_tokens"]``)
STREAM_SLOT_S = 0.5


@dataclass
class ClientClass:
    """One kind of caller: its API key picks its priority/limits at the proxy."""

    name: str
    api_key: str
    weight: float = 1.0


@dataclass
class LoadSpec:
    """What to send, how fast, and for how long."""

    base_url: str = "http://127.0.0.1:8000/v1"
    #: when given, requests go round-robin to these (e.g. several proxy replicas), not base_url
    base_urls: list[str] = field(default_factory=list)
    model: str = "mock-model"
    #: closed loop: this many back-to-back workers (ignored when ``rate`` is set)
    clients: int = 4
    #: open loop: Poisson arrivals per second
    rate: float | None = None
    #: stop after this many requests and/or seconds (at least one; both if given)
    requests: int | None = None
    duration: float | None = None
    stream: bool = True
    max_tokens: int | None = 16
    prompt_chars: int = 200
    mix: list[ClientClass] = field(default_factory=lambda: [ClientClass("default", "x")])
    timeout: float = 60.0
    upstream_metrics: list[str] = field(default_factory=list)
    proxy_status: str | None = None
    sample_interval: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    label: str = ""
    progress: bool = False

    def validate(self) -> None:
        if self.requests is None and self.duration is None:
            raise ValueError("a run needs --requests and/or --duration")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.rate is None and self.clients < 1:
            raise ValueError("--clients must be at least 1")
        if not self.mix or sum(c.weight for c in self.mix) <= 0:
            raise ValueError("the client mix needs a positive weight")

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it; times in seconds from the start of the run."""

    start: float
    client: str
    status: int = 0  # 0: no HTTP response (connection error, timeout before headers)
    ok: bool = False
    latency: float = 0.0
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: seconds queued at the proxy, from its QUEUE_WAIT_HEADER (None when not reported)
    queue_wait: float | None = None


@dataclass
class LoadResult:
    spec: dict[str, Any]
    records: list[RequestRecord]
    series: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.spec.get("label") or "",
            "spec": self.spec,
            "summary": self.summary,
            "series": self.series,
            "records": [asdict(r) for r in self.records],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path


# -- statistics --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _distribution(values: Iterable[float]) -> dict[str, float | None]:
    data = sorted(values)
    return {
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p99": percentile(data, 99),
        "max": data[-1] if data else None,
        "mean": sum(data) / len(data) if data else None,
    }


def summarize(records: Sequence[RequestRecord], elapsed: float) -> dict[str, Any]:
    """Counts, throughput, goodput and latency/TTFT percentiles (of successful requests)."""
    ok = [r for r in records if r.ok]
    errors = Counter(r.error or f"http_{r.status}" for r in records if not r.ok)
    elapsed = max(elapsed, 1e-9)
    good_tokens = sum(r.completion_tokens for r in ok)
    summary: dict[str, Any] = {
        "count": len(records),
        "ok": len(ok),
        "errors": dict(errors),
        "status": dict(Counter(str(r.status) for r in records)),
        "elapsed_s": elapsed,
        "throughput_rps": len(records) / elapsed,
        "goodput_rps": len(ok) / elapsed,
        "goodput_tokens_per_s": good_tokens / elapsed,
        "completion_tokens": good_tokens,
        "latency": _distribution(r.latency for r in ok),
        "ttft": _distribution(r.ttft for r in ok if r.ttft is not None),
    }
    waited = [r for r in ok if r.queue_wait is not None]
    if waited:
        summary["queue_wait"] = _distribution(r.queue_wait or 0.0 for r in waited)
        summary["service"] = _distribution(r.latency - (r.queue_wait or 0.0) for r in waited)
    classes = sorted({r.client for r in records})
    if len(classes) > 1:
        summary["by_client"] = {
            name: {
                "count": sum(1 for r in records if r.client == name),
                "ok": sum(1 for r in ok if r.client == name),
                "latency": _distribution(r.latency for r in ok if r.client == name),
                "ttft": _distribution(
                    r.ttft for r in ok if r.client == name and r.ttft is not None
                ),
            }
            for name in classes
        }
    return summary


# -- one request -------------------------------------------------------------------------------


class _Run:
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


async def _one_request(run: _Run, session: aiohttp.ClientSession, client: str) -> None:
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
                await _read_stream(resp, rec, t0, run)
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


async def _read_stream(resp: aiohttp.ClientResponse, rec: RequestRecord, t0: float,
                       run: _Run) -> None:
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
                slots[int((now - run.t0) / STREAM_SLOT_S)] += 1
        else:
            chunks += 1
            slots[int((now - run.t0) / STREAM_SLOT_S)] += 1
    if not events.done:
        rec.error = "incomplete_stream"
        return
    if rec.ttft is None:  # [DONE] was the first event
        rec.ttft = time.perf_counter() - t0
    if rec.completion_tokens == 0:
        rec.completion_tokens = max(0, chunks - 1)  # no usage: count content chunks
    rec.ok = True
    if chunks:
        scale = rec.completion_tokens / chunks
        for slot, count in slots.items():
            run.streamed[slot] = run.streamed.get(slot, 0.0) + count * scale


# -- arrival models ----------------------------------------------------------------------------


async def _closed_loop(run: _Run, session: aiohttp.ClientSession) -> None:
    spec = run.spec
    # Classes are dealt to workers in proportion to their weights (largest remainder).
    total = sum(c.weight for c in spec.mix)
    quotas = [c.weight / total * spec.clients for c in spec.mix]
    counts = [math.floor(q) for q in quotas]
    for i in sorted(range(len(quotas)), key=lambda i: counts[i] - quotas[i])[
        : spec.clients - sum(counts)
    ]:
        counts[i] += 1
    names = [c.name for c, n in zip(spec.mix, counts, strict=True) for _ in range(n)]

    async def worker(client: str) -> None:
        while run.take():
            await _one_request(run, session, client)

    await asyncio.gather(*(worker(name) for name in names))


async def _open_loop(run: _Run, session: aiohttp.ClientSession) -> None:
    assert run.spec.rate is not None
    tasks: set[asyncio.Task[None]] = set()
    next_at = 0.0
    while True:
        next_at += run.rng.expovariate(run.spec.rate)
        if next_at >= run.deadline:
            break
        delay = next_at - run.now()
        if delay > 0:
            await asyncio.sleep(delay)  # behind schedule: send at once, never skip arrivals
        if not run.take():
            break
        task = asyncio.create_task(_one_request(run, session, run.pick_class()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


# -- sampling ----------------------------------------------------------------------------------


def parse_vllm_gauges(text: str) -> dict[str, float]:
    """Sum of each ``vllm:num_requests_*`` gauge over its label sets."""
    out = {"running": 0.0, "waiting": 0.0}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f"vllm:num_requests_{key}"):
                try:
                    out[key] += float(line.rsplit(None, 1)[-1])
                except ValueError:
                    pass
    return out


def parse_proxy_status(doc: Any) -> dict[str, float | None]:
    """Queue depth and in-flight from ``/throttle/status``; absent fields stay None."""
    if not isinstance(doc, dict):
        return {"queue_depth": None, "proxy_in_flight": None}
    models = doc.get("models") if isinstance(doc.get("models"), dict) else {}
    entries = [m for m in models.values() if isinstance(m, dict)]
    queue = doc.get("queue")
    depth: float | None = None
    if isinstance(queue, dict) and isinstance(queue.get("depth"), (int, float)):
        depth = float(queue["depth"])
    elif any("queued" in m for m in entries):
        depth = float(sum(m.get("queued") or 0 for m in entries))
    in_flight = (
        float(sum(m.get("in_flight") or 0 for m in entries))
        if any("in_flight" in m for m in entries)
        else None
    )
    return {"queue_depth": depth, "proxy_in_flight": in_flight}


async def _scrape(session: aiohttp.ClientSession, url: str) -> tuple[int, str] | None:
    try:
        async with session.get(url) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _sample(run: _Run, session: aiohttp.ClientSession) -> dict[str, Any]:
    spec = run.spec
    point: dict[str, Any] = {
        "t": round(run.now(), 4),
        "completed": len(run.records),
        "ok": run.ok,
        "in_flight": run.in_flight,
    }
    urls = list(spec.upstream_metrics) + ([spec.proxy_status] if spec.proxy_status else [])
    replies = await asyncio.gather(*(_scrape(session, u) for u in urls))
    if spec.upstream_metrics:
        gauges = [parse_vllm_gauges(r[1]) for r in replies[: len(spec.upstream_metrics)]
                  if r is not None and r[0] == 200]
        if gauges:
            running = sum(g["running"] for g in gauges)
            waiting = sum(g["waiting"] for g in gauges)
            point.update(upstream_running=running, upstream_waiting=waiting,
                         upstream_in_flight=running + waiting)
    if spec.proxy_status:
        reply = replies[-1]
        doc: Any = None
        if reply is not None and reply[0] == 200:
            try:
                doc = json.loads(reply[1])
            except ValueError:
                doc = None
        point.update(parse_proxy_status(doc))
    return point


def _progress_line(run: _Run, width: int = 30) -> str:
    spec = run.spec
    fractions = []
    if spec.requests:
        fractions.append(len(run.records) / spec.requests)
    if spec.duration:
        fractions.append(min(1.0, run.now() / spec.duration))
    frac = max(fractions) if fractions else 0.0
    filled = int(frac * width)
    errors = len(run.records) - run.ok
    rps = len(run.records) / max(run.now(), 1e-9)
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {len(run.records)} done "
        f"{run.ok} ok {errors} err {run.in_flight} in flight {rps:.1f} req/s "
        f"{run.now():.1f}s"
    )


async def _sampler(run: _Run, session: aiohttp.ClientSession, stop: asyncio.Event,
                   on_sample: Callable[[dict[str, Any]], None] | None = None) -> None:
    interval = run.spec.sample_interval
    while True:
        run.series.append(await _sample(run, session))
        if on_sample is not None:
            on_sample(run.series[-1])
        if run.spec.progress:
            sys.stderr.write(_progress_line(run))
            sys.stderr.flush()
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            return
        except TimeoutError:
            pass


async def run_load(
    spec: LoadSpec, on_sample: Callable[[dict[str, Any]], None] | None = None
) -> LoadResult:
    """Run one bounded load test and return every record, the time series and a summary.

    ``on_sample`` sees every point of the time series as it is taken (live displays).
    """
    spec.validate()
    run = _Run(spec)
    # limit=0: the connector must never cap concurrency below what the test asks for.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    scrape_timeout = aiohttp.ClientTimeout(total=max(0.2, spec.sample_interval * 0.8))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
            aiohttp.ClientSession(timeout=scrape_timeout) as scraper:
        run.t0 = time.perf_counter()
        run.deadline = spec.duration if spec.duration is not None else math.inf
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sampler(run, scraper, stop, on_sample))
        try:
            if spec.rate is not None:
                await _open_loop(run, session)
            else:
                await _closed_loop(run, session)
        finally:
            elapsed = run.now()
            stop.set()
            await sampler
        run.series.append(await _sample(run, scraper))
        if on_sample is not None:
            on_sample(run.series[-1])
    if spec.progress:
        sys.stderr.write(_progress_line(run) + "\n")
    run.records.sort(key=lambda r: r.start)
    spec_dict = asdict(spec)
    spec_dict["mode"] = spec.mode
    for c in spec_dict["mix"]:
        c["api_key"] = c["api_key"][:4] + "..." if len(c["api_key"]) > 8 else "***"
    summary = summarize(run.records, elapsed)
    if run.streamed:
        last = max(run.streamed)
        summary["streamed_tokens"] = {
            "slot_s": STREAM_SLOT_S,
            "tokens": [round(run.streamed.get(i, 0.0), 1) for i in range(last + 1)],
        }
    return LoadResult(spec_dict, run.records, run.series, summary)


def streamed_rate(summary: dict[str, Any], start_s: float, end_s: float) -> float | None:
    """Completion tokens a second that arrived between ``start_s`` and ``end_s`` of the run
    (whole slots; None when the run has no per-slot counts: not streamed, or older results)."""
    streamed = summary.get("streamed_tokens")
    if not streamed or end_s <= start_s:
        return None
    slot = float(streamed["slot_s"])
    first, last = math.ceil(start_s / slot - 1e-9), math.floor(end_s / slot + 1e-9)
    tokens = streamed["tokens"][first:last]
    return sum(tokens) / max((last - first) * slot, 1e-9)


# -- command line ------------------------------------------------------------------------------


def parse_mix(text: str) -> list[ClientClass]:
    """``name:KEY:weight,name2:KEY2:weight2`` (weight defaults to 1)."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise argparse.ArgumentTypeError(f"bad mix entry {item!r}: want name:KEY[:weight]")
        out.append(ClientClass(parts[0], parts[1], float(parts[2]) if len(parts) == 3 else 1.0))
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = LoadSpec()
    parser.add_argument("--base-url", action="append", metavar="URL",
                        help=f"OpenAI-compatible base (…/v1; default {d.base_url}); repeat it "
                        "to spread the requests round-robin (e.g. over proxy replicas)")
    parser.add_argument("--model", default=d.model)
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument("--clients", type=int, default=d.clients,
                          help="closed loop: back-to-back workers")
    arrivals.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--requests", type=int, help="stop after this many requests")
    parser.add_argument("--duration", type=float, help="stop starting requests after S seconds")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=d.stream)
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens)
    parser.add_argument("--prompt-chars", type=int, default=d.prompt_chars)
    parser.add_argument("--api-key", action="append", default=[],
                        help="repeat for several equally weighted clients")
    parser.add_argument("--mix", type=parse_mix,
                        help="name:KEY:weight,... (e.g. interactive:K1:0.2,batch:K2:0.8)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="per request, seconds")
    parser.add_argument("--upstream-metrics", action="append", default=[], metavar="URL",
                        help="vLLM-style /metrics to sample (repeatable; summed)")
    parser.add_argument("--proxy-status", metavar="URL", help="proxy /throttle/status to sample")
    parser.add_argument("--sample-interval", type=float, default=d.sample_interval)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra request header (repeatable), e.g. x-mock-fault:delay:1")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--label", help="name of this run in reports (default: --out stem)")
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    mix = args.mix or [ClientClass(f"key{i + 1}", k) for i, k in enumerate(args.api_key)] or [
        ClientClass("default", "x")
    ]
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise SystemExit(f"bad --header {item!r}: want NAME:VALUE")
        headers[name.strip()] = value.strip()
    label = args.label or (Path(args.out).stem if args.out else "")
    urls = args.base_url or [LoadSpec().base_url]
    return LoadSpec(
        base_url=urls[0], base_urls=urls if len(urls) > 1 else [], model=args.model,
        clients=args.clients, rate=args.rate,
        requests=args.requests, duration=args.duration, stream=args.stream,
        max_tokens=args.max_tokens, prompt_chars=args.prompt_chars, mix=mix,
        timeout=args.timeout, upstream_metrics=args.upstream_metrics,
        proxy_status=args.proxy_status, sample_interval=args.sample_interval,
        headers=headers, seed=args.seed, label=label,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def format_summary(summary: dict[str, Any]) -> str:
    lat, ttft = summary["latency"], summary["ttft"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}ms"

    return (
        f"{summary['count']} requests, {summary['ok']} ok, errors {summary['errors'] or 'none'}\n"
        f"throughput {summary['throughput_rps']:.1f} req/s, goodput "
        f"{summary['goodput_rps']:.1f} req/s {summary['goodput_tokens_per_s']:.0f} tok/s\n"
        f"latency p50 {ms(lat['p50'])} p90 {ms(lat['p90'])} p99 {ms(lat['p99'])} "
        f"max {ms(lat['max'])}; ttft p50 {ms(ttft['p50'])} p99 {ms(ttft['p99'])}"
    )


def cli_main(args: argparse.Namespace) -> int:
    """``python -m loadtest run``: print a summary, optionally write the JSON result."""
    spec = spec_from_args(args)
    try:
        spec.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run_load(spec))
    print(format_summary(result.summary))
    if args.out:
        print(f"wrote {result.save(args.out)}")
    return 0 if result.summary["ok"] > 0 else 1
