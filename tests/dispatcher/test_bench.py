"""The companion against the cron wrapper with the real hermes CLI: a short variant of
``python -m loadtest dispatch-bench`` (the full comparison is in docs/dispatcher.md).

Two boards of three tasks, calls of 2 or 6 s, a model cap of 2 and an outside burst at 10 s;
offline in a network namespace (``unshare -rn``) when the machine allows it. The companion runs
with only the watermarks and a ``--max-running`` ceiling, and must: finish everything faster
than the cron wrapper, never run more than the ceiling, and start nothing while the proxy's
queue is at or above the high watermark. Bounded: about two minutes on two cores.
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


def _netns_works() -> bool:
    try:
        done = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"],
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_the_companion_beats_the_cron_wrapper(hermes_exe: str, tmp_path: Path) -> None:
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
    assert cron["done"] == companion["done"] == 6
    assert companion["max_running"] <= CEILING, companion
    assert companion["spawns_at_high"] == 0, companion
    assert companion["makespan_s"] < cron["makespan_s"], results
