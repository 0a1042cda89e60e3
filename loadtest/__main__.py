"""``python -m loadtest <subcommand>``: mock upstream, load generator, reports.

Each subcommand lives in its own module exposing ``configure_parser(parser)`` and
``cli_main(args) -> int``; adding one is a single line in :func:`_subcommands`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def _subcommands() -> tuple[tuple[str, str, str], ...]:
    """(name, module, help); modules are imported only when their subcommand runs."""
    return (
        ("mock-llm", "loadtest.mock_llm", "run the GPU-like OpenAI-compatible mock server"),
        ("run", "loadtest.generator", "send load to an OpenAI-compatible endpoint"),
        ("report", "loadtest.report", "summarise result files as Markdown and PNG plots"),
        ("scenario", "loadtest.scenario", "run benchmark scenario files (servers + load phases)"),
        ("demo", "loadtest.demo", "start a mock LLM and the proxy, overload it, watch the cap"),
        ("passthrough", "loadtest.passthrough",
         "a minimal aiohttp reverse proxy (a reference for overhead benchmarks)"),
        ("soak", "loadtest.soak", "bounded soak: mixed load and faults, RSS and leaked permits"),
        ("chaos", "loadtest.chaos", "Redis chaos soak: 3 hosts, one Redis, a random fault each period"),
        ("sweep", "loadtest.sweep", "step concurrency against an engine, find its knee"),
        ("adaptive", "loadtest.adaptive", "adaptive caps vs static caps on the mock (benchmark)"),
        ("dispatch-bench", "loadtest.dispatch_bench",
         "llm-throttle dispatch against a cron wrapper, with real hermes workers"),
        ("cpu-compare", "loadtest.cpu_compare",
         "CPU per request of two proxy source trees, in the same run"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv else None
    modules = {}
    for name, module_name, help_text in _subcommands():
        sub_parser = sub.add_parser(name, help=help_text)
        # Import lazily: the mock must start fast and without matplotlib.
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure_parser(sub_parser)
            modules[name] = module
    args = parser.parse_args(argv)
    code: int = modules[args.command].cli_main(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
