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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.generator import ClientClass, LoadSpec, run_load
from loadtest.mock_state import MockLLMConfig
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
from loadtest.runtime import loop_factory
from proxy.yamlfile import YamlProblems, load_yaml

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_OUT = Path("loadtest/results")
DIRECT, NGINX, PASSTHROUGH = "direct", "nginx", "passthrough"
ANALYSES = ("overhead", "streaming", "overload", "priority", "multihost", "fairness")

#: LoadSpec fields a scenario may set (the runner fills in URLs, sampling and labels)
LOAD_KEYS = frozenset({"clients", "rate", "requests", "duration", "stream", "max_tokens",
                       "prompt_chars", "mix", "timeout", "headers", "seed", "sample_interval",
                       "model"})
#: what --smoke does to every load before the phase's own ``smoke`` overrides
SMOKE_DURATION_S = 1.5
SMOKE_REQUESTS = 60
#: placeholder URLs used when a scenario is only validated
_CHECK_ENV = {"MOCK_URL": "http://127.0.0.1:9", "REDIS_URL": "redis://127.0.0.1:9/0"}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; ``problems`` holds one line per issue."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path}: invalid scenario:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class ProxySpec:
    name: str
    config: dict[str, Any]
    replicas: int = 1


@dataclass(frozen=True)
class Phase:
    name: str
    targets: tuple[str, ...]
    #: load name -> LoadSpec fields; one load is called "main"
    loads: dict[str, dict[str, Any]]
    mock: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    description: str
    analysis: str
    path: Path
    mock: dict[str, Any]
    phases: tuple[Phase, ...]
    proxies: dict[str, ProxySpec] = field(default_factory=dict)
    nginx: bool = False
    redis: bool = False
    repeat: int = 1
    passthrough: bool = False
    targets: dict[str, float] = field(default_factory=dict)
    smoke_mock: dict[str, Any] = field(default_factory=dict)

    def smoked(self) -> Scenario:
        """The same scenario shrunk to a couple of seconds per phase (for tests)."""
        phases = tuple(
            Phase(p.name, p.targets, {n: _smoke_load(load, p.smoke) for n, load in p.loads.items()},
                  p.mock, p.smoke, p.description)
            for p in self.phases
        )
        return Scenario(self.name, self.title, self.description, self.analysis, self.path,
                        {**self.mock, **self.smoke_mock}, phases, self.proxies, self.nginx,
                        self.redis, 1, self.targets, self.smoke_mock, self.passthrough)


def _smoke_load(load: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(load)
    if out.get("duration") is not None:
        out["duration"] = min(float(out["duration"]), SMOKE_DURATION_S)
    if out.get("requests") is not None:
        out["requests"] = min(int(out["requests"]), SMOKE_REQUESTS)
    out.update(overrides)
    return out


# -- reading a scenario file -----------------------------------------------------------------


def _mapping(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping")
        return {}
    return dict(value)


def _check_mock(values: Mapping[str, Any], where: str, problems: list[str]) -> None:
    known = {f.name for f in fields(MockLLMConfig)}
    for key in values:
        if key not in known:
            problems.append(
                f"{where}.{key}: not a mock setting (one of {', '.join(sorted(known))})")
    try:
        MockLLMConfig().update({k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")


def _check_load(load: Mapping[str, Any], where: str, problems: list[str]) -> None:
    for key in load:
        if key not in LOAD_KEYS:
            problems.append(f"{where}.{key}: unknown load setting")
    if load.get("duration") is None and load.get("requests") is None:
        problems.append(f"{where}: needs a duration and/or a requests bound")
    try:
        build_load_spec(load, "http://127.0.0.1:9/v1").validate()
    except (TypeError, ValueError, KeyError) as exc:
        problems.append(f"{where}: {exc}")


def parse_scenario(data: Any, path: Path) -> Scenario:
    """Validate a decoded scenario; raises ``ScenarioError`` listing every problem."""
    from proxy.config import ConfigError, parse_config

    problems: list[str] = []
    top = _mapping(data, "(top level)", problems)
    known_top = {"name", "title", "description", "analysis", "repeat", "mock", "smoke_mock",
                 "nginx", "redis", "passthrough", "proxies", "targets", "phases"}
    for key in top:
        if key not in known_top:
            problems.append(f"{key}: unknown key")
    name = str(top.get("name") or path.stem)
    analysis = top.get("analysis", "overhead")
    if analysis not in ANALYSES:
        problems.append(f"analysis: must be one of {', '.join(ANALYSES)}, got {analysis!r}")
    repeat = top.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        problems.append("repeat: expected a positive integer")
        repeat = 1
    mock = _mapping(top.get("mock"), "mock", problems)
    _check_mock(mock, "mock", problems)
    smoke_mock = _mapping(top.get("smoke_mock"), "smoke_mock", problems)
    _check_mock(smoke_mock, "smoke_mock", problems)
    targets_cfg = _mapping(top.get("targets"), "targets", problems)
    for key, value in targets_cfg.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"targets.{key}: expected a number")

    proxies: dict[str, ProxySpec] = {}
    for pname, entry in _mapping(top.get("proxies"), "proxies", problems).items():
        where = f"proxies.{pname}"
        entry = _mapping(entry, where, problems)
        if pname in (DIRECT, NGINX, PASSTHROUGH):
            problems.append(f"{where}: '{pname}' is a reserved target name")
        for key in entry:
            if key not in ("config", "replicas"):
                problems.append(f"{where}.{key}: unknown key")
        replicas = entry.get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 8:
            problems.append(f"{where}.replicas: expected an integer from 1 to 8")
            replicas = 1
        config = _mapping(entry.get("config"), f"{where}.config", problems)
        try:
            parse_config(config, environ=_CHECK_ENV)
        except ConfigError as exc:
            problems.extend(f"{where}.config.{p}" for p in exc.problems)
        proxies[str(pname)] = ProxySpec(str(pname), config, replicas)

    nginx = bool(top.get("nginx", False))
    redis = bool(top.get("redis", False))
    passthrough = bool(top.get("passthrough", False))
    valid_targets = {DIRECT, *proxies} | ({NGINX} if nginx else set()) | (
        {PASSTHROUGH} if passthrough else set())
    phases: list[Phase] = []
    raw_phases = top.get("phases")
    if not isinstance(raw_phases, list) or not raw_phases:
        problems.append("phases: expected a non-empty list")
        raw_phases = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_phases):
        where = f"phases[{i}]"
        entry = _mapping(raw, where, problems)
        for key in entry:
            if key not in ("name", "description", "targets", "mock", "load", "loads", "smoke"):
                problems.append(f"{where}.{key}: unknown key")
        pname = str(entry.get("name") or f"phase{i + 1}")
        if pname in seen:
            problems.append(f"{where}.name: duplicate phase {pname!r}")
        seen.add(pname)
        targets = entry.get("targets") or []
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}.targets: expected a non-empty list")
            targets = []
        for target in targets:
            if target not in valid_targets:
                problems.append(f"{where}.targets: unknown target {target!r} "
                                f"(one of {', '.join(sorted(valid_targets))})")
        if ("load" in entry) == ("loads" in entry):
            problems.append(f"{where}: give exactly one of load or loads")
        loads = ({"main": _mapping(entry.get("load"), f"{where}.load", problems)}
                 if "load" in entry else _mapping(entry.get("loads"), f"{where}.loads", problems))
        for lname, load in loads.items():
            loads[lname] = _mapping(load, f"{where}.loads.{lname}", problems)
            _check_load(loads[lname], f"{where}.loads.{lname}", problems)
        phase_mock = _mapping(entry.get("mock"), f"{where}.mock", problems)
        _check_mock(phase_mock, f"{where}.mock", problems)
        smoke = _mapping(entry.get("smoke"), f"{where}.smoke", problems)
        for key in smoke:
            if key not in LOAD_KEYS:
                problems.append(f"{where}.smoke.{key}: unknown load setting")
        phases.append(Phase(pname, tuple(str(t) for t in targets), loads, phase_mock, smoke,
                            str(entry.get("description") or "")))

    from loadtest.analysis import required_phases

    for needed in required_phases(str(analysis)):
        if needed not in seen:
            problems.append(f"phases: analysis {analysis!r} needs a phase named {needed!r}")
    if problems:
        raise ScenarioError(str(path), problems)
    return Scenario(
        name=name, title=str(top.get("title") or name), description=str(
            top.get("description") or "").strip(), analysis=str(analysis), path=path, mock=mock,
        phases=tuple(phases), proxies=proxies, nginx=nginx, redis=redis, repeat=repeat,
        targets={k: float(v) for k, v in targets_cfg.items()}, smoke_mock=smoke_mock,
        passthrough=passthrough)


def scenario_path(path: str | Path) -> Path:
    """A path, or the file of that name under ``loadtest/scenarios``."""
    p = Path(path)
    if not p.exists() and (SCENARIO_DIR / f"{path}.yaml").exists():
        p = SCENARIO_DIR / f"{path}.yaml"
    return p


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file: a path, or the name of one under ``loadtest/scenarios``."""
    p = scenario_path(path)
    try:
        data = load_yaml(p.read_text())
    except OSError as exc:
        raise ScenarioError(str(p), [f"cannot read: {exc.strerror or exc}"]) from exc
    except YamlProblems as exc:  # the proxy's reader: duplicate keys refused there too
        raise ScenarioError(str(p), exc.problems) from exc
    return parse_scenario(data, p)


def scenario_files() -> list[Path]:
    """The phase scenarios (files naming a runner are ``loadtest/scenario_runner.py``'s)."""
    from loadtest.scenario_runner import read_runner_file

    return sorted(p for p in SCENARIO_DIR.glob("*.yaml") if read_runner_file(p) is None)


def build_load_spec(load: Mapping[str, Any], base_url: str | list[str], **extra: Any) -> LoadSpec:
    """A LoadSpec from scenario fields (``mix`` as a list of {name, key, weight})."""
    values = {k: v for k, v in load.items() if k != "mix"}
    if "mix" in load:
        values["mix"] = [ClientClass(str(m["name"]), str(m["key"]), float(m.get("weight", 1.0)))
                         for m in load["mix"]]
    if isinstance(base_url, list):
        values["base_url"], values["base_urls"] = base_url[0], list(base_url) if len(
            base_url) > 1 else []
    else:
        values["base_url"] = base_url
    values.update(extra)
    return LoadSpec(**values)


# -- running ----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One phase x target x repeat: its loads' summaries and what the servers did."""

    phase: str
    target: str
    repeat: int
    #: service names whose CPU is the target's cost (nginx; the proxy replicas)
    servers: list[str]
    #: load name -> generator summary
    loads: dict[str, dict[str, Any]]
    #: load name -> result JSON file
    files: dict[str, str]
    #: service name (and "generator") -> CPU seconds during the run
    cpu_s: dict[str, float]
    wall_s: float
    #: the mock's /mock/stats after the run (peak, service_s, completed...)
    mock: dict[str, Any]
    #: the target proxies' queue depth and in flight once the run was over
    proxy_end: dict[str, float] | None = None
    #: CPU seconds used during the run by processes outside the scenario (other work on
    #: the machine; high values mean the run competed for the cores)
    foreign_cpu_s: float | None = None

    @property
    def requests(self) -> int:
        return sum(int(s["count"]) for s in self.loads.values())

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass
class ScenarioResult:
    scenario: Scenario
    runs: list[RunRecord]
    out_dir: Path
    smoke: bool
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    #: the commit the measured code came from (see loadtest.analysis.code_version)
    code: str | None = None
    #: the command line that ran it, and when it started (UTC)
    command: str = ""
    when: str = ""


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
    from loadtest.generator import parse_proxy_status

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
    from loadtest.analysis import code_version

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
    from loadtest.analysis import write_section
    from loadtest.scenario_runner import (
        RunnerFileError,
        read_runner_file,
        run_runner_file,
        runner_args,
    )

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
