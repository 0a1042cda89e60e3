"""The companion against the cron wrapper with the real hermes CLI: a short variant of
``python -m loadtest dispatch-bench`` (the full comparison is in docs/dispatcher.md).

Two boards of three tasks, calls of 2 or 6 s, a model cap of 2 and an outside burst at 10 s;
offline in a network namespace (``unshare -rn``) when the machine allows it. The companion runs
with only the watermarks and a ``--max-running`` ceiling.

What holds whatever the machine's load, asserted strictly: every task done, never more than
the ceiling running, nothing started while the proxy's queue is at or above the high
watermark. What is compared with the cron wrapper, on measures a slow machine moves for both
modes alike: the GPU idle while tasks were ready after the first request (the companion fills
a freed slot within a second, the wrapper at its next 15 s tick; 0-1 s against 4-5 s on a quiet
machine), and the makespan within 10% (the companion's 30.5-35 s against 38.6-39.3 s on a quiet
machine; on a loaded two-core machine worker start-ups vary by seconds, and the strict win
this test asked for before failed in one run of three there).
Bounded: about a minute and a half on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.hermes]

REPO = Path(__file__).resolve().parents[2]
CEILING = 4
#: the companion's makespan may exceed the wrapper's by this factor (see the module docstring)
MAKESPAN_MARGIN = 1.1


def _netns_works() -> bool:
    try:
        done = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"],
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_the_companion_keeps_the_gpu_busier_than_the_cron_wrapper(hermes_exe: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "loadtest", "dispatch-bench",
            "--boards", "2", "--tasks", "3", "--short", "2", "--long", "6",
            "--cap", "2", "--burst", "4", "--burst-at", "10", "--burst-seconds", "3",
            "--high-watermark", "3", "--low-watermark", "1", "--cron-every", "15",
            "--cron-parallel", "2", "--dispatch-args", f"--max-running {CEILING}",
            "--hermes", hermes_exe, "--timeout", "150", "--workdir", str(tmp_path / "w"),
            "--out", str(out)]
    if _netns_works():
        argv.append("--netns")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=480, env=env,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    cron, companion = results["cron"], results["dispatch"]
    summary = {mode: {k: r[k] for k in ("makespan_s", "idle_after_first_request_s",
                                          "spawns_at_high", "spawns_crossing_high",
                                          "max_running", "done")}
               for mode, r in results.items()}
    assert cron["done"] == companion["done"] == 6, summary
    assert companion["max_running"] <= CEILING, summary
    assert companion["spawns_at_high"] == 0, summary
    assert companion["idle_after_first_request_s"] < cron["idle_after_first_request_s"], summary
    assert companion["makespan_s"] <= MAKESPAN_MARGIN * cron["makespan_s"], summary
