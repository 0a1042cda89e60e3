"""``python -m loadtest adaptive``: adaptive caps against static ones on the GPU-like mock.

Two experiments, every server its own process on loopback ports, 64 closed-loop streaming
clients through the proxy (``--clients``):

- ``batch``: the mock batches B=4, then B=8 from the middle of the run (``slowdown`` 5% per
  request over B: ``thrash = 0.05 * B``). Targets: static cap 4, static cap 8, adaptive with
  ceiling 64. Per phase (after ``--settle`` seconds): goodput, TTFT p99; for adaptive, how long
  after the change its cap first came within one step of 8.
- ``tenant``: the mock batches B=8; from the middle of the run another tenant sends 4
  closed-loop clients straight to the mock (half the engine). Targets: static cap 8, adaptive.
  TTFT p99 before and after: the clients', and the engine's as the mock recorded it, ours
  and the tenant's apart (``loadtest/adaptive_tenant.py``). ``--rate`` makes our load an open
  loop (Poisson arrivals) instead of ``--clients`` closed-loop clients.

- ``llamacpp``: the real llama-server (``-np 2``) behind an adaptive cap, then the capacity
  sweep against it; the two must agree within one step (``loadtest/adaptive_engine.py``).

Every run samples ``/throttle/status`` for the cap over time; a PNG per run plots the cap
beside goodput and TTFT, and a JSON summary holds every figure. Bounded: each run lasts
``2 * --phase`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from loadtest import adaptive_tenant
from loadtest.adaptive_common import (
    before_after,
    cap_sampler,
    ms_cell,
    per_second,
    phase_figures,
    plot,
)
from loadtest.adaptive_tenant import TENANT_MODEL, cap_trace, engine_figures, engine_samples
from loadtest.generator import LoadSpec, RequestRecord, run_load
from loadtest.processes import ServiceGroup
from loadtest.runtime import loop_factory

MOCK = {"ttft_s": 0.02, "tpot_s": 0.005, "output_tokens": 16}
SLOWDOWN_PER_REQUEST = 0.05
#: the unit after each millisecond figure in the summary tables
MS = " ms"


def mock_for(batch: int, engine_queue: bool = False) -> dict[str, Any]:
    """The mock at batch B; ``engine_queue``: it runs at most B at once, the rest wait in its
    own queue (vLLM's max_num_seqs) instead of all slowing down."""
    return {"batch_size": batch, "thrash": SLOWDOWN_PER_REQUEST * batch,
            "max_running": batch if engine_queue else 0}


def proxy_config(cap: int, adaptive: bool, engine_queue: bool = False) -> dict[str, Any]:
    upstream: dict[str, Any] = {"url": "${MOCK_URL}", "max_in_flight": cap}
    if adaptive:
        # with the engine queue the controller also reads vLLM's num_requests_waiting
        upstream.update(adaptive=True, engine="vllm" if engine_queue else "none")
    return {
        "upstreams": {"mock": upstream},
        "models": {"*": {"upstreams": ["mock"]}},
        "queue": {"max_depth": 1000, "max_wait_s": 120},
    }


async def _tenant(mock_url: str, clients: int, until: float) -> list[RequestRecord]:
    """Another tenant's own closed loop straight to the mock (times from its own start)."""
    spec = LoadSpec(base_url=mock_url + "/v1", model=TENANT_MODEL, clients=clients,
                    duration=until, stream=True, max_tokens=16, timeout=120, label="tenant")
    return (await run_load(spec)).records


async def one_run(experiment: str, target: str, cap: int, adaptive: bool,
                  args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    phase = args.phase
    async with ServiceGroup(workdir / f"{experiment}-{target}") as group:
        first_batch = 4 if experiment == "batch" else 8
        queue = args.engine_queue
        mock = await group.start_mock({**MOCK, **mock_for(first_batch, queue)})
        proxy = await group.start_proxy("proxy", proxy_config(cap, adaptive, queue),
                                        {"MOCK_URL": mock.url})
        spec = LoadSpec(base_url=proxy.url + "/v1", clients=args.clients, rate=args.rate,
                        duration=2 * phase, stream=True, max_tokens=16, timeout=120,
                        label=f"{experiment}-{target}")
        caps: list[tuple[float, int | None]] = []
        stop = asyncio.Event()
        seen: dict[str, Any] = {}
        t0, wall0 = time.perf_counter(), time.time()
        sampler = asyncio.create_task(cap_sampler(proxy.url, t0, stop, caps))

        async def change() -> list[RequestRecord]:
            await asyncio.sleep(phase)
            if experiment == "batch":
                async with aiohttp.ClientSession() as session:
                    await session.post(mock.url + "/mock/config", json=mock_for(8, queue))
                return []
            seen["peak_before"] = (await adaptive_tenant.mock_json(mock.url,
                                                                   "/mock/stats"))["peak"]
            return await _tenant(mock.url, 4, phase)

        load_task = asyncio.create_task(run_load(spec))
        changer = asyncio.create_task(change())
        result = await load_task
        tenant = await changer
        stop.set()
        await sampler
        first_tokens = await engine_samples(mock.url)
    records = result.records
    settle = args.settle
    out: dict[str, Any] = {
        "experiment": experiment, "target": target, "cap": cap, "adaptive": adaptive,
        "clients": args.clients, "phase_s": phase, "settle_s": settle,
        "engine_queue": args.engine_queue, "rate": args.rate,
        "before": phase_figures(records, settle, phase),
        "after": phase_figures(records, phase + settle, 2 * phase),
        "lost": sum(1 for r in records if not r.ok),
        "caps": caps,
        "tenant_requests": len(tenant),
        # the other tenant's own view once it runs (its engine TTFT: no proxy in its way)
        "tenant": phase_figures(tenant, settle, phase) if tenant else None,
    }
    if experiment == "tenant":
        out.update(engine_before=engine_figures(first_tokens, wall0, settle, phase),
                   engine_after=engine_figures(first_tokens, wall0, phase + settle, 2 * phase),
                   cap_trace=cap_trace(caps, phase, settle),
                   mock_peak_before=seen.get("peak_before"))
    if adaptive and experiment == "batch":
        reached = next((t for t, c in caps if t >= phase and c is not None and c >= 7), None)
        out["converged_after_s"] = None if reached is None else round(reached - phase, 1)
    out["series"] = per_second(records, 2 * phase)
    return out


RUNS = {
    "batch": (("static4", 4, False), ("static8", 8, False), ("adaptive", 64, True)),
    "tenant": (("static8", 8, False), ("adaptive", 64, True)),
}


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in args.experiments:
            if experiment == "llamacpp":
                from loadtest.adaptive_engine import run_llamacpp
                from loadtest.sweep import plot as sweep_plot

                print(f"llamacpp / adaptive ({2 * args.phase:g}s, then the sweep)", flush=True)
                run = await run_llamacpp(args, Path(tmp))
                plot(run, out_dir / "adaptive-llamacpp-adaptive.png")
                sweep_plot(run["sweep"], out_dir / "sweep-llama-server.png")
                results["llamacpp/adaptive"] = run
                continue
            for target, cap, adaptive in RUNS[experiment]:
                if args.targets and target not in args.targets:
                    continue
                print(f"{experiment} / {target} ({2 * args.phase:g}s)", flush=True)
                run = await one_run(experiment, target, cap, adaptive, args, Path(tmp))
                variant = ("-queue" if args.engine_queue else "") + ("-open" if args.rate else "")
                plot(run, out_dir / f"adaptive-{experiment}{variant}-{target}.png")
                results[f"{experiment}/{target}"] = run
    (out_dir / "adaptive.json").write_text(json.dumps(results, indent=1))
    return results


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if any("before" in run for run in results.values()):
        lines += ["| run | phase | goodput tok/s | TTFT p50 ms | TTFT p99 ms | failed |",
                  "|---|---|---|---|---|---|"]
    for name, run in results.items():
        if "before" not in run:
            continue
        for phase in ("before", "after"):
            f = run[phase]
            lines.append(
                f"| {name} | {phase} | {f['goodput_tokens_per_s']:.0f} | "
                f"{(f['ttft_p50_s'] or 0) * 1000:.0f} | {(f['ttft_p99_s'] or 0) * 1000:.0f} | "
                f"{f['failed']} |")
    tenant_runs = {n: r for n, r in results.items() if r.get("tenant")}
    if tenant_runs:
        lines += ["", ("| run | client TTFT p99 before / after | engine TTFT p50 before / after "
                  "| engine TTFT p99 before / after | other tenant's TTFT p50 / p99 "
                  "| our goodput after |"), "|---|---|---|---|---|---|"]
        for name, run in tenant_runs.items():
            b, a, t = run["before"], run["after"], run["tenant"]
            lines.append(
                f"| {name} | {before_after(b, a, 'ttft_p99_s', MS)} | "
                f"{before_after(b, a, 'engine_ttft_p50_s', MS)} | "
                f"{before_after(b, a, 'engine_ttft_p99_s', MS)} | "
                f"{ms_cell(t['ttft_p50_s'], MS)} / {ms_cell(t['ttft_p99_s'], MS)} | "
                f"{a['goodput_tokens_per_s']:.0f} tok/s |")
    lines += adaptive_tenant.summary_lines(results)
    for name, run in results.items():
        if "converged_after_s" in run:
            lines.append(f"\n{name}: cap within one step of 8 after {run['converged_after_s']}s")
    if "llamacpp/adaptive" in results:
        from loadtest.adaptive_engine import summary_lines as engine_lines

        lines += engine_lines(results["llamacpp/adaptive"])
    return lines


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase", type=float, default=45.0, help="seconds per phase")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds of each phase left out of its figures")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=None,
                        help="our load as an open loop: Poisson arrivals per second "
                             "(default: --clients closed-loop clients)")
    parser.add_argument("--experiments", nargs="+", default=["batch", "tenant"],
                        choices=[*sorted(RUNS), "llamacpp"])
    parser.add_argument("--targets", nargs="+", default=None,
                        choices=sorted({t for runs in RUNS.values() for t, _, _ in runs}),
                        help="run only these targets (default: all of each experiment)")
    parser.add_argument("--engine-clients", type=int, default=6,
                        help="llamacpp: closed-loop clients through the proxy")
    parser.add_argument("--engine-step", type=float, default=10.0,
                        help="llamacpp: seconds per sweep level")
    parser.add_argument("--engine-queue", action="store_true",
                        help="the mock runs at most B at once and queues the rest (as vLLM's "
                             "max_num_seqs), reporting them as waiting; adaptive reads it")
    parser.add_argument("--out", default="loadtest/results/adaptive")


def cli_main(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        results = runner.run(run_all(args))
    print("\n".join(summary_lines(results)))
    return 0
