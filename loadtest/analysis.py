"""Key numbers of a scenario's runs, checked against its targets, as a Markdown section.

Every figure is a median over the scenario's repeats; ratios (proxy vs direct, added time to
first token) are taken within each repeat first, so both sides of a ratio come from the same
minutes of the same machine. A section sits between ``<!-- loadtest:NAME begin/end -->``
markers, so re-running one scenario replaces only its own section of a page and leaves the
rest (hand-written sections included) alone.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.generator import streamed_rate

if TYPE_CHECKING:
    from loadtest.scenario import RunRecord, Scenario, ScenarioResult

PASS, MISS, INFO = "met", "**MISSED**", ""


def required_phases(kind: str) -> tuple[str, ...]:
    """Phase names an analysis reads (checked when a scenario file is loaded)."""
    return {"overload": ("unloaded", "overload"), "priority": ("alone", "flood"),
            "multihost": ("overload",),
            "fairness": ("batch", "flood", "alone", "trickle")}.get(kind, ())


# -- small helpers ----------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 1000:.{digits}f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if value >= 3 else f"{value * 100:.1f}%"


def _select(runs: Sequence[RunRecord], phase: str, target: str | None = None) -> list[RunRecord]:
    return [r for r in runs if r.phase == phase and (target is None or r.target == target)]


def _targets_of(runs: Sequence[RunRecord], phase: str) -> list[str]:
    out: list[str] = []
    for r in runs:
        if r.phase == phase and r.target not in out:
            out.append(r.target)
    return out


def server_cpu_ms(run: RunRecord) -> float | None:
    """CPU milliseconds per request of the target's own server processes (None: direct)."""
    if not run.servers or not run.requests:
        return None
    return sum(run.cpu_s.get(n, 0.0) for n in run.servers) / run.requests * 1000


def _load(run: RunRecord, name: str | None) -> dict[str, Any]:
    return run.loads[name] if name else next(iter(run.loads.values()))


def _lost(run: RunRecord) -> int:
    return sum(int(s["count"]) - int(s["ok"]) for s in run.loads.values())


def _per_repeat(runs: Sequence[RunRecord], phase: str, target: str, base: str,
                value: Callable[[RunRecord], float | None],
                combine: Callable[[float, float], float]) -> float | None:
    """Median over repeats of combine(value(target run), value(base run))."""
    out = []
    for run in _select(runs, phase, target):
        base_runs = [b for b in _select(runs, phase, base) if b.repeat == run.repeat]
        if not base_runs:
            continue
        a, b = value(run), value(base_runs[0])
        if a is not None and b is not None:
            out.append(combine(a, b))
    return median(out)


def _against(runs: Sequence[RunRecord], phase: str, target: str, base_phase: str,
             base_target: str, value: Callable[[RunRecord], float | None],
             base_value: Callable[[RunRecord], float | None] | None = None) -> float | None:
    """Median over repeats of value(run) / base_value(the base phase's run, same repeat)."""
    base_value = base_value or value
    out = []
    for run in _select(runs, phase, target):
        base = [b for b in _select(runs, base_phase, base_target) if b.repeat == run.repeat]
        a, b = value(run), base_value(base[0]) if base else None
        if a is not None and b:
            out.append(a / b)
    return median(out)


def _goodput(load: str | None = None) -> Callable[[RunRecord], float | None]:
    return lambda r: float(_load(r, load)["goodput_rps"])


def _stat(kind: str, q: str, load: str | None = None) -> Callable[[RunRecord], float | None]:
    return lambda r: _load(r, load)[kind][q]


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _diff(a: float, b: float) -> float:
    return a - b


def proxy_cap(scenario: Scenario, target: str) -> int | None:
    """The smallest in-flight cap among the target proxy's models and upstreams."""
    from proxy.config import parse_config

    spec = scenario.proxies.get(target)
    if spec is None:
        return None
    config = parse_config(spec.config, environ={"MOCK_URL": "http://127.0.0.1:9",
                                                "REDIS_URL": "redis://127.0.0.1:9/0"})
    caps = [m.max_in_flight for m in config.models.values() if m.max_in_flight] + [
        u.max_in_flight for u in config.upstreams.values() if u.max_in_flight]
    return min(caps) if caps else None


# -- findings -----------------------------------------------------------------------------------


@dataclass
class Findings:
    """Rows of the key-number table, and the hard checks that failed."""

    #: (what, measured, target, verdict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: machine-readable key numbers (for tests and the final report)
    numbers: dict[str, float | None] = field(default_factory=dict)

    def add(self, what: str, measured: str, target: str = "", verdict: str = INFO) -> None:
        self.rows.append((what, measured, target, verdict))

    def check(self, what: str, value: float | None, shown: str, limit: float | None,
              *, at_most: bool, target_text: str, hard: bool = False) -> None:
        """A row with a verdict; ``hard`` failures make the command exit non-zero."""
        if limit is None or value is None:
            self.add(what, shown, target_text if limit is not None else "")
            return
        ok = value <= limit if at_most else value >= limit
        self.add(what, shown, target_text, PASS if ok else MISS)
        if hard and not ok:
            self.failed.append(f"{what}: {shown} (target {target_text})")


def analyze(result: ScenarioResult) -> Findings:
    kind = result.scenario.analysis
    findings = Findings()
    {"overhead": _overhead, "streaming": _streaming, "overload": _overload,
     "priority": _priority, "multihost": _multihost, "fairness": _fairness}[kind](result.scenario, result.runs, findings)
    return findings


def _proxy_targets(scenario: Scenario, runs: Sequence[RunRecord], phase: str) -> list[str]:
    return [t for t in _targets_of(runs, phase) if t in scenario.proxies]


def _overhead(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    limit = scenario.targets.get("cpu_ms_per_request")
    for phase in scenario.phases:
        targets = _targets_of(runs, phase.name)
        for target in targets:
            if target == "direct":
                continue
            cpu = median(server_cpu_ms(r) for r in _select(runs, phase.name, target))
            is_proxy = target in scenario.proxies
            f.numbers[f"{phase.name}.{target}.cpu_ms_per_request"] = cpu
            f.check(f"{phase.name}: {target} CPU per request", cpu, f"{_num(cpu, '.3f')} ms",
                    limit if is_proxy else None, at_most=True,
                    target_text=f"<= {limit:g} ms" if limit is not None else "")
        for target in targets:
            if target == "direct":
                continue
            ratio = _per_repeat(runs, phase.name, target, "direct", _goodput(), _ratio)
            f.numbers[f"{phase.name}.{target}.rps_vs_direct"] = ratio
            rps = median(_goodput()(r) for r in _select(runs, phase.name, target))
            f.add(f"{phase.name}: {target} req/s vs direct", f"{_num(rps)} req/s = {_pct(ratio)}")
        if "passthrough" in targets:
            for target in targets:
                if target in scenario.proxies:
                    extra = _per_repeat(runs, phase.name, target, "passthrough", server_cpu_ms,
                                        _diff)
                    f.numbers[f"{phase.name}.{target}.cpu_ms_above_passthrough"] = extra
                    f.add(f"{phase.name}: {target} CPU per request minus the minimal aiohttp "
                          "pass-through's", f"{_num(extra, '.3f')} ms")
        direct = median(_goodput()(r) for r in _select(runs, phase.name, "direct"))
        if direct is not None:
            f.numbers[f"{phase.name}.direct.rps"] = direct
            f.add(f"{phase.name}: direct req/s", f"{_num(direct)} req/s")
    if any(t in scenario.proxies for p in scenario.phases for t in p.targets):
        f.notes.append(
            "CPU per request is the server process's own user+system time (from /proc) divided "
            "by the requests of the run. The load generator, the mock and the server under test "
            "share the machine's cores, so req/s is what this machine can push through each "
            "path with everything on it, not the server's own ceiling; 'other load' is CPU used "
            "by processes outside the scenario during the run.")


def _streaming(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    limit = scenario.targets.get("ttft_added_p50_ms")
    cpu_limit = scenario.targets.get("cpu_ms_per_request")
    for phase in scenario.phases:
        for target in _targets_of(runs, phase.name):
            if target == "direct":
                continue
            is_proxy = target in scenario.proxies
            for q in ("p50", "p99"):
                added = _per_repeat(runs, phase.name, target, "direct", _stat("ttft", q), _diff)
                f.numbers[f"{phase.name}.{target}.ttft_added_{q}_ms"] = (
                    None if added is None else added * 1000)
                f.check(f"{phase.name}: {target} added TTFT {q}",
                        None if added is None else added * 1000, f"{_ms(added, 2)} ms",
                        limit if is_proxy and q == "p50" else None, at_most=True,
                        target_text=f"< {limit:g} ms" if limit is not None else "")
            cpu = median(server_cpu_ms(r) for r in _select(runs, phase.name, target))
            f.numbers[f"{phase.name}.{target}.cpu_ms_per_request"] = cpu
            f.check(f"{phase.name}: {target} CPU per streamed request", cpu,
                    f"{_num(cpu, '.3f')} ms", cpu_limit if is_proxy else None, at_most=True,
                    target_text=f"<= {cpu_limit:g} ms" if cpu_limit is not None else "")
            if is_proxy and "passthrough" in _targets_of(runs, phase.name):
                extra = _per_repeat(runs, phase.name, target, "passthrough", server_cpu_ms,
                                    _diff)
                f.numbers[f"{phase.name}.{target}.cpu_ms_above_passthrough"] = extra
                f.add(f"{phase.name}: {target} CPU per streamed request minus the minimal "
                      "aiohttp pass-through's", f"{_num(extra, '.3f')} ms")


def _service_summary(run: RunRecord) -> dict[str, Any]:
    return run.mock.get("service_s") or {}


def _overload(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    goodput_tol = scenario.targets.get("goodput_tolerance", 0.05)
    service_tol = scenario.targets.get("service_time_tolerance", 0.10)
    capacity = median(_goodput()(r) for r in _select(runs, "unloaded", "direct"))
    base_service = median(_service_summary(r).get("p50") for r in _select(runs, "unloaded"))
    base_service99 = median(_service_summary(r).get("p99") for r in _select(runs, "unloaded"))
    base_latency = median(_stat("latency", "p50")(r) for r in _select(runs, "unloaded"))
    f.numbers.update(capacity_rps=capacity, unloaded_service_p50_s=base_service)
    f.add("capacity at B (direct, B clients, unloaded)", f"{_num(capacity)} req/s")
    f.add("unloaded service time p50 / p99 (at the mock)",
          f"{_ms(base_service)} / {_ms(base_service99)} ms")
    batch = scenario.mock.get("batch_size")
    if batch and base_service:
        f.add("capacity at B from the mock's own service time (B / unloaded p50)",
              f"{_num(batch / base_service)} req/s")
    for target in _targets_of(runs, "overload"):
        sel = _select(runs, "overload", target)
        is_proxy = target in scenario.proxies
        goodput = median(_goodput()(r) for r in sel)
        share = _against(runs, "overload", target, "unloaded", "direct", _goodput())
        f.numbers[f"{target}.goodput_rps"] = goodput
        f.numbers[f"{target}.goodput_vs_capacity"] = share
        f.check(f"{target}: goodput under 10x overload", share,
                f"{_num(goodput)} req/s = {_pct(share)} of capacity",
                1 - goodput_tol if is_proxy else None, at_most=False,
                target_text=f">= {100 - goodput_tol * 100:g}%")
        if batch:
            by_service = _against(runs, "overload", target, "unloaded", "direct", _goodput(),
                                  lambda r: batch / s if (s := _service_summary(r).get("p50"))
                                  else None)
            f.numbers[f"{target}.goodput_vs_service_capacity"] = by_service
            f.check(f"{target}: goodput vs B / unloaded service time", by_service,
                    _pct(by_service), 1 - goodput_tol if is_proxy else None, at_most=False,
                    target_text=f">= {100 - goodput_tol * 100:g}%")
        p99 = median(_stat("latency", "p99")(r) for r in sel)
        f.numbers[f"{target}.latency_p99_s"] = p99
        f.add(f"{target}: latency p99 (queue wait included)", f"{_ms(p99, 0)} ms")
        lost = sum(_lost(r) for r in sel)
        total = sum(r.requests for r in sel)
        f.numbers[f"{target}.lost"] = lost
        f.check(f"{target}: requests lost (errors, timeouts)", lost, f"{lost} of {total}",
                0 if is_proxy else None, at_most=True, target_text="0", hard=True)
        service = median(_service_summary(r).get("p50") for r in sel)
        service99 = median(_service_summary(r).get("p99") for r in sel)
        ratio = _against(runs, "overload", target, "unloaded", "direct",
                         lambda r: _service_summary(r).get("p50"))
        f.numbers[f"{target}.service_p50_vs_unloaded"] = ratio
        f.check(f"{target}: service time p50 / p99 at the mock (no queue wait)",
                ratio, f"{_ms(service)} / {_ms(service99)} ms = {_pct(ratio)} of unloaded",
                1 + service_tol if is_proxy else None, at_most=True,
                target_text=f"<= {100 + service_tol * 100:g}%")
        client_service = median((_load(r, None).get("service") or {}).get("p50") for r in sel)
        if is_proxy:
            if client_service is not None and base_latency:
                c_ratio = _against(runs, "overload", target, "unloaded", "direct",
                                   lambda r: (_load(r, None).get("service") or {}).get("p50"),
                                   _stat("latency", "p50")) or 0.0
                f.numbers[f"{target}.client_service_p50_vs_unloaded"] = c_ratio
                f.check(f"{target}: service time p50 at the client (latency - queue wait)",
                        c_ratio, f"{_ms(client_service)} ms = {_pct(c_ratio)} of unloaded",
                        1 + service_tol, at_most=True,
                        target_text=f"<= {100 + service_tol * 100:g}%")
            else:
                f.notes.append(
                    f"{target}: the proxy sent no x-llm-throttle-queue-ms header, so service time "
                    "is measured at the mock (from its first byte in to its last byte out).")
            cap = proxy_cap(scenario, target)
            peak = max((int(r.mock.get("peak") or 0) for r in sel), default=0)
            f.numbers[f"{target}.mock_peak"] = peak
            f.check(f"{target}: peak in flight at the mock", peak, f"{peak}",
                    cap, at_most=True, target_text=f"<= cap {cap}", hard=True)
            leftover = [r.proxy_end for r in sel if r.proxy_end and (
                r.proxy_end["queue_depth"] or r.proxy_end["in_flight"])]
            f.check(f"{target}: queue drained after the run", len(leftover),
                    "yes" if not leftover else f"no: {leftover}", 0, at_most=True,
                    target_text="depth 0", hard=True)
        else:
            peak = max((int(r.mock.get("peak") or 0) for r in sel), default=0)
            f.add(f"{target}: peak in flight at the mock", f"{peak}")


def _priority(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    ratio_limit = scenario.targets.get("interactive_p99_vs_alone")
    alone = _select(runs, "alone")
    base = median(_stat("latency", "p99", "interactive")(r) for r in alone)
    base50 = median(_stat("latency", "p50", "interactive")(r) for r in alone)
    f.numbers["alone.interactive_p99_s"] = base
    f.add("interactive alone: latency p50 / p99", f"{_ms(base50, 0)} / {_ms(base, 0)} ms")
    for target in _targets_of(runs, "flood"):
        sel = _select(runs, "flood", target)
        p99 = median(_stat("latency", "p99", "interactive")(r) for r in sel)
        p50 = median(_stat("latency", "p50", "interactive")(r) for r in sel)
        ratio = p99 / base if p99 is not None and base else None
        f.numbers[f"flood.{target}.interactive_p99_s"] = p99
        is_prio = target in scenario.proxies and target != "fifo"
        f.check(f"flood via {target}: interactive latency p50 / p99", ratio,
                f"{_ms(p50, 0)} / {_ms(p99, 0)} ms (p99 = {_num(ratio, '.2f')}x alone)",
                ratio_limit if is_prio else None, at_most=True,
                target_text=f"p99 <= {ratio_limit:g}x alone" if ratio_limit else "")
        batch = median(_goodput("batch")(r) for r in sel)
        lost = sum(_lost(r) for r in sel)
        f.numbers[f"flood.{target}.batch_goodput_rps"] = batch
        f.add(f"flood via {target}: batch goodput, requests lost",
              f"{_num(batch)} req/s, {lost} lost")
        if target in scenario.proxies:
            peak = max((int(r.mock.get("peak") or 0) for r in sel), default=0)
            cap = proxy_cap(scenario, target)
            f.check(f"flood via {target}: peak in flight at the mock", peak, str(peak), cap,
                    at_most=True, target_text=f"<= cap {cap}", hard=True)


def _tokens_per_s(load: str) -> Callable[[RunRecord], float | None]:
    return lambda r: float(_load(r, load)["goodput_tokens_per_s"])


def _steady_tokens_per_s(scenario: Scenario, phase: str, load: str,
                         warmup_s: float | None) -> Callable[[RunRecord], float | None]:
    """Completion tokens a second that streamed in the load's steady window: from
    ``warmup_s`` to the end of its duration. The whole-run figure counts each request that
    started before the end in full, so the tail where one client's long requests finish alone
    after the others stopped counts for that client (and shorter ones for the rest). A load
    too short for a steady window (``--smoke``) is measured whole."""
    spec = next(p for p in scenario.phases if p.name == phase).loads[load]
    end = spec.get("duration")
    whole = _tokens_per_s(load)
    if warmup_s is None or end is None or float(end) < 2 * warmup_s:
        return whole

    def rate(r: RunRecord) -> float | None:
        windowed = streamed_rate(_load(r, load), warmup_s, float(end))
        return whole(r) if windowed is None else windowed
    return rate


def _fairness(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    """Weighted token shares between batch clients; class shares; interactive p99."""
    tolerance = scenario.targets.get("weighted_share_tolerance")
    clients = scenario.proxies["proxy"].config.get("clients", {})
    loads = ("a", "b", "c")
    weights = {name: float(clients.get(name, {}).get("weight", 1)) for name in loads}
    warmup = scenario.targets.get("share_warmup_s")
    for target in _targets_of(runs, "batch"):
        sel = _select(runs, "batch", target)
        rates = {name: median(_steady_tokens_per_s(scenario, "batch", name, warmup)(r)
                              for r in sel) or 0.0 for name in loads}
        whole = {name: median(_tokens_per_s(name)(r) for r in sel) or 0.0 for name in loads}
        total, whole_total = sum(rates.values()) or 1.0, sum(whole.values()) or 1.0
        for name in loads:
            share = rates[name] / total
            expected = weights[name] / sum(weights.values())
            f.numbers[f"batch.{target}.{name}.tokens_per_s"] = rates[name]
            f.numbers[f"batch.{target}.{name}.whole_run_share"] = whole[name] / whole_total
            f.check(f"batch via {target}: client {name} (weight {weights[name]:g}) tokens",
                    abs(share / expected - 1),
                    f"{_num(rates[name], '.0f')} tok/s = {_pct(share)} (share {_pct(expected)}"
                    f"; whole run {_pct(whole[name] / whole_total)})",
                    tolerance if target != "fifo" else None, at_most=True,
                    target_text=f"within +-{_pct(tolerance)} of its share" if tolerance else "")
        hosts = sel[0].servers if sel else []
        if len(hosts) > 1:  # several proxies on one store: show that each one served
            cpu = [median(r.cpu_s.get(h) for r in sel) for h in hosts]
            f.add(f"batch via {target}: proxy hosts sharing the store",
                  f"{len(hosts)}, CPU s each " + " / ".join(_num(c, ".1f") for c in cpu))
    share_min = scenario.targets.get("batch_token_share_min")
    for target in _targets_of(runs, "flood"):
        sel = _select(runs, "flood", target)
        batch = median(_steady_tokens_per_s(scenario, "flood", "batch", warmup)(r)
                       for r in sel) or 0.0
        chat = median(_steady_tokens_per_s(scenario, "flood", "interactive", warmup)(r)
                      for r in sel) or 0.0
        share = batch / (batch + chat) if batch + chat else None
        f.numbers[f"flood.{target}.batch_share"] = share
        f.check(f"flood via {target}: batch share of tokens", share,
                f"{_pct(share)} ({_num(batch, '.0f')} of {_num(batch + chat, '.0f')} tok/s)",
                share_min if target != "fifo" else None, at_most=False,
                target_text=f">= {_pct(share_min)}" if share_min else "")
    ratio_limit = scenario.targets.get("interactive_p99_vs_alone")
    for target in _targets_of(runs, "trickle"):
        alone = _select(runs, "alone", target) or _select(runs, "alone")
        base = median(_stat("latency", "p99", "interactive")(r) for r in alone)
        p99 = median(_stat("latency", "p99", "interactive")(r)
                     for r in _select(runs, "trickle", target))
        ratio = p99 / base if p99 is not None and base else None
        f.numbers[f"trickle.{target}.p99_vs_alone"] = ratio
        f.check("interactive p99 under a batch flood"
                + ("" if target == "proxy" else f" via {target}"), ratio,
                f"{_ms(p99, 0)} ms vs {_ms(base, 0)} ms alone ({_num(ratio, '.2f')}x)",
                ratio_limit if target != "fifo" else None, at_most=True,
                target_text=f"<= {ratio_limit:g}x alone" if ratio_limit else "")
    for target in _targets_of(runs, "batch"):
        if target in scenario.proxies:
            peak = max((int(r.mock.get("peak") or 0) for r in _select(runs, "batch", target)),
                       default=0)
            cap = proxy_cap(scenario, target)
            f.check(f"batch via {target}: peak in flight at the mock", peak, str(peak), cap,
                    at_most=True, target_text=f"<= cap {cap}", hard=True)


def _multihost(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    capacity = median(_goodput()(r) for r in _select(runs, "unloaded", "direct"))
    if capacity is not None:
        f.add("capacity at B (direct, unloaded)", f"{_num(capacity)} req/s")
    for target in _targets_of(runs, "overload"):
        sel = _select(runs, "overload", target)
        goodput = median(_goodput()(r) for r in sel)
        f.numbers[f"{target}.goodput_rps"] = goodput
        share = _against(runs, "overload", target, "unloaded", "direct", _goodput())
        f.add(f"{target}: goodput", f"{_num(goodput)} req/s"
              + (f" = {_pct(share)} of capacity" if share is not None else ""))
        p99 = median(_stat("latency", "p99")(r) for r in sel)
        f.add(f"{target}: latency p99", f"{_ms(p99, 0)} ms")
        if target in scenario.proxies:
            replicas = scenario.proxies[target].replicas
            cap = proxy_cap(scenario, target)
            peak = max((int(r.mock.get("peak") or 0) for r in sel), default=0)
            f.numbers[f"{target}.mock_peak"] = peak
            f.check(f"{target} ({replicas} replicas, one Redis): peak in flight at the mock",
                    peak, str(peak), cap, at_most=True, target_text=f"<= cap {cap}", hard=True)
            lost = sum(_lost(r) for r in sel)
            f.check(f"{target}: requests lost", lost, str(lost), 0, at_most=True,
                    target_text="0", hard=True)


# -- the Markdown section -------------------------------------------------------------------------


def code_version() -> str:
    """The commit the measured code came from; ``-dirty`` when the code (``proxy/``,
    ``loadtest/``) has uncommitted changes (results and docs written by the run do not count)."""
    from loadtest.processes import CODE_ROOT

    git = ["git", "-C", str(CODE_ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "proxy", "loadtest"],
                                 capture_output=True, text=True, timeout=10,
                                 check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown (not a git checkout)"
    return head + ("-dirty" if changed else "")


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    import aiohttp

    info = {"nproc": str(os.cpu_count() or "?"), "cpu": "?", "memory": "?",
            "kernel": platform.release(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__}
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = "absent"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    from loadtest.processes import find_nginx, find_redis_server

    for name, binary, flag in (("nginx", find_nginx(), "-v"),
                               ("redis", find_redis_server(), "--version")):
        if binary is None:
            info[name] = "absent"
            continue
        try:
            out = subprocess.run([binary, flag], capture_output=True, text=True, timeout=5,
                                 check=False)
            text = (out.stdout + out.stderr).strip()
            found = re.search(r"(\d+\.\d+\.\d+)", text)
            info[name] = found.group(1) if found else text[:40]
        except (OSError, subprocess.SubprocessError):
            info[name] = "?"
    return info


def machine_section(info: dict[str, str]) -> str:
    return (
        "## Machine\n\n"
        "| nproc | CPU | memory | kernel | Python | aiohttp | uvloop | nginx | redis |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {info['nproc']} | {info['cpu']} | {info['memory']} | {info['kernel']} "
        f"| {info['python']} | {info['aiohttp']} | {info['uvloop']} | {info['nginx']} "
        f"| {info['redis']} |\n\n"
        "Everything (load generator, mock LLM, nginx, proxy, Redis) runs on this one machine, "
        "each server in its own process on loopback.\n")


def _comparison_table(scenario: Scenario, runs: Sequence[RunRecord], phase: str) -> str:
    """Medians per target (and load) of one phase."""
    header = ("| target | load | req/s | vs direct | latency p50 / p99 ms | TTFT p50 / p99 ms "
              "| server CPU ms/req | mock peak | lost | other load (cores) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for target in _targets_of(runs, phase):
        sel = _select(runs, phase, target)
        for load in sel[0].loads:
            ratio = (None if target == "direct" else
                     _per_repeat(runs, phase, target, "direct", _goodput(load), _ratio))
            cpu = median(server_cpu_ms(r) for r in sel)
            peak = max(int(r.mock.get("peak") or 0) for r in sel)
            others = median(r.foreign_cpu_s / r.wall_s for r in sel
                            if r.foreign_cpu_s is not None and r.wall_s)
            lines.append(
                f"| {target} | {load} | {_num(median(_goodput(load)(r) for r in sel))} "
                f"| {_pct(ratio) if ratio is not None else '-'} "
                f"| {_ms(median(_stat('latency', 'p50', load)(r) for r in sel))} / "
                f"{_ms(median(_stat('latency', 'p99', load)(r) for r in sel))} "
                f"| {_ms(median(_stat('ttft', 'p50', load)(r) for r in sel))} / "
                f"{_ms(median(_stat('ttft', 'p99', load)(r) for r in sel))} "
                f"| {_num(cpu, '.3f')} | {peak} "
                f"| {sum(int(_load(r, load)['count']) - int(_load(r, load)['ok']) for r in sel)} "
                f"| {_num(others, '.2f')} |")
    return "\n".join(lines) + "\n"


def _describe_phase(scenario: Scenario, phase_name: str) -> str:
    phase = next(p for p in scenario.phases if p.name == phase_name)
    parts = []
    for lname, load in phase.loads.items():
        mode = f"open loop {load['rate']}/s" if load.get("rate") else \
            f"closed loop, {load.get('clients', 4)} clients"
        bound = ", ".join(f"{k} {load[k]}" for k in ("duration", "requests") if load.get(k))
        stream = "streamed" if load.get("stream", True) else "not streamed"
        who = f"{lname}: " if len(phase.loads) > 1 else ""
        parts.append(f"{who}{mode}, {bound}, {stream}, max_tokens {load.get('max_tokens', 16)}")
    mock = {**scenario.mock, **phase.mock}
    text = "; ".join(parts)
    if phase.mock:
        text += "; mock " + ", ".join(f"{k}={v}" for k, v in phase.mock.items())
    if phase.description:
        text = phase.description.strip() + " (" + text + ")"
    del mock
    return text


def render_section(result: ScenarioResult, findings: Findings, command: str,
                   images: dict[str, list[Path]], page_dir: Path | None) -> str:
    scenario, runs = result.scenario, result.runs
    when = result.when or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = result.command or command
    mock = ", ".join(f"{k}={v}" for k, v in scenario.mock.items())
    lines = [f"## {scenario.title}", ""]
    if scenario.description:
        lines += [scenario.description, ""]
    lines += [
        f"Command (run {when}{', SMOKE: numbers not meaningful' if result.smoke else ''}):",
        "", "```", command, "```", "",
        (f"Code at commit `{result.code or code_version()}`. "
         f"Scenario file `{_display_path(scenario.path)}`; mock: {mock}; "
         f"{scenario.repeat} repeat(s), targets interleaved, medians shown."), "",
        "| what | measured | target | |", "|---|---|---|---|",
    ]
    lines += [f"| {w} | {m} | {t} | {v} |" for w, m, t, v in findings.rows]
    lines.append("")
    for note in [*result.notes, *findings.notes]:
        lines += [f"> {note}", ""]
    for phase in scenario.phases:
        if not _select(runs, phase.name):
            continue
        lines += [f"**Phase `{phase.name}`**: {_describe_phase(scenario, phase.name)}.", "",
                  _comparison_table(scenario, runs, phase.name)]
        for png in images.get(phase.name, []):
            rel = os.path.relpath(png, page_dir) if page_dir else str(png)
            lines.append(f"![{png.stem}]({rel})")
        if images.get(phase.name):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def splice(page: str, name: str, section: str) -> str:
    """Replace the marked section ``name`` in ``page`` (appended when absent)."""
    begin, end = f"<!-- loadtest:{name} begin -->", f"<!-- loadtest:{name} end -->"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(page):
        return pattern.sub(lambda _: block, page, count=1)
    return page.rstrip() + "\n\n" + block + "\n"


def _plots(result: ScenarioResult, img_dir: Path) -> dict[str, list[Path]]:
    """Latency CDF, throughput, upstream in flight and queue depth per phase (repeat 1)."""
    from loadtest.report import write_plots

    out: dict[str, list[Path]] = {}
    for phase in result.scenario.phases:
        docs = []
        for run in _select(result.runs, phase.name):
            if run.repeat != 1:
                continue
            for path in run.files.values():
                doc = json.loads(Path(path).read_text())
                doc["label"] = doc.get("label") or Path(path).stem
                docs.append(doc)
        if docs:
            out[phase.name] = write_plots(docs, img_dir / f"{result.scenario.name}-{phase.name}")
    return out


def write_section(result: ScenarioResult, command: str, img_dir: Path,
                  page: Path | None) -> tuple[str, list[str]]:
    """Analyze, plot and write the section (to OUT/report.md, and into ``page`` if given).

    Returns the section and the hard checks that failed.
    """
    findings = analyze(result)
    images = _plots(result, img_dir)
    page_dir = page.parent if page is not None else result.out_dir
    section = render_section(result, findings, command, images, page_dir)
    (result.out_dir / "report.md").write_text(section)
    (result.out_dir / "numbers.json").write_text(json.dumps(
        {"numbers": findings.numbers, "failed": findings.failed}, indent=1))
    if page is not None:
        text = page.read_text() if page.exists() else "# Benchmarks\n"
        text = splice(text, "machine", machine_section(machine_info()))
        page.write_text(splice(text, result.scenario.name, section))
    return section, findings.failed
