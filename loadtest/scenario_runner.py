"""Scenario files that name a benchmark runner instead of load phases.

Some benchmarks change the world mid-run (the adaptive one changes the mock's batch size and
starts a second tenant straight to the mock, while it samples the proxy's cap), which load
phases cannot express. Such a file names its runner and the runner's arguments, so that
``python -m loadtest scenario adaptive`` runs ``python -m loadtest adaptive`` with them::

    name: adaptive
    runner: adaptive                # a key of RUNNERS
    args: {phase: 25, clients: 64}  # the runner's command-line options, by dest name
    smoke_args: {phase: 2}          # overrides under --smoke

``--out OUT`` becomes the runner's ``--out OUT/<name>``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.yamlfile import YamlProblems, load_yaml

#: runner name -> module with ``configure_parser`` and ``cli_main``
RUNNERS = {"adaptive": "loadtest.adaptive"}
_KEYS = {"name", "title", "description", "runner", "args", "smoke_args"}


class RunnerFileError(ValueError):
    pass


def read_runner_file(path: Path) -> dict[str, Any] | None:
    """The file's mapping when it names a runner; None for a phase scenario (or unreadable:
    the phase reader reports that)."""
    try:
        data = load_yaml(path.read_text())
    except (OSError, YamlProblems):
        return None
    if not isinstance(data, Mapping) or "runner" not in data:
        return None
    return dict(data)


def runner_args(data: Mapping[str, Any], path: Path, out: Path,
                smoke: bool) -> tuple[str, argparse.Namespace]:
    """The runner's module and its parsed arguments; RunnerFileError lists what is wrong."""
    problems = [f"{key}: unknown key" for key in data if key not in _KEYS]
    runner = data.get("runner")
    if runner not in RUNNERS:
        problems.append(f"runner: must be one of {', '.join(RUNNERS)}, got {runner!r}")
        raise RunnerFileError(f"{path}: " + "; ".join(problems))
    module = importlib.import_module(RUNNERS[runner])
    parser = argparse.ArgumentParser(prog=f"loadtest {runner}")
    module.configure_parser(parser)
    args = parser.parse_args([])
    values = dict(data.get("args") or {})
    if smoke:
        values.update(data.get("smoke_args") or {})
    for key, value in values.items():
        if not hasattr(args, key):
            problems.append(f"args.{key}: not an option of {runner}")
        else:
            setattr(args, key, value)
    if problems:
        raise RunnerFileError(f"{path}: " + "; ".join(problems))
    args.out = str(out / str(data.get("name") or path.stem))
    return RUNNERS[runner], args


def run_runner_file(data: Mapping[str, Any], path: Path, out: Path, smoke: bool) -> int:
    name, args = runner_args(data, path, out, smoke)
    return int(importlib.import_module(name).cli_main(args))
