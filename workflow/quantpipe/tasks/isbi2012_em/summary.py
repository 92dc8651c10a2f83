"""The summary of task isbi2012_em: what membrane segmentation costs per cubic millimetre.

report.csv's EM rows aggregated over seeds (mean and 95% Student t interval, as the CIFAR summary)
into summary.csv; summary.md (and the same tables as HTML) shows, per node class and model (the
GPU rows are class gpu), a cost table: quality on the test sections (V_rand, V_info, pixel error),
voxels/s with the threads used, the job-hours to segment 1 mm^3 at 4x4x40 nm (1.5625e15 voxels)
at that rate, and speed and cost as ratios against FP32 CPU eager: a CPU row's from FP32 eager
timed round by round beside it in its own job (report.csv's paired speedup), with the rounds'
range, and which speeds the timing cannot tell apart. Figures: V_rand against voxels/s, and
job-hours per mm^3 per variant.
"""

import pandas as pd

from quantpipe.reporting.aggregate import over_seeds
from quantpipe.reporting.document import (
    estimate,
    figure_blocks,
    provenance_block,
    variant_label,
)
from quantpipe.reporting.figures import add_footer, new_figure, plain_log_axis
from quantpipe.reporting.stats import within_noise

METRICS = [
    "v_rand", "v_rand_delta", "v_info", "v_info_delta", "pixel_error", "pixel_error_delta",
    "voxels_per_s", "voxels_per_s_spread", "job_hours_per_mm3", "speedup_vs_fp32_cpu_eager",
    "paired_speedup_spread", "speedup_vs_fp32_cpu_eager_unpaired", "size_mb", "size_ratio",
    "fp32_layers",
]  # fmt: skip
BASELINE = ("fp32-cpu", "eager")
# (header, metric, scale, digits) of the cost table's measured cells.
COST_COLUMNS = [
    ("V_rand", "v_rand", 1, 4),
    ("ΔV_rand", "v_rand_delta", 1, 4),
    ("V_info", "v_info", 1, 4),
    ("pixel error", "pixel_error", 1, 4),
    ("voxels/s", "voxels_per_s", 1, 0),
    ("job-hours per mm³", "job_hours_per_mm3", 1, 0),
    ("speed vs FP32 CPU", "speedup_vs_fp32_cpu_eager", 1, 2),
    ("speed, rounds' range", "paired_speedup_spread", 1, 2),
    ("cost vs FP32 CPU", "cost_vs_fp32_cpu_eager", 1, 3),
    ("size (MB)", "size_mb", 1, 2),
    ("layers in FP32", "fp32_layers", 1, 0),
]
READING = (
    "Quality is scored on the 5 held-out test sections (25-29) of the ISBI 2012 stack: V_rand and "
    "V_info are the challenge's foreground-restricted Rand and information scores of the "
    "thresholded prediction's connected components (1 is perfect), pixel error the fraction of "
    "pixels misclassified. Speed is measured on the tiled volume path (overlapping tiles, "
    "blended, read from and written to Zarr) over all 30 sections, per job with the threads "
    "shown. Job-hours per mm³ "
    "= 1.5625e15 voxels (1 mm³ at 4x4x40 nm) / voxels/s / 3600: the hours ONE such job needs, "
    "node-hours where the job has the whole node. One table per node class: each class is "
    "measured on its own nodes. Speed and cost ratios compare with FP32 CPU eager of the same "
    "seed on the same class (GPU rows: on the config's first class; cost = 1 / speed). A CPU "
    "row's speed ratio is paired: its job ran FP32 eager of the same weights through the same "
    "volume path in the same process, round by round with it, and the ratio is the median of the "
    "rounds' ratios (rounds' range: their max - min; FP32 eager's own row is timed beside itself, "
    "so its range is the timing noise). GPU rows divide the two jobs' rates (unpaired; both in "
    "summary.csv). Voxels/s is the median of the rounds, and job-hours come from it. Speed ratios "
    "that differ by less than the larger rounds' range are within the noise: the timing column "
    "names the fastest CPU configuration and those the timing cannot tell from it or from FP32 "
    "eager. A method `{method}-budget` (config accuracy_budget) is INT8 with the fewest layers "
    "left in FP32 (layers in FP32) that keep its pixel error on the validation sections within "
    "the budget of FP32's. Numbers are means over seeds ± the half-width of their 95% "
    "confidence interval (one seed shows its value alone); all are in summary.csv."
)


def summarize(report: pd.DataFrame, config_digest: str) -> pd.DataFrame:
    """report.csv's rows aggregated over seeds, one row per configuration, with what the timing
    cannot rank (`timing`, ties)."""
    report = report.copy()
    report["cost_vs_fp32_cpu_eager"] = 1 / report["speedup_vs_fp32_cpu_eager"]
    table = over_seeds(report, [*METRICS, "cost_vs_fp32_cpu_eager"], config_digest)
    table["timing"] = ""
    for _, group in table.groupby(["node_class", "model", "width"], dropna=False, sort=False):
        table.loc[group.index, "timing"] = ties(group)
    return table


def ties(group: pd.DataFrame) -> list[str]:
    """Per configuration of one (model, width), among those timed beside FP32 CPU eager
    (paired): "fastest" for the fastest, and which of the fastest and FP32 eager the timing
    cannot tell its speed ratio from (quantpipe.reporting.stats.within_noise); "" for a row
    without a pair or a speed the noise does not blur."""
    paired = group[(group["status"] == "ok") & group["paired_speedup_spread_mean"].notna()]
    if paired.empty:
        return [""] * len(group)
    fastest = paired.loc[paired["speedup_vs_fp32_cpu_eager_mean"].idxmax()]
    baseline = paired[(paired["variant"] == BASELINE[0]) & (paired["method"] == BASELINE[1])]
    others = [(f"the fastest ({variant_label(fastest)})", fastest)]
    others += [("FP32 eager", row) for _, row in baseline.iterrows()]
    marks = []
    for index, row in group.iterrows():
        if index not in paired.index:
            marks.append("")
            continue
        tied = [name for name, other in others if other.name != index and within_noise(row, other)]
        words = ["fastest"] if index == fastest.name else []
        words += [f"within noise of {' and of '.join(tied)}"] if tied else []
        marks.append(", ".join(words))
    return marks


def cost_table(group: pd.DataFrame) -> tuple:
    header = ["variant", "threads", *(name for name, *_ in COST_COLUMNS), "timing"]
    rows = []
    for _, row in group.iterrows():
        if row["status"] == "ok":
            cells = [
                estimate(row, metric, scale, digits) for _, metric, scale, digits in COST_COLUMNS
            ]
        else:
            cells = [f"not measured: {row['reason']}"] + ["—"] * (len(COST_COLUMNS) - 1)
        rows.append([variant_label(row), row["threads"] or "—", *cells, row["timing"]])
    return ("table", header, rows)


def document(summary: pd.DataFrame, facts: dict, figures: dict[str, str]) -> list[tuple]:
    """summary.md as blocks (quantpipe.reporting.document); `figures`: name -> PNG path."""
    blocks = [
        ("h1", "quantpipe summary: membrane segmentation of ISBI 2012 EM"),
        provenance_block(facts),
        ("p", READING),
    ]
    for (node_class, model, width), group in summary.groupby(
        ["node_class", "model", "width"], sort=True
    ):
        heading = f"Cost per cubic millimetre on node class {node_class}: {model}, width {width}"
        blocks += [("h2", heading), cost_table(group)]
    return blocks + figure_blocks(figures)


def plot_quality_vs_throughput(summary: pd.DataFrame):
    figure = new_figure(8, 4.5)
    ax = figure.add_subplot()
    measured = summary[summary["status"] == "ok"]
    for index, (_, row) in enumerate(measured.iterrows()):
        int8 = row["variant"] == "int8-cpu"
        ax.plot(
            row["voxels_per_s_mean"], row["v_rand_mean"], "os^Dv<>"[index % 7],
            markerfacecolor="white" if int8 else "black", color="black",
            label=variant_label(row, with_model=True, with_class=True),
        )  # fmt: skip
    for _, row in summary[summary["status"] != "ok"].iterrows():
        label = variant_label(row, with_model=True, with_class=True)
        ax.plot([], [], " ", label=f"{label}: not measured ({row['reason']})")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("voxels/s through the tiled volume path (per job, threads in summary.md)")
    ax.set_ylabel("V_rand on the test sections (higher is better)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="major", color="0.85")
    return figure


def plot_cost_per_mm3(summary: pd.DataFrame):
    measured = summary[summary["status"] == "ok"]
    figure = new_figure(8, 1.5 + 0.35 * max(len(measured), 1))
    ax = figure.add_subplot()
    labels = [
        variant_label(row, with_model=True, with_class=True) for _, row in measured.iterrows()
    ]
    hatches = ["//" if variant == "int8-cpu" else "" for variant in measured["variant"]]
    bars = ax.barh(labels, measured["job_hours_per_mm3_mean"], color="0.7", edgecolor="black")
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    ax.invert_yaxis()
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("job-hours per mm³ at 4x4x40 nm (one job, its threads; lower is better)")
    return figure


def render_figures(summary: pd.DataFrame, footer: str) -> dict:
    """Every figure by name, `footer` (the provenance) on each."""
    figures = {
        "quality_vs_throughput": plot_quality_vs_throughput(summary),
        "cost_per_mm3": plot_cost_per_mm3(summary),
    }
    for figure in figures.values():
        add_footer(figure, footer)
    return figures
