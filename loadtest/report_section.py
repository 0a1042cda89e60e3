"""A scenario's results as a Markdown section of a page (``docs/benchmarks.md``).

A section sits between ``<!-- loadtest:NAME begin/end -->`` markers, so re-running one
scenario replaces only its own section of a page and leaves the rest (hand-written sections
included) alone.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from loadtest.findings import Findings, fmt_ms, fmt_num, fmt_pct
from loadtest.provenance import code_version, machine_info, machine_section
from loadtest.run_stats import (
    goodput_of,
    load_summary,
    median,
    per_repeat,
    ratio_of,
    select_runs,
    server_cpu_ms,
    stat_of,
    targets_of,
)
from loadtest.scenario_model import RunRecord, Scenario, ScenarioResult
from loadtest.verdicts import analyze


def _comparison_table(scenario: Scenario, runs: Sequence[RunRecord], phase: str) -> str:
    """Medians per target (and load) of one phase."""
    header = ("| target | load | req/s | vs direct | latency p50 / p99 ms | TTFT p50 / p99 ms "
              "| server CPU ms/req | mock peak | lost | other load (cores) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for target in targets_of(runs, phase):
        sel = select_runs(runs, phase, target)
        for load in sel[0].loads:
            ratio = (None if target == "direct" else
                     per_repeat(runs, phase, target, "direct", goodput_of(load), ratio_of))
            cpu = median(server_cpu_ms(r) for r in sel)
            peak = max(int(r.mock.get("peak") or 0) for r in sel)
            lost = sum(int(load_summary(r, load)["count"]) - int(load_summary(r, load)["ok"])
                       for r in sel)
            others = median(r.foreign_cpu_s / r.wall_s for r in sel
                            if r.foreign_cpu_s is not None and r.wall_s)
            lines.append(
                f"| {target} | {load} | {fmt_num(median(goodput_of(load)(r) for r in sel))} "
                f"| {fmt_pct(ratio) if ratio is not None else '-'} "
                f"| {fmt_ms(median(stat_of('latency', 'p50', load)(r) for r in sel))} / "
                f"{fmt_ms(median(stat_of('latency', 'p99', load)(r) for r in sel))} "
                f"| {fmt_ms(median(stat_of('ttft', 'p50', load)(r) for r in sel))} / "
                f"{fmt_ms(median(stat_of('ttft', 'p99', load)(r) for r in sel))} "
                f"| {fmt_num(cpu, '.3f')} | {peak} "
                f"| {lost} "
                f"| {fmt_num(others, '.2f')} |")
    return "\n".join(lines) + "\n"


def _describe_phase(scenario: Scenario, phase_name: str) -> str:
    phase = next(p for p in scenario.phases if p.name == phase_name)
    parts = []
    for lname, load in phase.loads.items():
        mode = f"open loop {load['rate']}/s" if load.get("rate") else \
            f"closed loop, {load.get('clients', 4)} clients"
        bound = ", ".join(f"{k} {load[k]}" for k in ("duration", "requests") if load.get(k))
        stream = "streamed" if load.get("stream", True) else "not streamed"
        who = f"{lname}: " if len(phase.loads) > 1 else ""
        parts.append(f"{who}{mode}, {bound}, {stream}, max_tokens {load.get('max_tokens', 16)}")
    mock = {**scenario.mock, **phase.mock}
    text = "; ".join(parts)
    if phase.mock:
        text += "; mock " + ", ".join(f"{k}={v}" for k, v in phase.mock.items())
    if phase.description:
        text = phase.description.strip() + " (" + text + ")"
    del mock
    return text


def render_section(result: ScenarioResult, findings: Findings, command: str,
                   images: dict[str, list[Path]], page_dir: Path | None) -> str:
    scenario, runs = result.scenario, result.runs
    when = result.when or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = result.command or command
    mock = ", ".join(f"{k}={v}" for k, v in scenario.mock.items())
    lines = [f"## {scenario.title}", ""]
    if scenario.description:
        lines += [scenario.description, ""]
    lines += [
        f"Command (run {when}{', SMOKE: numbers not meaningful' if result.smoke else ''}):",
        "", "```", command, "```", "",
        (f"Code at commit `{result.code or code_version()}`. "
         f"Scenario file `{_display_path(scenario.path)}`; mock: {mock}; "
         f"{scenario.repeat} repeat(s), targets interleaved, medians shown."), "",
        "| what | measured | target | |", "|---|---|---|---|",
    ]
    lines += [f"| {w} | {m} | {t} | {v} |" for w, m, t, v in findings.rows]
    lines.append("")
    for note in [*result.notes, *findings.notes]:
        lines += [f"> {note}", ""]
    for phase in scenario.phases:
        if not select_runs(runs, phase.name):
            continue
        lines += [f"**Phase `{phase.name}`**: {_describe_phase(scenario, phase.name)}.", "",
                  _comparison_table(scenario, runs, phase.name)]
        for png in images.get(phase.name, []):
            rel = os.path.relpath(png, page_dir) if page_dir else str(png)
            lines.append(f"![{png.stem}]({rel})")
        if images.get(phase.name):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def splice(page: str, name: str, section: str) -> str:
    """Replace the marked section ``name`` in ``page`` (appended when absent)."""
    begin, end = f"<!-- loadtest:{name} begin -->", f"<!-- loadtest:{name} end -->"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(page):
        return pattern.sub(lambda _: block, page, count=1)
    return page.rstrip() + "\n\n" + block + "\n"


def _plots(result: ScenarioResult, img_dir: Path) -> dict[str, list[Path]]:
    """Latency CDF, throughput, upstream in flight and queue depth per phase (repeat 1)."""
    from loadtest.report import write_plots

    out: dict[str, list[Path]] = {}
    for phase in result.scenario.phases:
        docs = []
        for run in select_runs(result.runs, phase.name):
            if run.repeat != 1:
                continue
            for path in run.files.values():
                doc = json.loads(Path(path).read_text())
                doc["label"] = doc.get("label") or Path(path).stem
                docs.append(doc)
        if docs:
            out[phase.name] = write_plots(docs, img_dir / f"{result.scenario.name}-{phase.name}")
    return out


def write_section(result: ScenarioResult, command: str, img_dir: Path,
                  page: Path | None) -> tuple[str, list[str]]:
    """Analyze, plot and write the section (to OUT/report.md, and into ``page`` if given).

    Returns the section and the hard checks that failed.
    """
    findings = analyze(result)
    images = _plots(result, img_dir)
    page_dir = page.parent if page is not None else result.out_dir
    section = render_section(result, findings, command, images, page_dir)
    (result.out_dir / "report.md").write_text(section)
    (result.out_dir / "numbers.json").write_text(json.dumps(
        {"numbers": findings.numbers, "failed": findings.failed}, indent=1))
    if page is not None:
        text = page.read_text() if page.exists() else "# Benchmarks\n"
        text = splice(text, "machine", machine_section(machine_info()))
        page.write_text(splice(text, result.scenario.name, section))
    return section, findings.failed
