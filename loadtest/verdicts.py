"""What each kind of scenario (``analysis:`` in its file) checks, as rows of a ``Findings``.

Every figure is a median over the scenario's repeats (see ``loadtest.run_stats``); a row whose
target is not met is marked, and a ``hard`` one (lost requests, a cap overshot, a queue left
behind) makes the command exit non-zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loadtest.findings import Findings, fmt_ms, fmt_num, fmt_pct
from loadtest.load_result import streamed_rate
from loadtest.run_stats import (
    against,
    diff_of,
    goodput_of,
    load_summary,
    lost_requests,
    median,
    per_repeat,
    proxy_cap,
    ratio_of,
    select_runs,
    server_cpu_ms,
    service_summary,
    stat_of,
    targets_of,
    tokens_per_s_of,
)
from loadtest.scenario_model import RunRecord, Scenario, ScenarioResult


def required_phases(kind: str) -> tuple[str, ...]:
    """Phase names an analysis reads (checked when a scenario file is loaded)."""
    return {"overload": ("unloaded", "overload"), "priority": ("alone", "flood"),
            "multihost": ("overload",),
            "fairness": ("batch", "flood", "alone", "trickle")}.get(kind, ())


def analyze(result: ScenarioResult) -> Findings:
    kind = result.scenario.analysis
    findings = Findings()
    {"overhead": _overhead, "streaming": _streaming, "overload": _overload,
     "priority": _priority, "multihost": _multihost,
     "fairness": _fairness}[kind](result.scenario, result.runs, findings)
    return findings


def _overhead(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    limit = scenario.targets.get("cpu_ms_per_request")
    for phase in scenario.phases:
        targets = targets_of(runs, phase.name)
        for target in targets:
            if target == "direct":
                continue
            cpu = median(server_cpu_ms(r) for r in select_runs(runs, phase.name, target))
            is_proxy = target in scenario.proxies
            f.numbers[f"{phase.name}.{target}.cpu_ms_per_request"] = cpu
            f.check(f"{phase.name}: {target} CPU per request", cpu, f"{fmt_num(cpu, '.3f')} ms",
                    limit if is_proxy else None, at_most=True,
                    target_text=f"<= {limit:g} ms" if limit is not None else "")
        for target in targets:
            if target == "direct":
                continue
            ratio = per_repeat(runs, phase.name, target, "direct", goodput_of(), ratio_of)
            f.numbers[f"{phase.name}.{target}.rps_vs_direct"] = ratio
            rps = median(goodput_of()(r) for r in select_runs(runs, phase.name, target))
            f.add(f"{phase.name}: {target} req/s vs direct",
                  f"{fmt_num(rps)} req/s = {fmt_pct(ratio)}")
        if "passthrough" in targets:
            for target in targets:
                if target in scenario.proxies:
                    extra = per_repeat(runs, phase.name, target, "passthrough", server_cpu_ms,
                                        diff_of)
                    f.numbers[f"{phase.name}.{target}.cpu_ms_above_passthrough"] = extra
                    f.add(f"{phase.name}: {target} CPU per request minus the minimal aiohttp "
                          "pass-through's", f"{fmt_num(extra, '.3f')} ms")
        direct = median(goodput_of()(r) for r in select_runs(runs, phase.name, "direct"))
        if direct is not None:
            f.numbers[f"{phase.name}.direct.rps"] = direct
            f.add(f"{phase.name}: direct req/s", f"{fmt_num(direct)} req/s")
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
        for target in targets_of(runs, phase.name):
            if target == "direct":
                continue
            is_proxy = target in scenario.proxies
            for q in ("p50", "p99"):
                added = per_repeat(runs, phase.name, target, "direct", stat_of("ttft", q), diff_of)
                f.numbers[f"{phase.name}.{target}.ttft_added_{q}_ms"] = (
                    None if added is None else added * 1000)
                f.check(f"{phase.name}: {target} added TTFT {q}",
                        None if added is None else added * 1000, f"{fmt_ms(added, 2)} ms",
                        limit if is_proxy and q == "p50" else None, at_most=True,
                        target_text=f"< {limit:g} ms" if limit is not None else "")
            cpu = median(server_cpu_ms(r) for r in select_runs(runs, phase.name, target))
            f.numbers[f"{phase.name}.{target}.cpu_ms_per_request"] = cpu
            f.check(f"{phase.name}: {target} CPU per streamed request", cpu,
                    f"{fmt_num(cpu, '.3f')} ms", cpu_limit if is_proxy else None, at_most=True,
                    target_text=f"<= {cpu_limit:g} ms" if cpu_limit is not None else "")
            if is_proxy and "passthrough" in targets_of(runs, phase.name):
                extra = per_repeat(runs, phase.name, target, "passthrough", server_cpu_ms,
                                    diff_of)
                f.numbers[f"{phase.name}.{target}.cpu_ms_above_passthrough"] = extra
                f.add(f"{phase.name}: {target} CPU per streamed request minus the minimal "
                      "aiohttp pass-through's", f"{fmt_num(extra, '.3f')} ms")


def _overload(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    goodput_tol = scenario.targets.get("goodput_tolerance", 0.05)
    service_tol = scenario.targets.get("service_time_tolerance", 0.10)
    capacity = median(goodput_of()(r) for r in select_runs(runs, "unloaded", "direct"))
    base_service = median(service_summary(r).get("p50") for r in select_runs(runs, "unloaded"))
    base_service99 = median(service_summary(r).get("p99") for r in select_runs(runs, "unloaded"))
    base_latency = median(stat_of("latency", "p50")(r) for r in select_runs(runs, "unloaded"))
    f.numbers.update(capacity_rps=capacity, unloaded_service_p50_s=base_service)
    f.add("capacity at B (direct, B clients, unloaded)", f"{fmt_num(capacity)} req/s")
    f.add("unloaded service time p50 / p99 (at the mock)",
          f"{fmt_ms(base_service)} / {fmt_ms(base_service99)} ms")
    batch = scenario.mock.get("batch_size")
    if batch and base_service:
        f.add("capacity at B from the mock's own service time (B / unloaded p50)",
              f"{fmt_num(batch / base_service)} req/s")
    for target in targets_of(runs, "overload"):
        sel = select_runs(runs, "overload", target)
        is_proxy = target in scenario.proxies
        goodput = median(goodput_of()(r) for r in sel)
        share = against(runs, "overload", target, "unloaded", "direct", goodput_of())
        f.numbers[f"{target}.goodput_rps"] = goodput
        f.numbers[f"{target}.goodput_vs_capacity"] = share
        f.check(f"{target}: goodput under 10x overload", share,
                f"{fmt_num(goodput)} req/s = {fmt_pct(share)} of capacity",
                1 - goodput_tol if is_proxy else None, at_most=False,
                target_text=f">= {100 - goodput_tol * 100:g}%")
        if batch:
            by_service = against(runs, "overload", target, "unloaded", "direct", goodput_of(),
                                  lambda r: batch / s if (s := service_summary(r).get("p50"))
                                  else None)
            f.numbers[f"{target}.goodput_vs_service_capacity"] = by_service
            f.check(f"{target}: goodput vs B / unloaded service time", by_service,
                    fmt_pct(by_service), 1 - goodput_tol if is_proxy else None, at_most=False,
                    target_text=f">= {100 - goodput_tol * 100:g}%")
        p99 = median(stat_of("latency", "p99")(r) for r in sel)
        f.numbers[f"{target}.latency_p99_s"] = p99
        f.add(f"{target}: latency p99 (queue wait included)", f"{fmt_ms(p99, 0)} ms")
        lost = sum(lost_requests(r) for r in sel)
        total = sum(r.requests for r in sel)
        f.numbers[f"{target}.lost"] = lost
        f.check(f"{target}: requests lost (errors, timeouts)", lost, f"{lost} of {total}",
                0 if is_proxy else None, at_most=True, target_text="0", hard=True)
        service = median(service_summary(r).get("p50") for r in sel)
        service99 = median(service_summary(r).get("p99") for r in sel)
        ratio = against(runs, "overload", target, "unloaded", "direct",
                         lambda r: service_summary(r).get("p50"))
        f.numbers[f"{target}.service_p50_vs_unloaded"] = ratio
        f.check(f"{target}: service time p50 / p99 at the mock (no queue wait)",
                ratio, f"{fmt_ms(service)} / {fmt_ms(service99)} ms = {fmt_pct(ratio)} of unloaded",
                1 + service_tol if is_proxy else None, at_most=True,
                target_text=f"<= {100 + service_tol * 100:g}%")
        client_service = median((load_summary(r, None).get("service") or {}).get("p50")
                                for r in sel)
        if is_proxy:
            if client_service is not None and base_latency:
                c_ratio = against(runs, "overload", target, "unloaded", "direct",
                                   lambda r: (load_summary(r, None).get("service")
                                              or {}).get("p50"),
                                   stat_of("latency", "p50")) or 0.0
                f.numbers[f"{target}.client_service_p50_vs_unloaded"] = c_ratio
                f.check(f"{target}: service time p50 at the client (latency - queue wait)",
                        c_ratio, f"{fmt_ms(client_service)} ms = {fmt_pct(c_ratio)} of unloaded",
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
    alone = select_runs(runs, "alone")
    base = median(stat_of("latency", "p99", "interactive")(r) for r in alone)
    base50 = median(stat_of("latency", "p50", "interactive")(r) for r in alone)
    f.numbers["alone.interactive_p99_s"] = base
    f.add("interactive alone: latency p50 / p99", f"{fmt_ms(base50, 0)} / {fmt_ms(base, 0)} ms")
    for target in targets_of(runs, "flood"):
        sel = select_runs(runs, "flood", target)
        p99 = median(stat_of("latency", "p99", "interactive")(r) for r in sel)
        p50 = median(stat_of("latency", "p50", "interactive")(r) for r in sel)
        ratio = p99 / base if p99 is not None and base else None
        f.numbers[f"flood.{target}.interactive_p99_s"] = p99
        is_prio = target in scenario.proxies and target != "fifo"
        f.check(f"flood via {target}: interactive latency p50 / p99", ratio,
                f"{fmt_ms(p50, 0)} / {fmt_ms(p99, 0)} ms (p99 = {fmt_num(ratio, '.2f')}x alone)",
                ratio_limit if is_prio else None, at_most=True,
                target_text=f"p99 <= {ratio_limit:g}x alone" if ratio_limit else "")
        batch = median(goodput_of("batch")(r) for r in sel)
        lost = sum(lost_requests(r) for r in sel)
        f.numbers[f"flood.{target}.batch_goodput_rps"] = batch
        f.add(f"flood via {target}: batch goodput, requests lost",
              f"{fmt_num(batch)} req/s, {lost} lost")
        if target in scenario.proxies:
            peak = max((int(r.mock.get("peak") or 0) for r in sel), default=0)
            cap = proxy_cap(scenario, target)
            f.check(f"flood via {target}: peak in flight at the mock", peak, str(peak), cap,
                    at_most=True, target_text=f"<= cap {cap}", hard=True)


def _steady_tokens_per_s(scenario: Scenario, phase: str, load: str,
                         warmup_s: float | None) -> Callable[[RunRecord], float | None]:
    """Completion tokens a second that streamed in the load's steady window: from
    ``warmup_s`` to the end of its duration. The whole-run figure counts each request that
    started before the end in full, so the tail where one client's long requests finish alone
    after the others stopped counts for that client (and shorter ones for the rest). A load
    too short for a steady window (``--smoke``) is measured whole."""
    spec = next(p for p in scenario.phases if p.name == phase).loads[load]
    end = spec.get("duration")
    whole = tokens_per_s_of(load)
    if warmup_s is None or end is None or float(end) < 2 * warmup_s:
        return whole

    def rate(r: RunRecord) -> float | None:
        windowed = streamed_rate(load_summary(r, load), warmup_s, float(end))
        return whole(r) if windowed is None else windowed
    return rate


def _fairness(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    """Weighted token shares between batch clients; class shares; interactive p99."""
    tolerance = scenario.targets.get("weighted_share_tolerance")
    clients = scenario.proxies["proxy"].config.get("clients", {})
    loads = ("a", "b", "c")
    weights = {name: float(clients.get(name, {}).get("weight", 1)) for name in loads}
    warmup = scenario.targets.get("share_warmup_s")
    for target in targets_of(runs, "batch"):
        sel = select_runs(runs, "batch", target)
        rates = {name: median(_steady_tokens_per_s(scenario, "batch", name, warmup)(r)
                              for r in sel) or 0.0 for name in loads}
        whole = {name: median(tokens_per_s_of(name)(r) for r in sel) or 0.0 for name in loads}
        total, whole_total = sum(rates.values()) or 1.0, sum(whole.values()) or 1.0
        for name in loads:
            share = rates[name] / total
            expected = weights[name] / sum(weights.values())
            f.numbers[f"batch.{target}.{name}.tokens_per_s"] = rates[name]
            f.numbers[f"batch.{target}.{name}.whole_run_share"] = whole[name] / whole_total
            f.check(f"batch via {target}: client {name} (weight {weights[name]:g}) tokens",
                    abs(share / expected - 1),
                    f"{fmt_num(rates[name], '.0f')} tok/s = {fmt_pct(share)} "
                    f"(share {fmt_pct(expected)}"
                    f"; whole run {fmt_pct(whole[name] / whole_total)})",
                    tolerance if target != "fifo" else None, at_most=True,
                    target_text=f"within +-{fmt_pct(tolerance)} of its share" if tolerance else "")
        hosts = sel[0].servers if sel else []
        if len(hosts) > 1:  # several proxies on one store: show that each one served
            cpu = [median(r.cpu_s.get(h) for r in sel) for h in hosts]
            f.add(f"batch via {target}: proxy hosts sharing the store",
                  f"{len(hosts)}, CPU s each " + " / ".join(fmt_num(c, ".1f") for c in cpu))
    share_min = scenario.targets.get("batch_token_share_min")
    for target in targets_of(runs, "flood"):
        sel = select_runs(runs, "flood", target)
        batch = median(_steady_tokens_per_s(scenario, "flood", "batch", warmup)(r)
                       for r in sel) or 0.0
        chat = median(_steady_tokens_per_s(scenario, "flood", "interactive", warmup)(r)
                      for r in sel) or 0.0
        share = batch / (batch + chat) if batch + chat else None
        f.numbers[f"flood.{target}.batch_share"] = share
        f.check(f"flood via {target}: batch share of tokens", share,
                f"{fmt_pct(share)} ({fmt_num(batch, '.0f')} of "
                f"{fmt_num(batch + chat, '.0f')} tok/s)",
                share_min if target != "fifo" else None, at_most=False,
                target_text=f">= {fmt_pct(share_min)}" if share_min else "")
    ratio_limit = scenario.targets.get("interactive_p99_vs_alone")
    for target in targets_of(runs, "trickle"):
        alone = select_runs(runs, "alone", target) or select_runs(runs, "alone")
        base = median(stat_of("latency", "p99", "interactive")(r) for r in alone)
        p99 = median(stat_of("latency", "p99", "interactive")(r)
                     for r in select_runs(runs, "trickle", target))
        ratio = p99 / base if p99 is not None and base else None
        f.numbers[f"trickle.{target}.p99_vs_alone"] = ratio
        f.check("interactive p99 under a batch flood"
                + ("" if target == "proxy" else f" via {target}"), ratio,
                f"{fmt_ms(p99, 0)} ms vs {fmt_ms(base, 0)} ms alone ({fmt_num(ratio, '.2f')}x)",
                ratio_limit if target != "fifo" else None, at_most=True,
                target_text=f"<= {ratio_limit:g}x alone" if ratio_limit else "")
    for target in targets_of(runs, "batch"):
        if target in scenario.proxies:
            peak = max((int(r.mock.get("peak") or 0) for r in select_runs(runs, "batch", target)),
                       default=0)
            cap = proxy_cap(scenario, target)
            f.check(f"batch via {target}: peak in flight at the mock", peak, str(peak), cap,
                    at_most=True, target_text=f"<= cap {cap}", hard=True)


def _multihost(scenario: Scenario, runs: Sequence[RunRecord], f: Findings) -> None:
    capacity = median(goodput_of()(r) for r in select_runs(runs, "unloaded", "direct"))
    if capacity is not None:
        f.add("capacity at B (direct, unloaded)", f"{fmt_num(capacity)} req/s")
    for target in targets_of(runs, "overload"):
        sel = select_runs(runs, "overload", target)
        goodput = median(goodput_of()(r) for r in sel)
        f.numbers[f"{target}.goodput_rps"] = goodput
        share = against(runs, "overload", target, "unloaded", "direct", goodput_of())
        f.add(f"{target}: goodput", f"{fmt_num(goodput)} req/s"
              + (f" = {fmt_pct(share)} of capacity" if share is not None else ""))
        p99 = median(stat_of("latency", "p99")(r) for r in sel)
        f.add(f"{target}: latency p99", f"{fmt_ms(p99, 0)} ms")
        if target in scenario.proxies:
            replicas = scenario.proxies[target].replicas
            cap = proxy_cap(scenario, target)
            peak = max((int(r.mock.get("peak") or 0) for r in sel), default=0)
            f.numbers[f"{target}.mock_peak"] = peak
            f.check(f"{target} ({replicas} replicas, one Redis): peak in flight at the mock",
                    peak, str(peak), cap, at_most=True, target_text=f"<= cap {cap}", hard=True)
            lost = sum(lost_requests(r) for r in sel)
            f.check(f"{target}: requests lost", lost, str(lost), 0, at_most=True,
                    target_text="0", hard=True)
