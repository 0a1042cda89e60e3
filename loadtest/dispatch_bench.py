"""``python -m loadtest dispatch-bench``: ``llm-throttle dispatch`` against a cron wrapper, with
the real ``hermes`` CLI and real workers.

The workload (issue 14): ``--boards`` boards of ``--tasks`` tasks; each task's worker makes two
LLM calls of ``--short`` or ``--long`` seconds of "GPU time" (every ``--long-every``-th task is
long); the proxy caps the model at ``--cap`` requests in flight, standing for the GPU, attributes
requests by task and orders its queue by ``--fairness`` (default ``attained``, as docs/hermes.md
recommends; ``tokens`` is the proxy's default order); at
``--burst-at`` seconds an outside client sends ``--burst`` requests of ``--burst-seconds`` each.
Each mode gets a fresh ``HOME`` with its own Hermes boards, the same upstream and proxy config:

* ``cron``: the usual wrapper -- every ``--cron-every`` seconds count the running tasks with
  ``hermes kanban list --status running`` and ``dispatch --max`` up to ``--cron-parallel`` in
  total;
* ``dispatch``: ``python -m proxy.dispatcher`` given only the watermarks (and
  ``--dispatch-args``).

Measured per mode, independently of what the dispatchers say: the makespan (start to every task
``done``); GPU idle while tasks were ready (the integral of idle slots / cap while a task was
ready, from the upstream's own record of what it was working on); spawns while the proxy queue
was at or above the high watermark (a run that appeared between two samples of the queue that
were both there; a run that appeared while the queue crossed the mark between the two samples,
0.25 s apart, is counted apart as ``spawns_crossing_high``: which came first is not known
at that resolution, and a dispatcher that reacts within milliseconds to the queue's drop
spawns right there); the most tasks running at once. Run it offline: ``unshare -rn`` with ``lo`` up
(``--netns`` re-executes itself that way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .agent_gpu import GPU_SECONDS_HEADER, AgentGPU, idle_slot_seconds
from .dispatch_timeline import idle_spans, task_lives
from .processes import CODE_ROOT, ServiceGroup, free_port

MODEL = "qwen"

WORKER_PROFILE = """\
model:
  provider: throttle
  default: {model}
providers:
  throttle:
    name: llm-throttle
    base_url: {proxy}/v1
    api_key: sk-bench
    default_model: {model}
    extra_headers:
      x-hermes-profile: ${{HERMES_PROFILE}}
      x-hermes-task: ${{HERMES_KANBAN_TASK}}
      x-hermes-board: ${{HERMES_KANBAN_BOARD}}
agent:
  api_max_retries: 10
kanban:
  dispatch_in_gateway: false
"""


@dataclass(frozen=True, slots=True)
class Workload:
    boards: int = 3
    tasks: int = 8
    short_s: float = 3.0
    long_s: float = 15.0
    long_every: int = 3
    cap: int = 3
    burst: int = 8
    burst_at_s: float = 40.0
    burst_s: float = 5.0
    high: int = 4
    low: int = 1
    #: the proxy's queue order (``queue.fairness``): what docs/hermes.md recommends for Kanban
    #: workers attributed by task
    fairness: str = "attained"


@dataclass(slots=True)
class ModeResult:
    mode: str
    makespan_s: float | None = None
    idle_while_ready_s: float = 0.0
    #: the same from the first request the GPU got (a worker's start-up before it left out)
    idle_after_first_request_s: float = 0.0
    first_request_s: float | None = None
    spawns_at_high: int = 0
    #: runs that appeared while the queue crossed the high mark between two samples
    spawns_crossing_high: int = 0
    max_running: int = 0
    runs: int = 0
    done: int = 0
    tasks: int = 0
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)
    #: one row per sample: [seconds since start, GPU working, ready, running, proxy queue]
    timeline: list[list[float]] = field(default_factory=list)
    #: [start, end, idle] where the GPU had free slots while tasks were ready (see
    #: :func:`.dispatch_timeline.idle_spans`)
    idle_spans: list[list[float]] = field(default_factory=list)
    #: task -> [spawned, first request, done], seconds since start
    tasks_life: dict[str, list[float | None]] = field(default_factory=dict)
    #: every request the GPU worked on: [began, ended, task or "-", kind], seconds since start
    requests: list[list[Any]] = field(default_factory=list)

    @property
    def idle_fraction(self) -> float | None:
        return None if not self.makespan_s else self.idle_while_ready_s / self.makespan_s


def _clean_env(home: Path, hermes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HERMES_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_"))}
    env.update(HOME=str(home), HERMES_BIN=hermes)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CODE_ROOT), env.get("PYTHONPATH")]))
    return env


class Hermes:
    """The real CLI in one throwaway ``HOME``."""

    def __init__(self, exe: str, home: Path) -> None:
        self.exe, self.home = exe, home
        self.env = _clean_env(home, exe)

    @property
    def root(self) -> Path:
        return self.home / ".hermes"

    async def run(self, *args: str, timeout: float = 120) -> str:
        proc = await asyncio.create_subprocess_exec(
            self.exe, *args, env=self.env, cwd=self.home, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        return out.decode(errors="replace")

    def db(self, board: str) -> Path:
        return self.root / "kanban" / "boards" / board / "kanban.db"


def _read_board(db: Path) -> tuple[dict[str, str], set[int], list[int]]:
    """(task -> status, run ids, worker pids), read-only."""
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM tasks").fetchall())
        runs = conn.execute("SELECT id, worker_pid FROM task_runs").fetchall()
    return statuses, {int(r[0]) for r in runs}, [int(r[1]) for r in runs if r[1]]


async def _setup_hermes(h: Hermes, proxy: str, w: Workload) -> dict[str, float]:
    """Profile, boards and tasks; returns task id -> GPU seconds per call."""
    await h.run("profile", "create", "worker", "--no-alias", "--no-skills")
    (h.root / "config.yaml").write_text("kanban:\n  dispatch_in_gateway: false\n")
    (h.root / "profiles" / "worker" / "config.yaml").write_text(
        WORKER_PROFILE.format(proxy=proxy, model=MODEL))
    durations: dict[str, float] = {}
    for b in range(w.boards):
        board = f"b{b + 1}"
        await h.run("kanban", "boards", "create", board)
        for k in range(w.tasks):
            out = await h.run("kanban", "--board", board, "create", f"task {board}-{k}",
                              "--assignee", "worker", "--json")
            task = json.loads(out)["id"]
            durations[task] = w.long_s if k % w.long_every == 0 else w.short_s
    return durations


async def _cron_wrapper(h: Hermes, boards: list[str], every_s: float, parallel: int,
                        stop: asyncio.Event) -> None:
    """What operators run from cron: count running, top up to MAX_PARALLEL, sleep."""
    while not stop.is_set():
        started = time.monotonic()
        with contextlib.suppress(Exception):
            running = {}
            for board in boards:
                out = await h.run("kanban", "--board", board, "list", "--status", "running",
                                  "--json")
                running[board] = len(json.loads(out or "[]"))
            total = sum(running.values())
            for board in boards:
                if total >= parallel:
                    break
                out = await h.run("kanban", "--board", board, "dispatch", "--max",
                                  str(running[board] + parallel - total), "--json")
                total += len(json.loads(out or "{}").get("spawned") or [])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(every_s - (time.monotonic() - started), 0))


async def _burst(proxy: str, w: Workload, at: float) -> None:
    await asyncio.sleep(max(at - time.monotonic(), 0))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "outside"}]}

    async def one(session: aiohttp.ClientSession) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(proxy + "/v1/chat/completions", json=body,
                                    headers={GPU_SECONDS_HEADER: str(w.burst_s)}) as resp:
                await resp.read()

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(w.burst)))


async def run_mode(mode: str, w: Workload, hermes: str, workdir: Path, *, timeout_s: float,
                   cron_every_s: float, cron_parallel: int,
                   dispatch_args: list[str]) -> ModeResult:
    result = ModeResult(mode=mode, tasks=w.boards * w.tasks)
    home = workdir / mode / "home"
    home.mkdir(parents=True)
    h = Hermes(hermes, home)
    gpu = AgentGPU()
    runner = web.AppRunner(gpu.app(), access_log=None)
    await runner.setup()
    gpu_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", gpu_port).start()
    boards = [f"b{b + 1}" for b in range(w.boards)]
    pids: set[int] = set()
    stop = asyncio.Event()
    background: list[asyncio.Task[Any]] = []
    stack = contextlib.ExitStack()
    try:
        async with ServiceGroup(workdir / mode) as group:
            proxy = await group.start_proxy("proxy", {
                "upstreams": {"gpu": {"url": f"http://127.0.0.1:{gpu_port}"}},
                "models": {MODEL: {"upstreams": ["gpu"], "max_in_flight": w.cap}},
                "queue": {"max_depth": 500, "max_wait_s": 170, "fairness": w.fairness},
                "attribution": {"header": "x-hermes-task", "max_in_flight": 4},
            }, env={})
            gpu.durations = await _setup_hermes(h, proxy.url, w)
            started = time.monotonic()
            if mode == "cron":
                background.append(asyncio.create_task(
                    _cron_wrapper(h, boards, cron_every_s, cron_parallel, stop)))
            else:
                log = (workdir / mode / "dispatch.log").open("wb")
                stack.callback(log.close)
                companion = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    [sys.executable, "-m", "proxy.dispatcher",
                     "--status-url", proxy.url + "/throttle/status", "--models", MODEL,
                     "--high-watermark", str(w.high), "--low-watermark", str(w.low),
                     "--hermes", hermes, "--listen", "off", *dispatch_args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=h.env, cwd=home, start_new_session=True)
                stack.callback(_stop, companion)
            background.append(asyncio.create_task(_burst(proxy.url, w, started + w.burst_at_s)))
            await _sample(h, proxy.url, boards, w, started, timeout_s, result, pids, gpu)
            stop.set()
            stack.close()  # the dispatcher first, then its workers, then the proxy
            _kill_workers(pids)
    finally:
        stop.set()
        stack.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        _kill_workers(pids)
        await runner.cleanup()
    return result


def _kill_workers(pids: set[int]) -> None:
    for pid in pids:  # workers run in sessions of their own: pid == pgid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def count_spawns(result: ModeResult, n: int, queue_before: int, queue_at: int,
                 high: int) -> None:
    """Count ``n`` runs that appeared between two queue samples against the high mark.

    At the mark in both samples: spawned while the queue was there. At the mark in one: the
    queue crossed it in between, and which came first is not known at this resolution (a
    dispatcher that reacts to the queue's drop within milliseconds spawns right after it)."""
    if min(queue_before, queue_at) >= high:
        result.spawns_at_high += n
    elif max(queue_before, queue_at) >= high:
        result.spawns_crossing_high += n


async def _sample(h: Hermes, proxy: str, boards: list[str], w: Workload, started: float,
                  timeout_s: float, result: ModeResult, pids: set[int], gpu: AgentGPU) -> None:
    """Every quarter second: the proxy's queue, every board's statuses and runs."""
    seen_runs: set[tuple[str, int]] = set()
    samples: list[tuple[float, dict[str, str]]] = []
    ready_timeline: list[tuple[float, bool]] = []
    last_queue = 0
    deadline = started + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            now = time.monotonic()
            queue = last_queue
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                async with session.get(proxy + "/throttle/status") as resp:
                    queue = int((await resp.json())["models"][MODEL]["queued"])
            statuses: dict[str, str] = {}
            for board in boards:
                s, runs, worker_pids = await asyncio.to_thread(_read_board, h.db(board))
                statuses.update(s)
                pids.update(worker_pids)
                new = {(board, r) for r in runs} - seen_runs
                if new:
                    count_spawns(result, len(new), last_queue, queue, w.high)
                seen_runs |= new
            values = list(statuses.values())
            samples.append((round(now - started, 2), statuses))
            result.max_running = max(result.max_running, values.count("running"))
            result.timeline.append([round(now - started, 2), gpu.in_flight, values.count("ready"),
                                    values.count("running"), queue])
            ready_timeline.append((now, values.count("ready") > 0))
            last_queue = queue
            result.done = values.count("done")
            if values and all(v == "done" for v in values):
                result.makespan_s = now - started
                break
            if now > deadline:
                result.timed_out = True
                result.notes.append(f"not done after {timeout_s:.0f}s: {values}")
                break
            await asyncio.sleep(0.25)
    end = started + (result.makespan_s or timeout_s)
    result.idle_while_ready_s = idle_slot_seconds(gpu.timeline, ready_timeline, w.cap,
                                                  started, end)
    first = next((t for t, n in gpu.timeline if n > 0 and t >= started), None)
    if first is not None:
        result.first_request_s = first - started
        result.idle_after_first_request_s = idle_slot_seconds(
            gpu.timeline, ready_timeline, w.cap, first, end)
    result.runs = len(seen_runs)
    result.idle_spans = idle_spans(result.timeline, w.cap)
    result.tasks_life = {task: [life.spawned_s, life.first_request_s, life.done_s]
                         for task, life in task_lives(samples, gpu.requests, started).items()}
    result.requests = [[round(a - started, 2), round(b - started, 2), task, kind]
                       for a, b, task, kind in gpu.requests]


def _pct(part: float, whole: float | None) -> str:
    return "" if not whole else f" ({100 * part / whole:.0f}%)"


def table(results: list[ModeResult]) -> str:
    rows = [("| mode | makespan | GPU idle while tasks ready | the same after the first request "
             "| spawns at queue >= high | max running | runs | done |"),
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        span = "-" if r.makespan_s is None else f"{r.makespan_s:.0f} s"

        first = "" if r.first_request_s is None else f", first at {r.first_request_s:.0f} s"
        rows.append(f"| {r.mode} | {span} | {r.idle_while_ready_s:.0f} s"
                    f"{_pct(r.idle_while_ready_s, r.makespan_s)} | {r.idle_after_first_request_s:.0f} s"
                    f"{_pct(r.idle_after_first_request_s, r.makespan_s)}{first} | {r.spawns_at_high} | "
                    f"{r.max_running} | {r.runs} | {r.done}/{r.tasks} |")
    return "\n".join(rows)


def breakdown(r: ModeResult) -> str:
    """Where the idle time went and how long workers took to start, in a few lines."""
    lat = sorted(first - spawned for spawned, first, _ in r.tasks_life.values()
                 if spawned is not None and first is not None)
    spans = ", ".join(f"{a:.0f}-{b:.0f} s: {idle:.1f}" for a, b, idle in r.idle_spans)
    med = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
    rng = f"{lat[0]:.1f}-{lat[-1]:.1f}" if lat else "-"
    return (f"{r.mode}: idle spans (GPU-seconds) {spans or 'none'}\n"
            f"{r.mode}: worker spawn to first request median {med} s (range {rng} s)\n"
            f"{r.mode}: spawns while the queue crossed the high mark between two samples "
            f"{r.spawns_crossing_high}")


def configure_parser(p: argparse.ArgumentParser) -> None:
    d = Workload()
    p.add_argument("--modes", default="cron,dispatch", help="cron, dispatch, or both")
    p.add_argument("--boards", type=int, default=d.boards)
    p.add_argument("--tasks", type=int, default=d.tasks, help="tasks per board")
    p.add_argument("--short", type=float, default=d.short_s, help="GPU seconds per call")
    p.add_argument("--long", type=float, default=d.long_s, help="GPU seconds per long call")
    p.add_argument("--long-every", type=int, default=d.long_every)
    p.add_argument("--cap", type=int, default=d.cap, help="the model's max_in_flight")
    p.add_argument("--burst", type=int, default=d.burst)
    p.add_argument("--burst-at", type=float, default=d.burst_at_s)
    p.add_argument("--burst-seconds", type=float, default=d.burst_s)
    p.add_argument("--high-watermark", type=int, default=d.high)
    p.add_argument("--low-watermark", type=int, default=d.low)
    p.add_argument("--fairness", default=d.fairness,
                   help="the proxy's queue.fairness (both modes)")
    p.add_argument("--cron-every", type=float, default=15.0)
    p.add_argument("--cron-parallel", type=int, default=3)
    p.add_argument("--dispatch-args", default="", help="more flags for the dispatcher")
    p.add_argument("--hermes", default=os.environ.get("LLM_THROTTLE_HERMES") or "hermes")
    p.add_argument("--timeout", type=float, default=600.0, help="per mode, seconds")
    p.add_argument("--workdir", type=Path, help="default: a temporary directory")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--netns", action="store_true",
                   help="re-run inside `unshare -rn` with loopback up: nothing leaves it")


def _in_netns(argv: list[str]) -> int:
    inner = " ".join(shlex.quote(a) for a in argv if a != "--netns")
    return subprocess.call(["unshare", "-rn", "sh", "-c", f"ip link set lo up && {inner}"])


def cli_main(args: argparse.Namespace) -> int:
    if args.netns:
        return _in_netns([sys.executable, "-m", "loadtest", *sys.argv[1:]])
    exe = shutil.which(args.hermes)
    if exe is None:
        print(f"hermes not found: {args.hermes}", file=sys.stderr)
        return 2
    w = Workload(boards=args.boards, tasks=args.tasks, short_s=args.short, long_s=args.long,
                 long_every=args.long_every, cap=args.cap, burst=args.burst,
                 burst_at_s=args.burst_at, burst_s=args.burst_seconds,
                 high=args.high_watermark, low=args.low_watermark, fairness=args.fairness)
    return asyncio.run(_main(args, w, os.path.abspath(exe)))


async def _main(args: argparse.Namespace, w: Workload, exe: str) -> int:
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            print(f"== {mode}", flush=True)
            r = await run_mode(mode, w, exe, workdir, timeout_s=args.timeout,
                               cron_every_s=args.cron_every, cron_parallel=args.cron_parallel,
                               dispatch_args=shlex.split(args.dispatch_args))
            print(table([r]), flush=True)
            print(breakdown(r), flush=True)
            results.append(r)
    print(table(results))
    if args.out:
        doc = {"workload": asdict(w), "results": [
            {**asdict(r), "idle_fraction": r.idle_fraction} for r in results]}
        args.out.write_text(json.dumps(doc, indent=2))
    return 0 if all(r.makespan_s is not None for r in results) else 1
