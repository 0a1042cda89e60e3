"""Benchmark scenarios as files (``python -m loadtest scenario FILE [--smoke] [--report PAGE]``).

A scenario YAML names the servers to start and the load phases to run against each target::

    name: overload                # also the results folder and the report section
    title: Overload               # heading of the report section
    analysis: overload            # which key numbers to compute (see loadtest.analysis)
    repeat: 3                     # every phase x target, interleaved; key numbers are medians
    mock: {batch_size: 4, ttft_s: 0.02}      # MockLLMConfig fields
    smoke_mock: {tpot_s: 0.001}   # mock overrides under --smoke
    nginx: false                  # start nginx (plain reverse proxy) as the 'nginx' target
    passthrough: false            # start a minimal aiohttp proxy as the 'passthrough' target
    redis: false                  # start redis-server; proxies see its URL as ${REDIS_URL}
    proxies:                      # each key is a target name
      proxy:
        replicas: 1               # >1: the load is spread round-robin over the replicas
        config: {...}             # an llm-throttle config; ${MOCK_URL} is the mock's origin
    targets: {cpu_ms_per_request: 0.3}       # thresholds the analysis checks
    phases:
      - name: overload
        targets: [direct, proxy]  # direct = the mock itself
        mock: {thrash: 0.5}       # mock overrides for this phase (POST /mock/config)
        load: {clients: 40, duration: 20}    # LoadSpec fields; or several concurrent loads:
        # loads: {batch: {...}, interactive: {...}}
        smoke: {duration: 1.5}    # load overrides under --smoke

Every server is a subprocess on a free loopback port (CPU time read per process from /proc);
all of them are stopped when the scenario ends, fails or is interrupted. Each run writes its
full result JSON (``loadtest report`` reads them), ``runs.json`` indexes them, and the report
section (Markdown + PNGs) can be spliced into a page such as ``docs/benchmarks.md``.

This module runs scenarios and is the command line; the file is read by
``loadtest/scenario_file.py`` into the types of ``loadtest/scenario_model.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.generator import parse_proxy_status, run_load
from loadtest.processes import (
    Service,
    ServiceError,
    ServiceGroup,
    find_nginx,
    find_redis_server,
    machine_busy_seconds,
    redis_store_available,
    wait_for_quiet,
)
from loadtest.provenance import code_version
from loadtest.report_section import write_section
from loadtest.runtime import loop_factory
from loadtest.scenario_file import ScenarioError, build_load_spec, load_scenario, scenario_path
from loadtest.scenario_model import (
    DIRECT,
    NGINX,
    PASSTHROUGH,
    Phase,
    RunRecord,
    Scenario,
    ScenarioResult,
)
from loadtest.scenario_runner import (
    RunnerFileError,
    read_runner_file,
    run_runner_file,
    runner_args,
)

DEFAULT_OUT = Path("loadtest/results")


# -- running ----------------------------------------------------------------------------------


def skip_reason(scenario: Scenario) -> str | None:
    """Why this scenario cannot run here at all (None: it can)."""
    uses_redis = scenario.redis or any(
        str(p.config.get("store", "memory")).startswith(("redis", "${REDIS")) for p in
        scenario.proxies.values())
    if uses_redis and not redis_store_available():
        return ("the Redis store (proxy/limits/redis.py) is not in this checkout yet; "
                "this scenario needs it")
    if scenario.redis and find_redis_server() is None:
        return "redis-server is not installed (apt-get install redis-server)"
    return None


async def _mock_call(session: aiohttp.ClientSession, mock: Service, path: str,
                     body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    method = session.post if body is not None or path != "/mock/stats" else session.get
    kwargs = {"json": dict(body)} if body is not None else {}
    async with method(mock.url + path, **kwargs) as response:
        if response.status != 200:
            raise ServiceError(f"mock {path}: HTTP {response.status}: {await response.text()}")
        data: dict[str, Any] = await response.json()
        return data


async def _proxy_settled(session: aiohttp.ClientSession, proxies: list[Service],
                         timeout: float = 10.0) -> dict[str, float]:
    """Wait until every proxy reports an empty queue and nothing in flight; return the last."""
    deadline = time.monotonic() + timeout
    while True:
        depth = in_flight = 0.0
        for proxy in proxies:
            async with session.get(proxy.url + "/throttle/status") as response:
                parsed = parse_proxy_status(await response.json())
            depth += parsed["queue_depth"] or 0.0
            in_flight += parsed["proxy_in_flight"] or 0.0
        if (depth == 0 and in_flight == 0) or time.monotonic() > deadline:
            return {"queue_depth": depth, "in_flight": in_flight}
        await asyncio.sleep(0.05)


async def run_scenario(scenario: Scenario, out_dir: Path, *, smoke: bool = False,
                       log: Callable[[str], None] = print, quiet: float = 0.0,
                       command: str = "") -> ScenarioResult:
    """Start the servers, run every phase against every target, stop everything.

    ``quiet``: before each run, wait up to that many seconds for other work on the machine to
    calm down; either way the CPU others used during each run is recorded (``foreign_cpu_s``).
    """
    if smoke:
        scenario = scenario.smoked()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    result = ScenarioResult(scenario, [], out_dir, smoke, code=code_version(), command=command,
                            when=when)
    if (reason := skip_reason(scenario)) is not None:
        result.skipped = reason
        return result
    with_nginx = scenario.nginx and find_nginx() is not None
    if scenario.nginx and not with_nginx:
        result.notes.append("nginx is not installed here: its runs were skipped "
                            "(apt-get install nginx to compare against it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"llm-throttle-{scenario.name}-"))
    async with ServiceGroup(workdir) as group, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30)) as session:
        mock = await group.start_mock(scenario.mock)
        servers: dict[str, list[Service]] = {DIRECT: []}
        urls: dict[str, list[str]] = {DIRECT: [mock.url + "/v1"]}
        if with_nginx:
            nginx = await group.start_nginx(mock.url)
            servers[NGINX], urls[NGINX] = [nginx], [nginx.url + "/v1"]
        if scenario.passthrough:
            floor = await group.start_passthrough(mock.url)
            servers[PASSTHROUGH], urls[PASSTHROUGH] = [floor], [floor.url + "/v1"]
        env = {"MOCK_URL": mock.url}
        if scenario.redis:
            env["REDIS_URL"] = (await group.start_redis()).url
        for spec in scenario.proxies.values():
            replicas = [await group.start_proxy(
                spec.name if spec.replicas == 1 else f"{spec.name}-{i + 1}", spec.config, env)
                for i in range(spec.replicas)]
            servers[spec.name] = replicas
            urls[spec.name] = [r.url + "/v1" for r in replicas]
        log(f"{scenario.name}: servers up ({', '.join(s.name for s in group.services)}); "
            f"logs in {workdir}")
        every = [mock, *[s for group_ in servers.values() for s in group_]]
        for rep in range(scenario.repeat):
            for phase in scenario.phases:
                for target in phase.targets:
                    if target not in urls:
                        continue
                    record = await _run_once(scenario, phase, target, rep, mock, servers[target],
                                             urls[target], every, session, out_dir, quiet)
                    result.runs.append(record)
                    log(_run_line(record))
    (out_dir / "runs.json").write_text(json.dumps(
        {"scenario": scenario.name, "smoke": smoke, "notes": result.notes, "code": result.code,
         "command": command, "when": when, "runs": [r.to_json() for r in result.runs]},
        indent=1))
    return result


async def _run_once(scenario: Scenario, phase: Phase, target: str, rep: int, mock: Service,
                    target_servers: list[Service], target_urls: list[str],
                    every: list[Service], session: aiohttp.ClientSession,
                    out_dir: Path, quiet: float) -> RunRecord:
    await _mock_call(session, mock, "/mock/config", {**scenario.mock, **phase.mock})
    await _mock_call(session, mock, "/mock/reset", {})
    is_proxy = target in scenario.proxies
    specs = {}
    for lname, load in phase.loads.items():
        label = f"{target}" if len(phase.loads) == 1 else f"{target}/{lname}"
        specs[lname] = build_load_spec(
            load, target_urls, label=label, upstream_metrics=[mock.url + "/metrics"],
            proxy_status=target_servers[0].url + "/throttle/status" if is_proxy else None,
            seed=load.get("seed", rep))
    if quiet > 0:
        await wait_for_quiet(max_wait_s=quiet)
    cpu_before = {s.name: s.cpu_seconds() for s in every}
    gen_before = time.process_time()
    busy_before = machine_busy_seconds()
    started = time.perf_counter()
    results = await asyncio.gather(*(run_load(spec) for spec in specs.values()))
    wall = time.perf_counter() - started
    busy = machine_busy_seconds() - busy_before
    cpu = {s.name: round(s.cpu_seconds() - cpu_before[s.name], 4) for s in every}
    cpu["generator"] = round(time.process_time() - gen_before, 4)
    foreign = round(max(0.0, busy - sum(cpu.values())), 3)
    stats = await _mock_call(session, mock, "/mock/stats")
    stats.pop("recent_requests", None)
    proxy_end = await _proxy_settled(session, target_servers) if is_proxy else None
    files = {}
    for lname, load_result in zip(specs, results, strict=True):
        path = out_dir / f"{phase.name}-{target}-r{rep + 1}-{lname}.json"
        doc = load_result.to_json()
        doc["scenario"] = {"name": scenario.name, "phase": phase.name, "target": target,
                           "repeat": rep + 1, "load": lname}
        path.write_text(json.dumps(doc, indent=None))
        files[lname] = str(path)
    return RunRecord(phase.name, target, rep + 1, [s.name for s in target_servers],
                     {n: r.summary for n, r in zip(specs, results, strict=True)}, files, cpu,
                     round(wall, 3), stats, proxy_end, foreign)


def _run_line(record: RunRecord) -> str:
    parts = []
    for lname, s in record.loads.items():
        p99 = s["latency"]["p99"]
        parts.append(
            f"{lname}: {s['ok']}/{s['count']} ok {s['goodput_rps']:.1f} req/s "
            f"p99 {'-' if p99 is None else f'{p99 * 1000:.0f}ms'}")
    server_cpu = sum(record.cpu_s.get(n, 0.0) for n in record.servers)
    others = record.foreign_cpu_s or 0.0
    cpu = f" | server CPU {server_cpu / max(1, record.requests) * 1000:.3f} ms/req" \
        if record.servers else ""
    return (f"  {record.phase:<10} {record.target:<8} r{record.repeat} | " + "; ".join(parts)
            + f" | mock peak {record.mock.get('peak')}{cpu}"
            + f" | other load {others / record.wall_s:.2f} cores")


def load_result(scenario: Scenario, out_dir: Path) -> ScenarioResult:
    """Read back ``runs.json`` written by a previous run (for ``--from``)."""
    data = json.loads((out_dir / "runs.json").read_text())
    return ScenarioResult(scenario, [RunRecord.from_json(r) for r in data["runs"]], out_dir,
                          smoke=bool(data.get("smoke")), notes=list(data.get("notes", [])),
                          code=data.get("code"), command=data.get("command", ""),
                          when=data.get("when", ""))


# -- command line -----------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="+",
                        help="scenario file(s), or names under loadtest/scenarios (e.g. overhead)")
    parser.add_argument("--smoke", action="store_true",
                        help="shrink every phase to a couple of seconds (tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results folder; each scenario writes into OUT/<name>/")
    parser.add_argument("--report", type=Path, metavar="PAGE",
                        help="splice the report section into this Markdown page "
                             "(e.g. docs/benchmarks.md); its PNGs go to PAGE's img/ folder")
    parser.add_argument("--img-dir", type=Path,
                        help="where PNGs go (default: PAGE's img/, else OUT/<name>/)")
    parser.add_argument("--from", dest="from_results", action="store_true",
                        help="do not run: rebuild the report from OUT/<name>/runs.json")
    parser.add_argument("--check", action="store_true",
                        help="only validate the scenario files")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                        help="before each run, wait up to S seconds for other work on the "
                             "machine to calm down (default: %(default)s)")
    parser.add_argument("--no-wait-quiet", dest="wait_quiet", action="store_const", const=0.0,
                        help="do not wait (same as --wait-quiet 0)")


def cli_main(args: argparse.Namespace) -> int:
    """``python -m loadtest scenario``; exit 1 when a run failed or a hard check did not hold."""
    runners = {}
    for name in args.scenario:
        data = read_runner_file(scenario_path(name))
        if data is not None:
            runners[name] = data
    try:
        for name, data in runners.items():
            runner_args(data, scenario_path(name), args.out, args.smoke)  # validate first
        scenarios = [load_scenario(s) for s in args.scenario if s not in runners]
    except (ScenarioError, RunnerFileError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        for name in runners:
            print(f"{scenario_path(name)}: OK  runs loadtest {runners[name]['runner']}")
    elif runners:
        for name, data in runners.items():
            if run_runner_file(data, scenario_path(name), args.out, args.smoke):
                return 1
    if args.check:
        for s in scenarios:
            print(f"{s.path}: OK  {len(s.phases)} phases, targets "
                  f"{', '.join(sorted({t for p in s.phases for t in p.targets}))}")
        return 0
    command = "python -m loadtest scenario " + " ".join(
        shlex.quote(a) for a in sys.argv[sys.argv.index("scenario") + 1:]) \
        if "scenario" in sys.argv else "python -m loadtest scenario " + " ".join(
            str(s) for s in args.scenario)
    code = 0
    for scenario in scenarios:
        out_dir = args.out / scenario.name
        if args.from_results:
            result = load_result(scenario, out_dir)
        else:
            result = _run_with_uvloop(scenario, out_dir, args.smoke,
                                      0.0 if args.smoke else args.wait_quiet, command)
        if result.skipped:
            print(f"scenario {scenario.name} SKIPPED: {result.skipped}", file=sys.stderr)
            continue
        img_dir = args.img_dir or (args.report.parent / "img" if args.report else out_dir)
        section, failed = write_section(result, command, img_dir, args.report)
        print(section)
        if failed:
            print(f"scenario {scenario.name}: hard check failed: {'; '.join(failed)}",
                  file=sys.stderr)
            code = 1
    return code


async def _stoppable(scenario: Scenario, out_dir: Path, smoke: bool,
                     quiet: float, command: str) -> ScenarioResult:
    """The run, cancelled (so every server is stopped) on SIGTERM as on Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_scenario(scenario, out_dir, smoke=smoke, quiet=quiet, command=command,
                              log=lambda line: print(line, file=sys.stderr, flush=True))


def _run_with_uvloop(scenario: Scenario, out_dir: Path, smoke: bool,
                     quiet: float, command: str) -> ScenarioResult:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            return runner.run(_stoppable(scenario, out_dir, smoke, quiet, command))
        except ServiceError as exc:
            raise SystemExit(f"scenario {scenario.name}: {exc}") from None
