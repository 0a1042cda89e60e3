"""A bounded soak (``python -m loadtest soak --minutes 30 --out results/soak``); not run in CI.

The mock LLM and ``llm-throttle serve`` run as subprocesses (see :mod:`loadtest.processes`),
and an open-loop mix of requests runs against the proxy for the given minutes: plain and
streamed calls, clients that leave while queued or mid-stream, upstream faults (die mid-stream,
hang past the upstream read timeout, 429, 503) and a share of bad input. Every few seconds the
proxy's RSS (``VmRSS``), open file descriptors and ``/throttle/status`` are sampled.

At the end the load stops, every client finishes or leaves, and the proxy is given a few
seconds to drain; the permits still outstanding then (in flight and queued, over every
resource) must be zero. Each request is classified by cause (status and OpenAI error code, or
what the client saw) and checked against what its kind allows: a cause outside that set is
*unexpected* (a 500 from the proxy is always unexpected). Outputs: ``soak.json``,
``soak-rss.png`` and ``soak.md`` in the ``--out`` folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.processes import CODE_ROOT, Service, ServiceGroup
from loadtest.sse import SSEData

MODEL = "mock-model"
CHAT = "/v1/chat/completions"
KEYS = {"interactive": "soak-interactive", "batch": "soak-batch"}
#: what a client that leaves on purpose is recorded as
LEFT = "client left (planned)"


@dataclass(frozen=True, slots=True)
class Kind:
    """One sort of request in the mix, and the causes it may legitimately end with."""

    name: str
    weight: float
    expected: frozenset[str]


def _causes(*names: str) -> frozenset[str]:
    # A busy proxy may always refuse with a queue-full or queue-timeout 429.
    return frozenset(names) | {"429 queue_full", "429 queue_timeout"}


KINDS: tuple[Kind, ...] = (
    Kind("plain", 25, _causes("200")),
    Kind("stream", 25, _causes("200")),
    Kind("leave-early", 8, _causes(LEFT, "200")),  # may still be queued when it leaves
    Kind("leave-mid-stream", 8, _causes(LEFT, "200")),
    Kind("die-mid-stream", 5, _causes("200 stream error upstream_unreachable")),
    Kind("hang", 3, _causes("504 upstream_timeout")),
    Kind("upstream-429", 5, _causes("429 rate_limit_exceeded")),
    Kind("upstream-503", 5, _causes("503 unavailable")),
    Kind("bad-json", 3, _causes("400 invalid_json")),
    Kind("bad-field", 3, _causes("400 invalid_value", "400 missing_model")),
    Kind("unknown-model", 2, _causes("404 model_not_found")),
    Kind("bad-key", 2, frozenset({"401 invalid_api_key", "401 missing_api_key"})),
    Kind("too-large", 1, frozenset({"413 request_too_large"})),
    Kind("passthrough", 5, frozenset({"200"})),
)


@dataclass
class SoakSpec:
    minutes: float = 30.0
    out: Path = Path("results/soak")
    #: open-loop arrivals per second (Poisson)
    rate: float = 25.0
    #: ``memory``, ``redis`` (start a redis-server) or a ``redis://`` URL
    store: str = "memory"
    sample_interval_s: float = 5.0
    max_in_flight: int = 8
    upstream_read_timeout_s: float = 2.0
    #: clients still unfinished this long after the load stops are abandoned (and counted)
    client_timeout_s: float = 30.0
    #: most requests open at once on the client side; arrivals past it are skipped and counted
    max_open: int = 400
    drain_timeout_s: float = 10.0
    seed: int = 1


@dataclass
class SoakResult:
    spec: dict[str, Any]
    machine: dict[str, Any]
    started_at: float
    elapsed_s: float = 0.0
    requests: int = 0
    skipped_arrivals: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    by_cause: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: permits still held after the drain, by resource (``queue`` is the global depth)
    outstanding: dict[str, float] = field(default_factory=dict)
    upstream_in_flight_after: int | None = None
    #: tracebacks in the proxy's log, by logger message and exception line
    proxy_log_errors: dict[str, int] = field(default_factory=dict)
    proxy_exit_code: int | None = None

    @property
    def permits_outstanding(self) -> float:
        return sum(self.outstanding.values())

    def rss_mib(self) -> dict[str, float | None]:
        values = [s["rss_kib"] / 1024 for s in self.samples if s.get("rss_kib")]
        if not values:
            return {"start": None, "end": None, "max": None}
        return {"start": round(values[0], 1), "end": round(values[-1], 1),
                "max": round(max(values), 1)}

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["permits_outstanding"] = self.permits_outstanding
        doc["rss_mib"] = self.rss_mib()
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SoakResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


# -- one request -------------------------------------------------------------------------------


def _body(rng: random.Random, stream: bool, **extra: Any) -> dict[str, Any]:
    words = " ".join(rng.choice(("soak", "load", "token", "gpu", "queue")) for _ in range(20))
    return {"model": MODEL, "messages": [{"role": "user", "content": words}],
            "max_tokens": rng.randint(4, 24), "stream": stream, **extra}


async def _error_cause(response: aiohttp.ClientResponse) -> str:
    raw = await response.read()
    try:
        code = json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "non-openai-body"
    return f"{response.status} {code}"


async def _read_stream(response: aiohttp.ClientResponse, leave_after: int | None) -> str:
    """Consume SSE events; leave after ``leave_after`` of them when set."""
    events = 0
    stream = SSEData(response.content)
    async for payload in stream:
        if payload.startswith(b'{"error"'):
            return f"200 stream error {json.loads(payload)['error'].get('code')}"
        events += 1
        if leave_after is not None and events >= leave_after:
            response.close()
            return LEFT
    return "200" if stream.done else "200 stream ended without [DONE]"


async def _send(session: aiohttp.ClientSession, base: str, kind: str,
                rng: random.Random) -> str:
    """Send one request of ``kind``; returns its cause."""
    headers = {"Authorization": f"Bearer {KEYS[rng.choice(('interactive', 'batch'))]}"}
    method, path, data = "POST", CHAT, None
    body: dict[str, Any] | None = _body(rng, stream=kind in (
        "stream", "leave-mid-stream", "die-mid-stream") or rng.random() < 0.5)
    leave_after = None
    if kind == "leave-mid-stream":
        assert body is not None
        body.update(stream=True, max_tokens=200)
        leave_after = rng.randint(1, 20)
    elif kind == "die-mid-stream":
        assert body is not None
        body.update(stream=True, max_tokens=20)
        headers["x-mock-fault"] = "die-mid-stream"
    elif kind == "hang":
        headers["x-mock-fault"] = "hang"
    elif kind == "upstream-429":
        headers["x-mock-fault"] = "refuse-429:1"
    elif kind == "upstream-503":
        headers["x-mock-fault"] = "unavailable-503"
    elif kind == "bad-json":
        body, data = None, rng.choice((b"{not json", b"\xff\xfe\x00", b"[1, 2]", b""))
    elif kind == "bad-field":
        assert body is not None
        body.update(rng.choice(({"model": 42}, {"max_tokens": "a lot"}, {"stream": "yes"},
                                {"model": None})))
    elif kind == "unknown-model":
        assert body is not None
        body["model"] = "no-such-model"
    elif kind == "bad-key":
        if rng.random() < 0.5:
            headers["Authorization"] = "Bearer wrong-key"
        else:
            del headers["Authorization"]
    elif kind == "too-large":
        assert body is not None
        body["pad"] = "x" * 300_000
    elif kind == "passthrough":
        method, path, body = "GET", "/v1/models", None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    async with session.request(method, base + path, data=data, headers=headers) as response:
        if response.status != 200:
            return await _error_cause(response)
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            return await _read_stream(response, leave_after)
        await response.read()
        return "200"


async def _one(session: aiohttp.ClientSession, base: str, kind: str, rng: random.Random,
               timeout_s: float) -> str:
    """A request whose client may leave at a random point; exceptions become causes."""
    attempt = asyncio.ensure_future(_send(session, base, kind, rng))
    try:
        if kind == "leave-early":
            # Leave after 0-300 ms: often while queued, sometimes mid-generation.
            done, _ = await asyncio.wait({attempt}, timeout=rng.uniform(0.0, 0.3))
            if not done:
                attempt.cancel()
                return LEFT
        return await asyncio.wait_for(attempt, timeout_s)
    except TimeoutError:
        return "client timeout"
    except aiohttp.ClientPayloadError:
        return "client payload error"
    except aiohttp.ClientError as exc:
        return f"client {type(exc).__name__}"
    finally:
        if not attempt.done():
            attempt.cancel()


# -- sampling ----------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and open file descriptors of a live process; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
        out["fds"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        pass
    return out


def held_permits(doc: dict[str, Any]) -> dict[str, float]:
    """Nonzero in-flight and queued counts of a ``/throttle/status`` document, by resource."""
    held: dict[str, float] = {}
    for group in ("models", "upstreams", "gpus", "clients", "attributed"):
        for name, entry in (doc.get(group) or {}).items():
            if entry.get("in_flight"):
                held[f"{group}.{name}.in_flight"] = entry["in_flight"]
            if entry.get("queued"):
                held[f"{group}.{name}.queued"] = entry["queued"]
    depth = (doc.get("queue") or {}).get("depth")
    if depth:
        held["queue"] = depth
    return held


async def _status(session: aiohttp.ClientSession, base: str) -> dict[str, Any] | None:
    try:
        async with session.get(base + "/throttle/status") as response:
            if response.status == 200:
                doc: dict[str, Any] = await response.json()
                return doc
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return None


async def _sample(session: aiohttp.ClientSession, proxy: Service, t0: float,
                  done: Counter[str]) -> dict[str, Any]:
    sample: dict[str, Any] = {"t": round(time.monotonic() - t0, 2), "done": done.total(),
                              **_proc_status(proxy.pid), "cpu_s": round(proxy.cpu_seconds(), 2)}
    doc = await _status(session, proxy.url)
    if doc is not None:
        model = (doc.get("models") or {}).get(MODEL, {})
        sample.update(in_flight=model.get("in_flight"),
                      queue_depth=(doc.get("queue") or {}).get("depth"))
    return sample


def log_errors(log: str) -> dict[str, int]:
    """Tracebacks in a log, counted by the message logged with them and their last line."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        message = lines[i - 1].split(" ", 2)[-1] if i else ""
        end = next((row for row in lines[i + 1:] if row and not row[0].isspace()), "?")
        found[f"{message} -> {end}"[:200]] += 1
    return dict(found.most_common())


# -- the run -----------------------------------------------------------------------------------


def proxy_config(spec: SoakSpec, upstream: str, store: str) -> dict[str, Any]:
    return {
        "store": store,
        "max_body_bytes": 256 * 1024,
        "upstreams": {"mock": {"url": upstream,
                               "read_timeout_s": spec.upstream_read_timeout_s}},
        "models": {MODEL: {"upstreams": ["mock"], "max_in_flight": spec.max_in_flight}},
        "clients": {"interactive": {"key": KEYS["interactive"], "priority": "interactive"},
                    "batch": {"key": KEYS["batch"], "priority": "batch"}},
        "queue": {"max_depth": 100, "max_wait_s": 5},
        "shutdown_grace_s": 5,
    }


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=CODE_ROOT, capture_output=True,
                                  text=True, timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "proxy"))}


async def _drive(spec: SoakSpec, session: aiohttp.ClientSession, base: str,
                 result: SoakResult, done: Counter[str], by_kind: dict[str, Counter[str]]) -> None:
    """Open-loop arrivals for ``spec.minutes``, then wait for every client to finish."""
    rng = random.Random(spec.seed)
    names = [k.name for k in KINDS]
    weights = [k.weight for k in KINDS]
    open_tasks: set[asyncio.Task[None]] = set()

    async def run_one(kind: str, seed: int) -> None:
        cause = await _one(session, base, kind, random.Random(seed), spec.client_timeout_s)
        done[cause] += 1
        by_kind[kind][cause] += 1

    t0 = time.monotonic()
    deadline = t0 + spec.minutes * 60
    next_at = t0
    while True:
        next_at += rng.expovariate(spec.rate)
        if next_at >= deadline:
            break
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if len(open_tasks) >= spec.max_open:
            result.skipped_arrivals += 1
            continue
        task = asyncio.create_task(run_one(rng.choices(names, weights)[0], rng.getrandbits(32)))
        open_tasks.add(task)
        task.add_done_callback(open_tasks.discard)
        result.requests += 1
    if open_tasks:
        await asyncio.wait(open_tasks, timeout=spec.client_timeout_s + 5)


async def _drain(session: aiohttp.ClientSession, base: str,
                 timeout_s: float) -> dict[str, float]:
    """Wait until nothing is held; returns what still is when ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await _status(session, base)
        held = held_permits(doc) if doc is not None else {"status unreadable": 1.0}
        if not held or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.2)


async def run_soak(spec: SoakSpec) -> SoakResult:
    """Run the whole soak; the servers are stopped whatever happens."""
    # Absolute: the servers run with their own folder as working directory.
    out = Path(spec.out).resolve()
    result = SoakResult(spec={**asdict(spec), "out": str(out)}, machine=machine(),
                        started_at=time.time())
    done: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {k.name: Counter() for k in KINDS}
    async with ServiceGroup(out / "servers") as group:
        mock = await group.start_mock({"batch_size": spec.max_in_flight, "ttft_s": 0.05,
                                       "tpot_s": 0.01, "output_tokens": 16})
        store = spec.store
        if store == "redis":
            store = (await group.start_redis()).url
        proxy = await group.start_proxy("proxy", proxy_config(spec, mock.url, store), env={})
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            t0 = time.monotonic()
            stop = asyncio.Event()

            async def sampler() -> None:
                while not stop.is_set():
                    result.samples.append(await _sample(session, proxy, t0, done))
                    try:
                        await asyncio.wait_for(stop.wait(), spec.sample_interval_s)
                    except TimeoutError:
                        pass

            sampling = asyncio.create_task(sampler())
            try:
                await _drive(spec, session, proxy.url, result, done, by_kind)
                result.outstanding = await _drain(session, proxy.url, spec.drain_timeout_s)
            finally:
                stop.set()
                await sampling
            result.samples.append(await _sample(session, proxy, t0, done))
            result.elapsed_s = round(time.monotonic() - t0, 1)
            async with session.get(mock.url + "/mock/stats") as response:
                result.upstream_in_flight_after = (await response.json())["in_flight"]
        group.stop_all()
        result.proxy_exit_code = proxy.process.returncode
        result.proxy_log_errors = log_errors(proxy.log_path.read_text(errors="replace"))
    result.by_cause = dict(done.most_common())
    result.by_kind = {name: dict(c.most_common()) for name, c in by_kind.items()}
    expected = {k.name: k.expected for k in KINDS}
    unexpected: Counter[str] = Counter()
    for name, causes in by_kind.items():
        for cause, n in causes.items():
            if cause not in expected[name] or cause.startswith("500"):
                unexpected[f"{name}: {cause}"] += n
    result.unexpected = dict(unexpected.most_common())
    return result


# -- outputs -----------------------------------------------------------------------------------


def write_plot(result: SoakResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in result.samples if s.get("rss_kib")]
    minutes = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.plot(minutes, [s["rss_kib"] / 1024 for s in samples], color="tab:blue")
    top.set_ylabel("proxy RSS (MiB)")
    top.set_ylim(0, max((s["rss_kib"] / 1024 for s in samples), default=1) * 1.15)
    top.grid(alpha=0.3)
    top.set_title(f"llm-throttle soak: {result.spec['rate']:g} req/s for "
                  f"{result.spec['minutes']:g} min, store={result.spec['store']}")
    bottom.plot(minutes, [s.get("in_flight") or 0 for s in samples], label="in flight")
    bottom.plot(minutes, [s.get("queue_depth") or 0 for s in samples], label="queued")
    bottom.plot(minutes, [s.get("fds") or 0 for s in samples], label="open fds", alpha=0.6)
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right", fontsize="small")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fds_and_cpu(result: SoakResult) -> str:
    fds = [s["fds"] for s in result.samples if "fds" in s]
    cpu = result.samples[-1].get("cpu_s", 0.0) if result.samples else 0.0
    share = cpu / result.elapsed_s * 100 if result.elapsed_s else 0.0
    fd_text = f"start {fds[0]}, end {fds[-1]}, max {max(fds)}" if fds else "not sampled"
    return (f"- Proxy open file descriptors: {fd_text}; proxy CPU {cpu:.0f} s "
            f"({share:.1f}% of one core)")


def markdown_summary(result: SoakResult) -> str:
    rss = result.rss_mib()
    spec, m = result.spec, result.machine
    dirty = " (proxy/ modified)" if m["dirty"] else ""
    load = (f"- Load: {result.requests} requests in {result.elapsed_s / 60:.1f} min "
            f"({spec['rate']:g} req/s open loop, Poisson), store `{spec['store']}`, model cap "
            f"{spec['max_in_flight']}, upstream read timeout "
            f"{spec['upstream_read_timeout_s']:g} s; arrivals skipped (client side at "
            f"{spec['max_open']} open): {result.skipped_arrivals}")
    held = f" ({result.outstanding})" if result.outstanding else ""
    unexpected = "".join(f"\n  - {cause}: {n}" for cause, n in result.unexpected.items())
    tracebacks = "".join(f"\n  - `{what}`: {n}" for what, n in result.proxy_log_errors.items())
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        + f"commit {m['commit']}{dirty}.",
        "",
        load,
        f"- Proxy RSS: start {rss['start']} MiB, end {rss['end']} MiB, max {rss['max']} MiB",
        _fds_and_cpu(result),
        f"- Permits outstanding after drain: {result.permits_outstanding:g}{held}",
        f"- Upstream requests still active after drain: {result.upstream_in_flight_after}",
        f"- Unexpected outcomes: {sum(result.unexpected.values())}{unexpected}",
        f"- Tracebacks in the proxy log: {sum(result.proxy_log_errors.values())}{tracebacks}",
        f"- Proxy exit code after SIGTERM: {result.proxy_exit_code}",
        "",
        "| cause | requests |",
        "|---|---:|",
    ]
    lines += [f"| {cause} | {n} |" for cause, n in result.by_cause.items()]
    lines += ["", "| request kind | outcomes |", "|---|---|"]
    for kind, causes in result.by_kind.items():
        lines.append(f"| {kind} | " + ", ".join(f"{c}: {n}" for c, n in causes.items()) + " |")
    return "\n".join(lines) + "\n"


def command_line(spec: dict[str, Any]) -> str:
    """The command that runs ``spec`` (its output folder relative to here when inside)."""
    out = Path(spec["out"])
    try:
        out = out.relative_to(Path.cwd())
    except ValueError:
        pass
    store = "" if spec["store"] == "memory" else f" --store {spec['store']}"
    return (f"python -m loadtest soak --minutes {spec['minutes']:g} --rate {spec['rate']:g}"
            f"{store} --out {out}")


def report_section(result: SoakResult, image: str) -> str:
    """The page section: what runs, the exact command, the figures, the RSS plot."""
    spec = result.spec
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.started_at))
    return "\n".join([
        "## Soak",
        "",
        (f"{spec['minutes']:g} minutes of mixed open-loop load through `llm-throttle serve` in "
         f"front of the mock LLM (both subprocesses): plain and streamed chat calls, clients "
         f"that leave while queued or mid-stream, upstream faults (die mid-stream, hang past a "
         f"{spec['upstream_read_timeout_s']:g} s upstream read timeout, 429, 503) and a share "
         f"of bad input (invalid JSON, wrong types, unknown model, bad key, a body over the "
         f"limit). The proxy's RSS, open descriptors and `/throttle/status` are sampled every "
         f"{spec['sample_interval_s']:g} s; after the load the proxy drains and every permit "
         f"must be back. An outcome outside what its request kind allows is *unexpected*."),
        "",
        f"Command (run {started}; not part of CI):",
        "",
        "```",
        command_line(spec),
        "```",
        "",
        markdown_summary(result).rstrip(),
        "",
        f"![proxy RSS, in flight, queue and open descriptors over the soak]({image})",
    ]) + "\n"


def write_report(result: SoakResult, page: Path, png: Path) -> Path:
    """Copy the plot to ``img/`` beside ``page`` and splice the soak section into it."""
    from loadtest.analysis import splice  # the page's section markers, shared with scenarios

    img = page.parent / "img" / "soak-rss.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(png.read_bytes())
    section = report_section(result, str(img.relative_to(page.parent)))
    page_text = page.read_text() if page.exists() else "# Benchmarks\n"  # read just before
    page.write_text(splice(page_text, "soak", section))
    return page


def write_outputs(result: SoakResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "soak.json"
    json_path.write_text(json.dumps(result.to_json(), indent=1))
    md_path = out / "soak.md"
    md_path.write_text(markdown_summary(result))
    return [json_path, md_path, write_plot(result, out / "soak-rss.png")]


# -- command line ------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SoakSpec()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests per second")
    parser.add_argument("--store", default=defaults.store,
                        help="memory, redis (starts a redis-server) or a redis:// URL")
    parser.add_argument("--sample-interval", type=float, default=defaults.sample_interval_s,
                        help="seconds between RSS and status samples")
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--report", type=Path, metavar="PAGE",
                        help="splice a Soak section into this Markdown page (plot to img/)")
    parser.add_argument("--from-json", type=Path, metavar="SOAK_JSON",
                        help="do not run: re-render the outputs of an earlier soak.json")


def spec_from_args(args: argparse.Namespace) -> SoakSpec:
    return SoakSpec(minutes=args.minutes, out=args.out, rate=args.rate, store=args.store,
                    sample_interval_s=args.sample_interval, max_in_flight=args.max_in_flight,
                    seed=args.seed)


def passed(result: SoakResult) -> bool:
    """Nothing held after the drain, nothing unexpected, no traceback in the proxy log."""
    return (result.permits_outstanding == 0 and not result.unexpected
            and not result.proxy_log_errors and result.upstream_in_flight_after == 0)


def cli_main(args: argparse.Namespace) -> int:
    """Exit 0 when :func:`passed`, 1 otherwise (the summary says why)."""
    spec = spec_from_args(args)
    if args.from_json:
        result = SoakResult.from_json(json.loads(args.from_json.read_text()))
        out = args.from_json.parent
    else:
        result = asyncio.run(run_soak(spec))
        out = Path(spec.out)
    paths = write_outputs(result, out)
    if args.report:
        paths.append(write_report(result, args.report, out / "soak-rss.png"))
    print(markdown_summary(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if passed(result) else 1
