"""The summary of a classification task: accuracy and speed over seeds, each variant's accuracy
tested against FP32 CPU eager on the same test images (McNemar's paired test), the study's
Table 1 side by side with ours, what INT8 buys per node class, the best INT8 configuration per
model, every configuration, and the batch-size curves (benchmark.batch_sizes). Every comparison
stays inside one node class (the GPU rows compare with the config's first class,
quantpipe.reporting.node_classes).
"""

import math
from pathlib import Path

import pandas as pd
import torch

from quantpipe.artifacts import read_json
from quantpipe.reporting.aggregate import (
    GROUP_KEYS,
    comparable_keys,
    distinct,
    over_seeds,
    same_or_both_missing,
)
from quantpipe.reporting.document import (
    estimate,
    figure_blocks,
    model_label,
    provenance_block,
    variant_label,
)
from quantpipe.reporting.node_classes import GPU_CLASS, baseline_class
from quantpipe.reporting.rows import curve_table
from quantpipe.reporting.stats import ALPHA, EXACT_BELOW, mcnemar, verdict, within_noise

RUN_KEYS = ["model", "width", "seed"]
ROW_KEYS = ["node_class", *RUN_KEYS, "variant", "method", "calibration_method", "calibration_size"]
METRICS = [
    "accuracy", "accuracy_delta", "images_per_s", "images_per_s_spread", "test_set_seconds",
    "latency_ms_p50", "latency_ms_p99", "speedup_vs_fp32_cpu_eager",
    "speedup_vs_fp32_cpu_eager_unpaired", "paired_speedup", "paired_speedup_spread",
    "speedup_vs_best_fp32_cpu",
    "size_mb", "size_ratio", "fp32_layers",
]  # fmt: skip
# The curve's measurements per configuration and batch size (batch_sizes.csv's columns).
CURVE_METRICS = ["images_per_s", "images_per_s_spread", "batch_latency_ms_p50"]
# What names a configuration (a line of the curve): every GROUP_KEYS but the batch size.
CONFIGURATION = [
    "node_class", "model", "width", "variant", "method", "calibration_method", "calibration_size",
]  # fmt: skip
BASELINE = ("fp32-cpu", "eager")  # what report.csv's accuracy_delta and speedups compare with
# The study's Table 1 (ResNet18 on CIFAR-10, 10,000 test images), in report.csv's units.
STUDY = {
    "fp32-gpu": {"test_set_seconds": 3.84, "size_mb": 46.84, "accuracy": 0.8854},
    "fp32-cpu": {"test_set_seconds": 24.68, "size_mb": 46.84, "accuracy": 0.8854},
    "int8-cpu": {"test_set_seconds": 13.91, "size_mb": 11.84, "accuracy": 0.8845},
}


def paired_measurements(
    benchmark_metrics: list[str],
    predictions: list[str],
    labels: torch.Tensor,
    node_classes: list[str],
) -> pd.DataFrame:
    """One row per measured benchmark row: its keys, batch-1 latencies and paired counts.

    The counts compare the row's per-image predictions with its run's FP32 CPU eager ones on the
    same node class (a GPU row: the first of `node_classes`) and the same test images:
    `baseline_only_correct` and `variant_only_correct` images.
    """
    predictions_by_directory = {Path(path).parent: path for path in predictions}
    entries = []
    for metrics_path in benchmark_metrics:
        stored = torch.load(predictions_by_directory[Path(metrics_path).parent], weights_only=True)
        for row in read_json(metrics_path)["rows"]:
            if row["status"] != "ok":
                continue
            entries.append(
                {
                    **{key: row.get(key) for key in ROW_KEYS},
                    # Absent in metrics written before the benchmark stored them.
                    "latencies_ms": row.get("latencies_ms", []),
                    "correct": (stored[row["method"]].long() == labels).numpy(),
                }
            )
    table = pd.DataFrame(entries, columns=[*ROW_KEYS, "latencies_ms", "correct"])
    is_baseline = (table["variant"] == BASELINE[0]) & (table["method"] == BASELINE[1])
    baseline = table[is_baseline].set_index(["node_class", *RUN_KEYS])["correct"]
    counts = []
    for row in table.itertuples():
        compared = baseline_class(row.node_class, node_classes)
        reference = baseline.get((compared, row.model, row.width, row.seed))
        if reference is None:
            counts.append((math.nan, math.nan, math.nan))
            continue
        counts.append(
            (
                len(row.correct),
                int((reference & ~row.correct).sum()),
                int((~reference & row.correct).sum()),
            )
        )
    table[["paired_images", "baseline_only_correct", "variant_only_correct"]] = counts
    # Keys as report.csv's read (a model by reference: width NaN), so that the two merge.
    return comparable_keys(table.drop(columns="correct"))


def summarize(report: pd.DataFrame, measurements: pd.DataFrame, config_digest: str) -> pd.DataFrame:
    """report.csv's rows aggregated over seeds, one row per configuration, with paired tests."""
    report = comparable_keys(report).merge(
        measurements.drop(columns="latencies_ms"), on=ROW_KEYS, how="left", validate="one_to_one"
    )
    table = over_seeds(report, METRICS, config_digest, _paired_test)
    unmeasured = table["status"] != "ok"
    table.loc[unmeasured, "verdict"] = "not measured: " + table.loc[unmeasured, "reason"]
    return table


def curve_summary(benchmark_metrics: list[str], config_digest: str) -> pd.DataFrame:
    """The batch-size curves (quantpipe.reporting.rows.curve_table) over seeds: a row per
    configuration and batch size, each measurement as mean, sd, n and 95% interval; empty where
    no curve was measured or asked for."""
    curve = curve_table(benchmark_metrics)
    if curve.empty:
        return curve
    curve = curve.reindex(columns=[*curve.columns, *(m for m in CURVE_METRICS if m not in curve)])
    table = over_seeds(curve, CURVE_METRICS, config_digest)
    return table.sort_values(
        [*CONFIGURATION, "batch_size"], na_position="first", kind="stable"
    ).reset_index(drop=True)


def _paired_test(keys: tuple, measured: pd.DataFrame) -> dict:
    """McNemar against the baseline, the seeds' discordant images summed.

    Summing over seeds is the stratified (Mantel-Haenszel) form of McNemar's test for matched
    pairs: under no difference each discordant image is a fair coin in every seed.
    """
    named = dict(zip(GROUP_KEYS, keys, strict=True))
    variant, method = named["variant"], named["method"]
    pairs = measured.dropna(subset=["paired_images"])
    baseline_only = int(pairs["baseline_only_correct"].sum())
    variant_only = int(pairs["variant_only_correct"].sum())
    result = {
        "paired_images": int(pairs["paired_images"].sum()),
        "baseline_only_correct": baseline_only,
        "variant_only_correct": variant_only,
        "mcnemar_test": "",
        "mcnemar_p": math.nan,
    }
    if (variant, method) == BASELINE:
        return {**result, "verdict": "baseline"}
    if pairs.empty:
        return {**result, "verdict": "no paired predictions"}
    p, test = mcnemar(baseline_only, variant_only)
    return {
        **result,
        "mcnemar_test": test,
        "mcnemar_p": p,
        "verdict": verdict(baseline_only, variant_only, p),
    }


def best_int8(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (node class, model, width): the fastest INT8 configuration with no significant loss,
    and in `within_noise_of_best` the other such configurations whose speedup differs from it by
    less than the timing noise (within_noise): the timing cannot rank them.

    Where every one lost accuracy significantly, the most accurate one (its verdict says so).
    """
    int8 = summary[(summary["variant"] == "int8-cpu") & (summary["status"] == "ok")]
    chosen = []
    for _, group in int8.groupby(["node_class", "model", "width"], dropna=False, sort=True):
        safe = group[group["verdict"] == "no significant loss"]
        if len(safe):
            best = safe.loc[safe["speedup_vs_fp32_cpu_eager_mean"].idxmax()].copy()
            tied = [
                variant_label(other)
                for index, other in safe.iterrows()
                if index != best.name and within_noise(best, other)
            ]
            best["within_noise_of_best"] = "; ".join(tied)
            chosen.append(best)
        else:
            chosen.append(group.loc[group["accuracy_mean"].idxmax()])
    return pd.DataFrame(chosen, columns=[*summary.columns, "within_noise_of_best"])


def _measured_or_reason(row, cells: list[str]) -> list[str]:
    if row["status"] == "ok":
        return cells
    return [f"not measured: {row['reason']}"] + ["not measured"] * (len(cells) - 1)


def _p_value(p: float) -> str:
    return "—" if pd.isna(p) else f"{p:.3g}"


def _estimates(row, columns) -> list[str]:
    return [estimate(row, metric, scale, digits) for _, metric, scale, digits in columns]


# (header, metric, scale, digits) of the summary.md tables' measured cells.
TABLE1_COLUMNS = [
    ("time over 10,000 test images (s)", "test_set_seconds", 1, 2),
    ("model size (MB)", "size_mb", 1, 2),
    ("top-1 accuracy (%)", "accuracy", 100, 2),
]
BEST_COLUMNS = [
    ("speedup vs FP32 CPU eager (×)", "speedup_vs_fp32_cpu_eager", 1, 2),
    ("size ratio (×)", "size_ratio", 1, 2),
    ("accuracy delta (points)", "accuracy_delta", 100, 2),
]
EVERY_COLUMNS = [
    ("accuracy (%)", "accuracy", 100, 2), ("delta (points)", "accuracy_delta", 100, 2),
    ("images/s", "images_per_s", 1, 0), ("p50 ms (batch 1)", "latency_ms_p50", 1, 2),
    ("p99 ms (batch 1)", "latency_ms_p99", 1, 2),
    ("speedup (×)", "speedup_vs_fp32_cpu_eager", 1, 2),
    ("speedup, rounds' range (×)", "paired_speedup_spread", 1, 2),
    ("speedup, unpaired (×)", "speedup_vs_fp32_cpu_eager_unpaired", 1, 2),
    ("size (MB)", "size_mb", 1, 2),
    ("size ratio (×)", "size_ratio", 1, 2),
    ("layers in FP32", "fp32_layers", 1, 0),
]  # fmt: skip


def _of_model(table: pd.DataFrame, model: str, width) -> pd.DataFrame:
    return table[(table["model"] == model) & same_or_both_missing(table["width"], width)]


def table1(
    summary: pd.DataFrame, best: pd.DataFrame, node_class: str, model: str, width: int
) -> tuple:
    """The study's Table 1 for one (node class, model, width): FP32 GPU (measured once, for every
    class), FP32 CPU and best INT8 on the class, with the study's figures in a reference column
    beside each of ours. `width` is NaN for a model by reference."""
    mine = _of_model(summary, model, width)
    cpu = mine[mine["node_class"] == node_class]
    picks = {
        "fp32-gpu": mine[(mine["variant"] == "fp32-gpu") & (mine["method"] == "eager")],
        "fp32-cpu": cpu[(cpu["variant"] == "fp32-cpu") & (cpu["method"] == "eager")],
        "int8-cpu": _of_model(best, model, width).query("node_class == @node_class"),
    }
    header = [""]
    for title, *_ in TABLE1_COLUMNS:
        header += [title, "study"]
    rows = []
    for variant, chosen in picks.items():
        references = [
            f"{STUDY[variant][metric] * scale:.{digits}f}"
            for _, metric, scale, digits in TABLE1_COLUMNS
        ]
        if chosen.empty:
            label = f"{variant.replace('-', ' ').upper()} (not in this run's config)"
            ours = ["not measured: not in this run's config"] * len(TABLE1_COLUMNS)
        else:
            row = chosen.iloc[0]
            label = variant_label(row)
            ours = _measured_or_reason(row, _estimates(row, TABLE1_COLUMNS))
        rows.append(
            [label, *(cell for pair in zip(ours, references, strict=True) for cell in pair)]
        )
    return "table", header, rows


def best_table(best: pd.DataFrame) -> tuple:
    header = [
        "node class",
        "model",
        "width",
        "method",
        "calibration images",
        *(title for title, *_ in BEST_COLUMNS),
        "McNemar p",
        "verdict",
        "as fast within the timing noise",
        "CPU",
        "INT8 flags",
        "threads",
        "host",
    ]
    rows = [
        [
            row["node_class"],
            row["model"],
            "—" if pd.isna(row["width"]) else str(int(row["width"])),
            f"{row['method']} {row['calibration_method']}".strip(),
            str(int(row["calibration_size"])),
            *_estimates(row, BEST_COLUMNS),
            _p_value(row["mcnemar_p"]),
            row["verdict"],
            row["within_noise_of_best"] if isinstance(row["within_noise_of_best"], str) else "",
            row["cpu_model"],
            row["cpu_int8_flags"],
            row["threads"],
            row["host"],
        ]
        for _, row in best.iterrows()
    ]
    return "table", header, rows


PER_CLASS_HEADING = "What INT8 buys per node class"
PER_CLASS = (
    "Per node class, the best INT8 configuration (as in the best INT8 table: the fastest without "
    "a significant accuracy loss), its speedup over FP32 CPU eager timed in the same job, round by "
    "round (paired_speedup: the median of the rounds' ratios; rounds' range: their max - min, "
    "mean over seeds), its batch-1 latency beside FP32 eager's on the same class, and the CPU "
    "its rows recorded. Each class is measured on its own nodes: compare classes by their "
    "speedups, never one class's rate with another's."
)


def per_class_table(summary: pd.DataFrame, best: pd.DataFrame) -> tuple:
    """What INT8 buys on each node class: per (class, model, width), the best INT8 method, its
    paired speedup and spread, batch-1 latency (and FP32 eager's) and the CPU it ran on."""
    header = [
        "node class", "model", "best INT8 method", "paired speedup vs FP32 CPU eager (×)",
        "rounds' range (×)", "INT8 p50 ms (batch 1)", "FP32 eager p50 ms (batch 1)", "verdict",
        "CPU", "INT8 flags", "ran on",
    ]  # fmt: skip
    eager = summary[(summary["variant"] == "fp32-cpu") & (summary["method"] == "eager")]
    rows = []
    for _, row in best.iterrows():
        fp32 = _of_model(eager, row["model"], row["width"])
        fp32 = fp32[fp32["node_class"] == row["node_class"]]
        rows.append(
            [
                row["node_class"],
                model_label(row["model"], row["width"]),
                variant_label(row).removeprefix("INT8 CPU "),
                estimate(row, "paired_speedup"),
                estimate(row, "paired_speedup_spread"),
                estimate(row, "latency_ms_p50"),
                estimate(fp32.iloc[0], "latency_ms_p50") if len(fp32) else "not measured",
                row["verdict"],
                row["cpu_model"],
                row["cpu_int8_flags"],
                row["ran_on"],
            ]
        )
    return "table", header, rows


def every_table(summary: pd.DataFrame) -> tuple:
    header = [
        "node class",
        "configuration",
        "batch",
        "seeds",
        *(title for title, *_ in EVERY_COLUMNS),
        "FP32-only / variant-only correct",
        "McNemar p",
        "verdict",
    ]
    rows = []
    for _, row in summary.iterrows():
        measured = row["status"] == "ok"
        discordant = f"{row['baseline_only_correct']} / {row['variant_only_correct']}"
        rows.append(
            [
                row["node_class"],
                variant_label(row, with_model=True),
                distinct([row["batch_size"]]) or "—",
                str(row["seeds"]),
                *_measured_or_reason(row, _estimates(row, EVERY_COLUMNS)),
                discordant if measured else "—",
                _p_value(row["mcnemar_p"]),
                row["verdict"],
            ]
        )
    return "table", header, rows


READING = (
    "Numbers are means over seeds ± the half-width of their 95% confidence interval (Student t; "
    "a single seed shows its value alone). Accuracy deltas, speedups and size ratios compare with "
    "FP32 CPU eager of the same seed. A CPU configuration's speedup is paired: FP32 eager timed "
    "in the same job, round by round with it, the median of the rounds' ratios (rounds' range: "
    "their max - min); the unpaired speedup divides the two jobs' own rates. Speed is the median "
    "of timed rounds. A speedup difference smaller than the rounds' range is within the noise: "
    "the best INT8 table names such configurations instead of ranking them. "
    "The paired test is McNemar's on the test images that each "
    "model gets right, against FP32 CPU eager on the same images, discordant images summed over "
    f"seeds; exact binomial below {EXACT_BELOW} discordant images, chi-square with continuity "
    f'correction above. "no significant loss" means p ≥ {ALPHA}: the test cannot tell the two '
    "apart, which is weaker than proving them equal. Every number here is in results/summary.csv."
)


CURVE_READING = (
    "Each implementation's timed rounds again at each batch size of benchmark.batch_sizes, over "
    "the same test images, every shape warmed up first: images/s (the rounds' median) and the "
    "median time of one batch (ms), means over seeds ± the half-width of their 95% interval. "
    "Not paired: each job's own rate, so compare across variants with the noise in mind. "
    "results/batch_sizes.csv holds every run's values and the rounds' range."
)
NO_CURVE = (
    "No batch-size curve in this run: benchmark.batch_sizes is empty. Set it (e.g. [1, 16, 256]) "
    "to time every implementation at each batch size."
)


def curve_blocks(curve: pd.DataFrame) -> list[tuple]:
    """The batch-size curve section: a row per configuration, a column per batch size."""
    if curve.empty:
        return [("h2", "Batch-size curve"), ("p", NO_CURVE)]
    sizes = sorted(curve["batch_size"].unique())
    many_classes = curve.loc[curve["node_class"] != GPU_CLASS, "node_class"].nunique() > 1
    header = ["configuration", *(f"batch {int(size)}" for size in sizes)]
    rows = []
    for _, group in curve.groupby(CONFIGURATION, dropna=False, sort=False):
        cells = {row["batch_size"]: _curve_cell(row) for _, row in group.iterrows()}
        label = variant_label(group.iloc[0], with_model=True, with_class=many_classes)
        rows.append([label, *(cells.get(size, "—") for size in sizes)])
    return [("h2", "Batch-size curve"), ("p", CURVE_READING), ("table", header, rows)]


def _curve_cell(row) -> str:
    if row["status"] != "ok":
        return f"not measured: {row['reason']}"
    rate, batch = estimate(row, "images_per_s", 1, 0), estimate(row, "batch_latency_ms_p50")
    return f"{rate} img/s, {batch} ms"


NO_STUDY = (
    "The study's Table 1 (ResNet18 on the 10,000 CIFAR-10 test images) does not apply to this "
    "data set, so it is left out; the tables below compare each variant with FP32 CPU eager on "
    "this data set's own test images."
)


def study_blocks(summary: pd.DataFrame, best: pd.DataFrame) -> list[tuple]:
    """The study's Table 1 beside ours, one per (node class, model, width)."""
    blocks = []
    cpu = summary[summary["node_class"] != GPU_CLASS]
    for (node_class, model, width), group in cpu.groupby(
        ["node_class", "model", "width"], dropna=False, sort=True
    ):
        batch = distinct(group["batch_size"]) or "—"
        note = (
            f"Seeds: {group['seeds'].max()}; test-set time at batch {batch}. The study ran "
            "torchvision's ResNet18 with a 1000-class head (workflow/experiments/study.yaml "
            "reproduces it): other configurations compare with it only in shape."
        )
        model_name = model + ("" if pd.isna(width) else f", width {int(width)}")
        blocks += [
            ("h2", f"Table 1: {model_name}, node class {node_class}"),
            ("p", note),
            table1(summary, best, node_class, model, width),
        ]
    return blocks


def document(
    summary: pd.DataFrame,
    curve: pd.DataFrame,
    facts: dict,
    figures: dict[str, str],
    study: bool = True,
) -> list[tuple]:
    """summary.md as blocks (quantpipe.reporting.document); `curve`: curve_summary's table;
    `figures`: name -> PNG path. With `study`, the study's Table 1 (CIFAR-10) beside ours;
    without, a line that it does not apply."""
    best = best_int8(summary)
    blocks = [("h1", "quantpipe summary"), provenance_block(facts), ("p", READING)]
    blocks += study_blocks(summary, best) if study else [("p", NO_STUDY)]
    blocks += [
        ("h2", PER_CLASS_HEADING),
        ("p", PER_CLASS),
        per_class_table(summary, best),
        ("h2", "Best INT8 method per model"),
        (
            "p",
            "The fastest INT8 configuration whose paired test shows no significant loss (the "
            "most accurate one where every configuration lost), the others without loss that "
            "are as fast within the timing noise, and the machine it ran on.",
        ),
        best_table(best),
        ("h2", "Every configuration"),
        every_table(summary),
        *curve_blocks(curve),
        *figure_blocks(figures),
    ]
    return blocks
