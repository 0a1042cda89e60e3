"""Running Prometheus' ``promtool`` (Debian package ``prometheus``) from the tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def promtool_or_skip() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (apt-get install prometheus; scripts/install.sh does)")
    return found


def run_promtool(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Exit code and combined output of ``promtool ARGS`` (bounded: 60 s)."""
    result = subprocess.run([promtool_or_skip(), *args], input=stdin, capture_output=True,
                            text=True, timeout=60, check=False)
    return result.returncode, result.stdout + result.stderr
