"""Plots of ``apo bench`` results (schema ``apo.workflow_benchmark/1``).

Run as::

    python -m apo.report RESULTS.json [BEFORE.json] -o report.png [--threshold 0.1]

One file gives a figure with three panels per workflow: wall time (mean, with the standard
deviation as error bars and the min-max range), peak memory (the engine's ledger peak, and the
process's resident-set growth where it was measured) and judge score. With an earlier file
(BEFORE.json), each panel shows before and after side by side with the change in percent above
each pair; changes worse than the threshold in the metric's direction (time and memory up, judge
score down) are drawn in red, as ``apo bench compare`` flags them.

matplotlib is imported only when plotting (with the Agg backend: no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

SCHEMA = "apo.workflow_benchmark/1"

# metric, panel title, axis label, scale applied to the values
_PANELS = (
    ("wall_seconds", "Wall time per run (new engine, models loaded from disk)", "seconds", 1.0),
    ("peak_memory_bytes", "Peak memory", "MiB", 1.0 / (1 << 20)),
    ("judge_score", "Judge score (higher is better)", "score", 1.0),
)

_BEFORE_COLOUR = "#9aa5b1"
_AFTER_COLOUR = "#3572b0"
_RSS_COLOUR = "#8fbf7f"
_REGRESSION_COLOUR = "#d62728"
_IMPROVEMENT_COLOUR = "#2ca02c"
_RANGE_COLOUR = "#e07b00"


class ReportError(ValueError):
    """A results file that is not what ``apo bench --json`` writes; the message names it."""


def load(path) -> dict:
    """Reads a results file and checks its schema."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: {error}") from error
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ReportError(f"{path}: schema {found!r}, expected {SCHEMA!r}")
    if not isinstance(data.get("workflows"), list):
        raise ReportError(f"{path}: 'workflows' is missing or not a list")
    return data


def _stats(workflow: dict, metric: str):
    return workflow.get("metrics", {}).get(metric)


def _direction(results: dict, metric: str) -> str:
    return results.get("metrics", {}).get(metric, {}).get("better", "neither")


def relative_change(before: float, after: float) -> float:
    """(after - before) / |before|, as ``apo bench compare`` computes it."""
    if before == after:
        return 0.0
    if before == 0:
        return math.inf if after > 0 else -math.inf
    return (after - before) / abs(before)


def verdict(direction: str, change: float, threshold: float, beyond_noise: bool = True) -> str:
    """'regression', 'improvement' or '' for a relative change of a metric of this direction.

    As ``apo bench compare``: a change counts only beyond the threshold and, with
    ``beyond_noise`` false (the difference of the means within the larger standard deviation of
    the two), not at all."""
    worse = {"lower": change, "higher": -change}.get(direction, 0.0)
    if not beyond_noise:
        return ""
    if worse > threshold:
        return "regression"
    if -worse > threshold:
        return "improvement"
    return ""


def _title(results: dict, path) -> str:
    machine = results.get("machine", {})
    cpu = machine.get("cpu", {}).get("model", "unknown CPU")
    devices = machine.get("cuda", {}).get("devices", [])
    where = ", ".join(d.get("name", "GPU") for d in devices) or f"{cpu} (CPU only)"
    config = results.get("config", {})
    return (
        f"apo bench: {pathlib.Path(path).name} - {where}\n"
        f"{config.get('iterations', '?')} run(s) per workflow; {config.get('configuration', '')}"
    )


def _single(ax, results: dict, metric: str, scale: float):
    names = [w["workflow"] for w in results["workflows"]]
    x = list(range(len(names)))
    means, stds, lows, highs = [], [], [], []
    for w in results["workflows"]:
        s = _stats(w, metric)
        means.append(s["mean"] * scale if s else math.nan)
        stds.append(s["std"] * scale if s else 0.0)
        lows.append(s["min"] * scale if s else math.nan)
        highs.append(s["max"] * scale if s else math.nan)
    width = 0.38 if metric == "peak_memory_bytes" else 0.6
    offset = -width / 2 if metric == "peak_memory_bytes" else 0.0
    xs = [i + offset for i in x]
    label = "engine ledger peak" if metric == "peak_memory_bytes" else "mean ± std"
    ax.bar(xs, means, width, yerr=stds, capsize=4, color=_AFTER_COLOUR, label=label)
    if metric == "wall_seconds":
        # Beside the error bar, so that the two ranges stay apart.
        ranges = [xi + width * 0.3 for xi in xs]
        ax.vlines(ranges, lows, highs, colors=_RANGE_COLOUR, linewidth=1.5, zorder=3)
        ax.scatter(ranges + ranges, lows + highs, marker="_", s=80, color=_RANGE_COLOUR, zorder=3,
                   label="min - max")
    if metric == "peak_memory_bytes":
        rss = [_stats(w, "rss_growth_bytes") for w in results["workflows"]]
        if any(rss):
            ax.bar([i + width / 2 for i in x], [s["mean"] * scale if s else math.nan for s in rss],
                   width, yerr=[s["std"] * scale if s else 0.0 for s in rss], capsize=4,
                   color=_RSS_COLOUR, label="process RSS growth")
    if metric == "judge_score":
        ax.set_ylim(0, 1.05)
    for xi, mean, std, high in zip(xs, means, stds, highs):
        if not math.isnan(mean):
            top = max(mean + std, high if metric == "wall_seconds" else mean)
            ax.annotate(f"{mean:.3g}", (xi, top), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=8)
    if metric != "judge_score":
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # room for the annotations
    _legend(ax)
    return names


def _paired(ax, before: dict, after: dict, metric: str, scale: float, threshold: float):
    names = [w["workflow"] for w in after["workflows"]
             if any(b["workflow"] == w["workflow"] for b in before["workflows"])]
    by_name_before = {w["workflow"]: w for w in before["workflows"]}
    by_name_after = {w["workflow"]: w for w in after["workflows"]}
    direction = _direction(after, metric) or _direction(before, metric)
    width = 0.38
    regressions = 0
    for i, name in enumerate(names):
        b = _stats(by_name_before[name], metric)
        a = _stats(by_name_after[name], metric)
        if b:
            ax.bar(i - width / 2, b["mean"] * scale, width, yerr=b["std"] * scale, capsize=3,
                   color=_BEFORE_COLOUR)
        if not a:
            continue
        change = relative_change(b["mean"], a["mean"]) if b else math.nan
        beyond_noise = b and abs(a["mean"] - b["mean"]) > max(a["std"], b["std"])
        kind = verdict(direction, change, threshold, beyond_noise) if b else ""
        colour = _REGRESSION_COLOUR if kind == "regression" else _AFTER_COLOUR
        ax.bar(i + width / 2, a["mean"] * scale, width, yerr=a["std"] * scale, capsize=3,
               color=colour, edgecolor="black" if kind == "regression" else colour,
               hatch="//" if kind == "regression" else None)
        if b:
            regressions += kind == "regression"
            top = max(b["mean"] + b["std"], a["mean"] + a["std"]) * scale
            text = f"{100 * change:+.1f}%" if math.isfinite(change) else "new"
            text_colour = {"regression": _REGRESSION_COLOUR,
                           "improvement": _IMPROVEMENT_COLOUR}.get(kind, "black")
            ax.annotate(text, (i, top), textcoords="offset points", xytext=(0, 4), ha="center",
                        fontsize=8, color=text_colour,
                        fontweight="bold" if kind == "regression" else "normal")
    if metric == "judge_score":
        ax.set_ylim(0, 1.15)
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the annotations
    from matplotlib.patches import Patch

    _legend(ax, [Patch(color=_BEFORE_COLOUR, label="before"),
                 Patch(color=_AFTER_COLOUR, label="after"),
                 Patch(facecolor=_REGRESSION_COLOUR, edgecolor="black", hatch="//",
                       label=f"after, > {100 * threshold:.0f}% worse")])
    return names, regressions


def _legend(ax, handles=None):
    # Above the panel, right of its title: inside it would hide bars or annotations.
    ax.legend(handles=handles, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0),
              ncol=3, frameon=False, borderaxespad=0.2)


def plot(results_path, output_path, before_path=None, threshold: float = 0.1) -> int:
    """Writes the figure for ``results_path`` (compared with ``before_path`` when given) to
    ``output_path``; returns the number of regressions drawn (0 without a before file)."""
    if threshold < 0:
        raise ReportError(f"threshold {threshold}: expected a fraction of 0 or more (0.1 is 10%)")
    results = load(results_path)
    before = load(before_path) if before_path else None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(len(results["workflows"]), 1)
    fig, axes = plt.subplots(len(_PANELS), 1, figsize=(max(9.0, 1.3 * count + 3), 11),
                             constrained_layout=True)
    regressions = 0
    for ax, (metric, title, unit, scale) in zip(axes, _PANELS):
        if before is None:
            names = _single(ax, results, metric, scale)
        else:
            names, found = _paired(ax, before, results, metric, scale, threshold)
            regressions += found
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(unit)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    suptitle = _title(results, results_path)
    if before is not None:
        suptitle += f"\ncompared with {pathlib.Path(before_path).name}: {regressions} regression(s)"
    fig.suptitle(suptitle, fontsize=10)
    fig.savefig(output_path, dpi=110)
    plt.close(fig)
    return regressions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apo.report",
                                     description="Plot apo bench results (and compare two).")
    parser.add_argument("results", help="results of apo bench --json")
    parser.add_argument("before", nargs="?", help="earlier results to compare against")
    parser.add_argument("-o", "--output", default="report.png", help="the PNG to write")
    parser.add_argument("--threshold", type=float, default=0.1,
                        help="relative change that counts as a regression (0.1: 10%%)")
    args = parser.parse_args(argv)
    try:
        regressions = plot(args.results, args.output, args.before, args.threshold)
    except ReportError as error:
        print(f"apo.report: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"apo.report: matplotlib is needed to plot ({error})", file=sys.stderr)
        return 2
    print(f"wrote {args.output}" + (f" ({regressions} regression(s))" if args.before else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
