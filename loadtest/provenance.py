"""Where a scenario's numbers were measured: the code's commit and the machine."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path


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
