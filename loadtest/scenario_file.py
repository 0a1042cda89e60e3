"""Reading a scenario file: every problem listed at once, nothing started.

The file format is drawn in ``loadtest/scenario.py``; a file that names a ``runner`` instead
of phases belongs to ``loadtest/scenario_runner.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from loadtest.generator import ClientClass, LoadSpec
from loadtest.mock_state import MockLLMConfig
from loadtest.scenario_model import (
    ANALYSES,
    DIRECT,
    NGINX,
    PASSTHROUGH,
    Phase,
    ProxySpec,
    Scenario,
)
from loadtest.scenario_runner import read_runner_file
from loadtest.verdicts import required_phases
from proxy.config import ConfigError, parse_config
from proxy.yamlfile import YamlProblems, load_yaml

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
#: LoadSpec fields a scenario may set (the runner fills in URLs, sampling and labels)
LOAD_KEYS = frozenset({"clients", "rate", "requests", "duration", "stream", "max_tokens",
                       "prompt_chars", "mix", "timeout", "headers", "seed", "sample_interval",
                       "model"})
#: placeholder URLs used when a scenario is only validated
_CHECK_ENV = {"MOCK_URL": "http://127.0.0.1:9", "REDIS_URL": "redis://127.0.0.1:9/0"}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; ``problems`` holds one line per issue."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path}: invalid scenario:\n" + "\n".join(f"  - {p}" for p in problems))


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
