"""Markdown summary and PNG plots from load-test result files (``python -m loadtest report``).

Several runs (e.g. direct to the upstream vs through the proxy) are overlaid on each plot, so
one command produces the figures a benchmark page needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read result JSONs; each gets a ``label`` (its own, else the file stem)."""
    results = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        data["label"] = data.get("label") or Path(path).stem
        results.append(data)
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _peak(series: Sequence[dict[str, Any]], key: str) -> str:
    values = [p[key] for p in series if p.get(key) is not None]
    return f"{max(values):g}" if values else "-"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per run: counts, throughput, goodput, latency/TTFT percentiles, peaks."""
    header = (
        "| run | mode | requests | ok | errors | req/s | ok req/s | tok/s "
        "| p50 ms | p90 ms | p99 ms | max ms | TTFT p50 ms | TTFT p99 ms "
        "| peak upstream in flight | peak queue |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    for r in results:
        s, spec = r["summary"], r.get("spec", {})
        mode = spec.get("mode", "")
        if mode == "open":
            mode = f"open {spec.get('rate')}/s"
        elif mode == "closed":
            mode = f"closed x{spec.get('clients')}"
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "0"
        lat, ttft = s["latency"], s["ttft"]
        series = r.get("series", [])
        lines.append(
            f"| {r['label']} | {mode} | {s['count']} | {s['ok']} | {errors} "
            f"| {s['throughput_rps']:.1f} | {s['goodput_rps']:.1f} "
            f"| {s['goodput_tokens_per_s']:.0f} | {_ms(lat['p50'])} | {_ms(lat['p90'])} "
            f"| {_ms(lat['p99'])} | {_ms(lat['max'])} | {_ms(ttft['p50'])} | {_ms(ttft['p99'])} "
            f"| {_peak(series, 'upstream_in_flight')} | {_peak(series, 'queue_depth')} |"
        )
    return "\n".join(lines) + "\n"


def _throughput_series(result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Successful completions per second, binned by completion time."""
    ends = sorted(r["start"] + r["latency"] for r in result["records"] if r["ok"])
    if not ends:
        return [], []
    width = max(0.5, ends[-1] / 60)
    bins = [0] * (int(ends[-1] / width) + 1)
    for t in ends:
        bins[int(t / width)] += 1
    return [(i + 0.5) * width for i in range(len(bins))], [n / width for n in bins]


def write_plots(results: Sequence[dict[str, Any]], out_prefix: str | Path) -> list[Path]:
    """PNG plots next to ``out_prefix``; a plot with no data in any run is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = prefix.with_name(f"{prefix.name}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        lat = sorted(rec["latency"] for rec in r["records"] if rec["ok"])
        if lat:
            ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=r["label"])
    ax.set(xlabel="latency (s)", ylabel="fraction of successful requests",
           title="Latency CDF")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "latency-cdf")

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs, ys = _throughput_series(r)
        ax.plot(xs, ys, label=r["label"])
    ax.set(xlabel="time (s)", ylabel="successful requests / s", title="Throughput over time")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "throughput")

    for key, ylabel, title, name in (
        ("upstream_in_flight", "requests", "In flight at the upstream", "upstream-in-flight"),
        ("queue_depth", "requests", "Proxy queue depth", "queue-depth"),
    ):
        plotted = False
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in results:
            points = [(p["t"], p[key]) for p in r.get("series", []) if p.get(key) is not None]
            if points:
                ax.step([t for t, _ in points], [v for _, v in points], where="post",
                        label=r["label"])
                plotted = True
        if plotted:
            ax.set(xlabel="time (s)", ylabel=ylabel, title=title)
            ax.grid(alpha=0.3)
            ax.legend()
            save(fig, name)
        else:
            plt.close(fig)
    return written


def write_report(paths: Sequence[str | Path], out_prefix: str | Path) -> tuple[Path, list[Path]]:
    """Markdown (``<prefix>.md``, plots linked) and PNGs; returns what was written."""
    results = load_results(paths)
    pngs = write_plots(results, out_prefix)
    prefix = Path(out_prefix)
    md = prefix.with_name(prefix.name + ".md")
    body = markdown_table(results) + "\n" + "".join(
        f"![{p.stem}]({p.name})\n" for p in pngs
    )
    md.write_text(body)
    return md, pngs


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="result JSON files from `loadtest run`")
    parser.add_argument("--out", required=True,
                        help="output prefix, e.g. docs/img/name -> name.md, name-*.png")


def cli_main(args: argparse.Namespace) -> int:
    md, pngs = write_report(args.results, args.out)
    sys.stdout.write(md.read_text())
    for p in [md, *pngs]:
        print(f"wrote {p}", file=sys.stderr)
    return 0
