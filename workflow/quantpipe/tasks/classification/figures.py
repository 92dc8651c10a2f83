"""The five figures of a classification summary: accuracy against throughput with its Pareto
front, the INT8 accuracy delta against calibration size, speedup and size side by side, batch-1
latency per configuration, and the batch-size curve."""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from quantpipe.reporting.aggregate import distinct, same_or_both_missing
from quantpipe.reporting.document import model_label, variant_label
from quantpipe.reporting.figures import (
    GRAYS,
    LINES,
    MARKERS,
    add_footer,
    new_figure,
    plain_log_axis,
)
from quantpipe.reporting.node_classes import GPU_CLASS
from quantpipe.reporting.stats import ALPHA, pareto_front
from quantpipe.tasks.classification.summary import CONFIGURATION


def _half_width(row, metric: str, scale: float = 1.0):
    low, high = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    return None if pd.isna(low) else (high - low) / 2 * scale


def _labelling(summary: pd.DataFrame) -> dict:
    """variant_label's options for this summary: the model where it has several, the node class
    where it has several CPU classes."""
    cpu_classes = summary.loc[summary["node_class"] != GPU_CLASS, "node_class"].nunique()
    return {
        "with_model": len(summary[["model", "width"]].drop_duplicates()) > 1,
        "with_class": cpu_classes > 1,
    }


def _not_measured_handles(ax, summary: pd.DataFrame) -> None:
    """Unmeasured configurations stay visible: a legend entry with the reason, never a 0."""
    labelling = _labelling(summary)
    for _, row in summary[summary["status"] != "ok"].iterrows():
        reason = f"not measured ({row['reason']})"
        ax.plot([], [], " ", label=f"{variant_label(row, **labelling)}: {reason}")


def plot_accuracy_vs_throughput(summary: pd.DataFrame) -> Figure:
    figure = new_figure(9, 5)
    ax = figure.add_subplot()
    measured = summary[summary["status"] == "ok"].reset_index(drop=True)
    labelling = _labelling(summary)
    for i, row in measured.iterrows():
        int8 = row["variant"] == "int8-cpu"
        ax.errorbar(
            row["images_per_s_mean"],
            row["accuracy_mean"] * 100,
            xerr=_half_width(row, "images_per_s"),
            yerr=_half_width(row, "accuracy", 100),
            fmt=MARKERS[i % len(MARKERS)],
            color=GRAYS[i % len(GRAYS)],
            markersize=7,
            markerfacecolor="white" if int8 else GRAYS[i % len(GRAYS)],
            capsize=3,
            label=variant_label(row, **labelling),
        )
    if len(measured):
        front = pareto_front(
            measured["images_per_s_mean"].tolist(), measured["accuracy_mean"].tolist()
        )
        ax.plot(
            measured.loc[front, "images_per_s_mean"],
            measured.loc[front, "accuracy_mean"] * 100,
            linestyle="--",
            color="0.5",
            marker="o",
            markersize=16,
            markerfacecolor="none",
            zorder=0,
            label="Pareto front (nothing both faster and more accurate)",
        )
    _not_measured_handles(ax, summary)
    batch = distinct(measured["batch_size"]) or "—"
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel(f"throughput over the test set, batch {batch} (images/s, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs throughput (error bars: 95% CI over seeds)")
    ax.grid(True, which="both", color="0.9")
    # Measured configurations first, then the front and what was not measured.
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(
        range(len(labels)),
        key=lambda i: labels[i].startswith("Pareto") or "not measured" in labels[i],
    )
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=8,
        frameon=False,
    )
    return figure


def plot_accuracy_delta_vs_calibration(summary: pd.DataFrame) -> Figure:
    figure = new_figure(8, 5)
    ax = figure.add_subplot()
    int8 = summary[(summary["variant"] == "int8-cpu") & (summary["status"] == "ok")]
    labelling = _labelling(summary)
    lines = int8.groupby(
        ["node_class", "model", "width", "method", "calibration_method"], dropna=False, sort=True
    )
    for i, ((node_class, model, width, method, calibration), group) in enumerate(lines):
        method = f"{method} {calibration}".strip()
        group = group.sort_values("calibration_size")
        sizes, deltas = group["calibration_size"], group["accuracy_delta_mean"] * 100
        errors = [_half_width(row, "accuracy_delta", 100) or 0 for _, row in group.iterrows()]
        label = f"{model_label(model, width)}: {method}" if labelling["with_model"] else method
        label = f"{node_class}: {label}" if labelling["with_class"] else label
        ax.errorbar(
            sizes,
            deltas,
            yerr=errors,
            color=GRAYS[i % len(GRAYS)],
            linestyle=LINES[i % len(LINES)],
            marker=MARKERS[i % len(MARKERS)],
            markerfacecolor="white",
            markersize=8,
            capsize=3,
            label=label,
        )
        significant = group["mcnemar_p"] < ALPHA
        ax.plot(
            sizes[significant],
            deltas[significant],
            linestyle="none",
            marker=MARKERS[i % len(MARKERS)],
            markersize=8,
            color=GRAYS[i % len(GRAYS)],
            zorder=3,  # over the open marker that errorbar draws
        )
    ax.plot([], [], "o", color="black", label=f"filled: McNemar p < {ALPHA}")
    ax.plot([], [], "o", color="black", markerfacecolor="white", label="open: no significant loss")
    ax.axhline(0, color="0.5", linewidth=1)
    ax.margins(x=0.08)
    if len(int8):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(int8["calibration_size"].unique()))
        ax.set_xticklabels([str(int(size)) for size in sorted(int8["calibration_size"].unique())])
    else:
        ax.text(0.5, 0.5, "no INT8 configuration measured", ha="center", transform=ax.transAxes)
    ax.set_xlabel("calibration images (log scale)")
    ax.set_ylabel("accuracy delta vs FP32 CPU eager (percentage points)")
    ax.set_title("INT8 accuracy delta vs calibration size (error bars: 95% CI over seeds)")
    ax.grid(True, color="0.9")
    ax.legend(fontsize=8, frameon=False)
    return figure


def _bar_height(count: int) -> float:
    return max(4.5, 1.8 + 0.35 * count)


def plot_speedup_and_size(summary: pd.DataFrame) -> Figure:
    figure = new_figure(10, _bar_height(len(summary)))
    speed_ax, size_ax = figure.subplots(1, 2, sharey=True)
    labels = [variant_label(row, **_labelling(summary)) for _, row in summary.iterrows()]
    positions = np.arange(len(summary))[::-1]  # first configuration on top
    int8 = (summary["variant"] == "int8-cpu").to_numpy()
    panels = [
        (
            speed_ax,
            "speedup_vs_fp32_cpu_eager",
            "speedup vs FP32 CPU eager (×, test-set throughput)",
        ),
        (size_ax, "size_ratio", "size reduction vs FP32 (× smaller)"),
    ]
    for ax, metric, title in panels:
        values = summary[f"{metric}_mean"].to_numpy(dtype=float)
        errors = [_half_width(row, metric) or 0 for _, row in summary.iterrows()]
        ax.barh(
            positions,
            np.nan_to_num(values),
            xerr=errors,
            capsize=3,
            edgecolor="black",
            color=np.where(int8, "0.4", "0.85"),
            hatch=["//" if flag else "" for flag in int8],
        )
        for position, value, (_, row) in zip(positions, values, summary.iterrows(), strict=True):
            text = "not measured" if row["status"] != "ok" else f"{value:.2f}×"
            ax.text(0 if np.isnan(value) else value, position, f"  {text}", va="center", fontsize=8)
        ax.axvline(1, color="black", linestyle=":", linewidth=1)
        ax.set_xlabel(title)
        ax.margins(x=0.25)
        ax.grid(True, axis="x", color="0.9")
    speed_ax.set_yticks(positions, labels)
    speed_ax.set_title("Speedup (dotted: 1×)")
    size_ax.set_title("Size ratio (hatched: INT8)")
    return figure


def plot_latency_batch1(summary: pd.DataFrame, measurements: pd.DataFrame) -> Figure:
    """Every batch-1 call of each configuration, seeds pooled, as box plots."""
    measured = summary[summary["status"] == "ok"]
    figure = new_figure(9, _bar_height(len(measured)))
    ax = figure.add_subplot()
    labelling = _labelling(summary)
    data, labels = [], []
    for _, row in measured.iterrows():
        same = np.ones(len(measurements), dtype=bool)
        for key in ["node_class", "model", "variant", "method", "calibration_method"]:
            same &= (measurements[key] == row[key]).to_numpy()
        for key in ["width", "calibration_size"]:  # NaN: a model by reference; an FP32 row
            same &= same_or_both_missing(measurements[key], row[key])
        calls = [
            value for latencies in measurements.loc[same, "latencies_ms"] for value in latencies
        ]
        if calls:
            data.append(calls)
            labels.append(f"{variant_label(row, **labelling)} ({len(calls)} calls)")
    if data:
        ax.boxplot(
            data[::-1],
            orientation="horizontal",
            tick_labels=labels[::-1],
            whis=(1, 99),
            widths=0.6,
            medianprops={"color": "black", "linewidth": 2},
            flierprops={"marker": ".", "markersize": 3, "markeredgecolor": "0.4"},
        )
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
    else:
        ax.text(
            0.5,
            0.5,
            "no per-call latencies stored: rerun the benchmark stage",
            ha="center",
            transform=ax.transAxes,
        )
    _not_measured_handles(ax, summary)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.12), fontsize=8, frameon=False)
    ax.set_xlabel("latency per batch-1 call (ms, log scale)")
    ax.set_title("Batch-1 latency (box: quartiles and median; whiskers: 1st-99th percentile)")
    ax.grid(True, axis="x", which="both", color="0.9")
    return figure


def plot_batch_size_curve(curve: pd.DataFrame) -> Figure:
    """Images/s and the time of one batch against the batch size, log-log, a line per
    configuration (classification.summary.curve_summary's table); bars: the rounds' range."""
    figure = new_figure(12, 5)
    speed_ax, batch_ax = figure.subplots(1, 2, sharex=True)
    measured = curve[curve["status"] == "ok"]
    labelling = _labelling(curve)
    for i, (_, group) in enumerate(measured.groupby(CONFIGURATION, dropna=False, sort=False)):
        first = group.iloc[0]
        style = {
            "color": GRAYS[i % len(GRAYS)],
            "linestyle": LINES[i % len(LINES)],
            "marker": MARKERS[i % len(MARKERS)],
            "markerfacecolor": "white" if first["variant"] == "int8-cpu" else None,
        }
        speed_ax.errorbar(
            group["batch_size"],
            group["images_per_s_mean"],
            yerr=group["images_per_s_spread_mean"] / 2,
            capsize=3,
            label=variant_label(first, **labelling),
            **style,
        )
        batch_ax.plot(group["batch_size"], group["batch_latency_ms_p50_mean"], **style)
    for _, row in curve[curve["status"] != "ok"].drop_duplicates(CONFIGURATION).iterrows():
        label = f"{variant_label(row, **labelling)}: not measured ({row['reason']})"
        speed_ax.plot([], [], " ", label=label)
    if len(measured):
        sizes = sorted(measured["batch_size"].unique())
        for ax in (speed_ax, batch_ax):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(int(size)) for size in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            plain_log_axis(ax.yaxis)
            ax.grid(True, which="both", color="0.9")
    else:
        reason = "no batch-size curve in this run: set benchmark.batch_sizes, e.g. [1, 16, 256]"
        speed_ax.text(0.5, 0.5, reason, ha="center", transform=speed_ax.transAxes)
    speed_ax.set_xlabel("batch size (images, log scale)")
    batch_ax.set_xlabel("batch size (images, log scale)")
    speed_ax.set_ylabel("throughput (images/s, log scale)")
    batch_ax.set_ylabel("time of one batch (ms, log scale)")
    speed_ax.set_title("Throughput (bars: the timed rounds' range)")
    batch_ax.set_title("Latency per batch (median)")
    handles, labels = speed_ax.get_legend_handles_labels()
    if handles:  # measured configurations first, then what was not measured
        order = sorted(range(len(labels)), key=lambda i: "not measured" in labels[i])
        figure.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="outside right upper",
            fontsize=8,
            frameon=False,
        )
    return figure


def render_figures(
    summary: pd.DataFrame, measurements: pd.DataFrame, curve: pd.DataFrame, footer: str
) -> dict:
    """Every figure by name, `footer` (the provenance) on each; `curve`: the batch-size curves
    over seeds (classification.summary.curve_summary)."""
    figures = {
        "accuracy_vs_throughput": plot_accuracy_vs_throughput(summary),
        "accuracy_delta_vs_calibration": plot_accuracy_delta_vs_calibration(summary),
        "speedup_and_size": plot_speedup_and_size(summary),
        "latency_batch1": plot_latency_batch1(summary, measurements),
        "batch_size_curve": plot_batch_size_curve(curve),
    }
    for figure in figures.values():
        add_footer(figure, footer)
    return figures
