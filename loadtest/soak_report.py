"""The soak's outputs: ``soak.json``, ``soak.md``, the RSS plot and the Soak section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from loadtest.soak_result import SoakResult


def write_plot(result: SoakResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in result.samples if s.get("rss_kib")]
    minutes = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.plot(minutes, [s["rss_kib"] / 1024 for s in samples], color="tab:blue")
    top.set_ylabel("proxy RSS (MiB)")
    top.set_ylim(0, max((s["rss_kib"] / 1024 for s in samples), default=1) * 1.15)
    top.grid(alpha=0.3)
    top.set_title(f"llm-throttle soak: {result.spec['rate']:g} req/s for "
                  f"{result.spec['minutes']:g} min, store={result.spec['store']}")
    bottom.plot(minutes, [s.get("in_flight") or 0 for s in samples], label="in flight")
    bottom.plot(minutes, [s.get("queue_depth") or 0 for s in samples], label="queued")
    bottom.plot(minutes, [s.get("fds") or 0 for s in samples], label="open fds", alpha=0.6)
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right", fontsize="small")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fds_and_cpu(result: SoakResult) -> str:
    fds = [s["fds"] for s in result.samples if "fds" in s]
    cpu = result.samples[-1].get("cpu_s", 0.0) if result.samples else 0.0
    share = cpu / result.elapsed_s * 100 if result.elapsed_s else 0.0
    fd_text = f"start {fds[0]}, end {fds[-1]}, max {max(fds)}" if fds else "not sampled"
    return (f"- Proxy open file descriptors: {fd_text}; proxy CPU {cpu:.0f} s "
            f"({share:.1f}% of one core)")


def markdown_summary(result: SoakResult) -> str:
    rss = result.rss_mib()
    spec, m = result.spec, result.machine
    dirty = " (proxy/ modified)" if m["dirty"] else ""
    load = (f"- Load: {result.requests} requests in {result.elapsed_s / 60:.1f} min "
            f"({spec['rate']:g} req/s open loop, Poisson), store `{spec['store']}`, model cap "
            f"{spec['max_in_flight']}, upstream read timeout "
            f"{spec['upstream_read_timeout_s']:g} s; arrivals skipped (client side at "
            f"{spec['max_open']} open): {result.skipped_arrivals}")
    held = f" ({result.outstanding})" if result.outstanding else ""
    unexpected = "".join(f"\n  - {cause}: {n}" for cause, n in result.unexpected.items())
    tracebacks = "".join(f"\n  - `{what}`: {n}" for what, n in result.proxy_log_errors.items())
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        + f"commit {m['commit']}{dirty}.",
        "",
        load,
        f"- Proxy RSS: start {rss['start']} MiB, end {rss['end']} MiB, max {rss['max']} MiB",
        _fds_and_cpu(result),
        f"- Permits outstanding after drain: {result.permits_outstanding:g}{held}",
        f"- Upstream requests still active after drain: {result.upstream_in_flight_after}",
        f"- Unexpected outcomes: {sum(result.unexpected.values())}{unexpected}",
        f"- Tracebacks in the proxy log: {sum(result.proxy_log_errors.values())}{tracebacks}",
        f"- Proxy exit code after SIGTERM: {result.proxy_exit_code}",
        "",
        "| cause | requests |",
        "|---|---:|",
    ]
    lines += [f"| {cause} | {n} |" for cause, n in result.by_cause.items()]
    lines += ["", "| request kind | outcomes |", "|---|---|"]
    for kind, causes in result.by_kind.items():
        lines.append(f"| {kind} | " + ", ".join(f"{c}: {n}" for c, n in causes.items()) + " |")
    return "\n".join(lines) + "\n"


def command_line(spec: dict[str, Any]) -> str:
    """The command that runs ``spec`` (its output folder relative to here when inside)."""
    out = Path(spec["out"])
    try:
        out = out.relative_to(Path.cwd())
    except ValueError:
        pass
    store = "" if spec["store"] == "memory" else f" --store {spec['store']}"
    return (f"python -m loadtest soak --minutes {spec['minutes']:g} --rate {spec['rate']:g}"
            f"{store} --out {out}")


def report_section(result: SoakResult, image: str) -> str:
    """The page section: what runs, the exact command, the figures, the RSS plot."""
    spec = result.spec
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.started_at))
    return "\n".join([
        "## Soak",
        "",
        (f"{spec['minutes']:g} minutes of mixed open-loop load through `llm-throttle serve` in "
         f"front of the mock LLM (both subprocesses): plain and streamed chat calls, clients "
         f"that leave while queued or mid-stream, upstream faults (die mid-stream, hang past a "
         f"{spec['upstream_read_timeout_s']:g} s upstream read timeout, 429, 503) and a share "
         f"of bad input (invalid JSON, wrong types, unknown model, bad key, a body over the "
         f"limit). The proxy's RSS, open descriptors and `/throttle/status` are sampled every "
         f"{spec['sample_interval_s']:g} s; after the load the proxy drains and every permit "
         f"must be back. An outcome outside what its request kind allows is *unexpected*."),
        "",
        f"Command (run {started}; not part of CI):",
        "",
        "```",
        command_line(spec),
        "```",
        "",
        markdown_summary(result).rstrip(),
        "",
        f"![proxy RSS, in flight, queue and open descriptors over the soak]({image})",
    ]) + "\n"


def write_report(result: SoakResult, page: Path, png: Path) -> Path:
    """Copy the plot to ``img/`` beside ``page`` and splice the soak section into it."""
    from loadtest.analysis import splice  # the page's section markers, shared with scenarios

    img = page.parent / "img" / "soak-rss.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(png.read_bytes())
    section = report_section(result, str(img.relative_to(page.parent)))
    page_text = page.read_text() if page.exists() else "# Benchmarks\n"  # read just before
    page.write_text(splice(page_text, "soak", section))
    return page


def write_outputs(result: SoakResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "soak.json"
    json_path.write_text(json.dumps(result.to_json(), indent=1))
    md_path = out / "soak.md"
    md_path.write_text(markdown_summary(result))
    return [json_path, md_path, write_plot(result, out / "soak-rss.png")]
