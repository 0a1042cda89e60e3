"""Key numbers of a scenario's runs, checked against its targets, as a Markdown section.

The entry points the scenario runner and the soak report use, gathered from the modules that
do the work, one job each:

- ``run_stats``: medians over repeats, ratios within each repeat, the proxy's cap;
- ``findings``: the key-number table (rows with a verdict, hard failures) and its formatting;
- ``verdicts``: what each kind of scenario (``analysis:`` in its file) checks;
- ``provenance``: the code's commit and the machine the numbers came from;
- ``report_section``: the Markdown section, its plots, and splicing it into a page.
"""

from __future__ import annotations

from loadtest.findings import INFO, MISS, PASS, Findings
from loadtest.provenance import code_version, machine_info, machine_section
from loadtest.report_section import render_section, splice, write_section
from loadtest.run_stats import median, proxy_cap, server_cpu_ms
from loadtest.verdicts import analyze, required_phases

__all__ = [
    "INFO",
    "MISS",
    "PASS",
    "Findings",
    "analyze",
    "code_version",
    "machine_info",
    "machine_section",
    "median",
    "proxy_cap",
    "render_section",
    "required_phases",
    "server_cpu_ms",
    "splice",
    "write_section",
]
