"""The summary stage: the report people read, built on results/report.csv.

It aggregates every measurement over seeds (mean, sd, n and a 95% Student t interval), tests each
variant's accuracy against FP32 CPU eager on the same test images (McNemar's paired test), and
writes summary.csv, summary.md (the study's Table 1 side by side), the same tables as HTML for
Snakemake's report, and the figures as PNG and SVG. Every output says where its numbers come from:
config hash, git commit, versions, hardware, threads and dates.
"""

import datetime
import hashlib
import html
import json
import math
import os
import statistics
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from quantpipe.artifacts import atomic_path, read_json
from quantpipe.tasks.cifar10.data import load_splits

RUN_KEYS = ["model", "width", "seed"]
ROW_KEYS = [*RUN_KEYS, "variant", "method", "calibration_method", "calibration_size"]
# Seeds are what varies inside a group; everything else names the configuration.
GROUP_KEYS = [
    "model", "width", "variant", "method", "calibration_method", "calibration_size", "batch_size",
]  # fmt: skip
METRICS = [
    "accuracy", "accuracy_delta", "images_per_s", "test_set_seconds", "latency_ms_p50",
    "latency_ms_p99", "speedup_vs_fp32_cpu_eager", "speedup_vs_best_fp32_cpu", "size_mb",
    "size_ratio",
]  # fmt: skip
PROVENANCE_COLUMNS = [
    "git_commit", "torch", "torchvision", "torchao", "python", "cpu_model", "cpu_int8_flags",
    "gpu_name", "threads", "host", "date",
]  # fmt: skip
BASELINE = ("fp32-cpu", "eager")  # what report.csv's accuracy_delta and speedups compare with
CONFIDENCE = 0.95
ALPHA = 0.05
# Below this many discordant images the chi-square approximation is poor: use the exact test.
EXACT_BELOW = 25
# The study's Table 1 (ResNet18 on CIFAR-10, 10,000 test images), in report.csv's units.
STUDY = {
    "fp32-gpu": {"test_set_seconds": 3.84, "size_mb": 46.84, "accuracy": 0.8854},
    "fp32-cpu": {"test_set_seconds": 24.68, "size_mb": 46.84, "accuracy": 0.8854},
    "int8-cpu": {"test_set_seconds": 13.91, "size_mb": 11.84, "accuracy": 0.8845},
}
FIGURES = (
    "accuracy_vs_throughput", "accuracy_delta_vs_calibration", "speedup_and_size",
    "latency_batch1",
)  # fmt: skip
DPI = 150
# Grayscale-safe styles: series differ by marker, fill, line and hatch, not only by colour.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINES = ("-", "--", ":", "-.")
GRAYS = ("black", "0.45", "0.25", "0.6")


# --- statistics (pure) -------------------------------------------------------------------------


def _t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    total = 0.0
    if df % 2:
        term = math.cos(theta)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = 1.0
    for j in range(1, df // 2 + 1):
        total += term
        term *= cos2 * (2 * j - 1) / (2 * j)
    return math.sin(theta) * total


def t_critical(confidence: float, df: int) -> float:
    """The two-sided Student t quantile: P(|T| < t) = confidence (e.g. 4.303 for 0.95, df 2)."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"need df >= 1 and 0 < confidence < 1, got df {df}, {confidence}")
    low, high = 0.0, 1.0
    while _t_within(high, df) < confidence:
        high *= 2
    for _ in range(200):  # bisection: the distribution function is monotone in t
        middle = (low + high) / 2
        low, high = (middle, high) if _t_within(middle, df) < confidence else (low, middle)
    return (low + high) / 2


def mean_interval(values, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample sd, n and the Student t confidence interval of the mean; NaN where undefined."""
    values = [float(value) for value in values if not pd.isna(value)]
    n = len(values)
    if n == 0:
        return {
            "mean": math.nan,
            "sd": math.nan,
            "n": 0,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
        }
    mean = statistics.fmean(values)
    if n == 1:  # one seed: a value, but no spread to build an interval from
        return {"mean": mean, "sd": math.nan, "n": 1, "ci95_low": math.nan, "ci95_high": math.nan}
    sd = statistics.stdev(values)
    half = t_critical(confidence, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci95_low": mean - half, "ci95_high": mean + half}


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """Exact two-sided p of `successes` in `trials` fair coin flips (twice the smaller tail)."""
    if trials == 0:
        return 1.0
    tail = min(successes, trials - successes)
    # Python integers are exact, so the tail sum neither overflows nor loses precision.
    return min(1.0, 2 * sum(math.comb(trials, k) for k in range(tail + 1)) / 2**trials)


def mcnemar(baseline_only: int, variant_only: int) -> tuple[float, str]:
    """McNemar's p from the discordant images, and which test gave it ("exact" or "chi2-cc").

    `baseline_only`: images only the baseline gets right; `variant_only`: only the variant.
    """
    discordant = baseline_only + variant_only
    if discordant < EXACT_BELOW:
        return binomial_two_sided_p(variant_only, discordant), "exact"
    statistic = (abs(baseline_only - variant_only) - 1) ** 2 / discordant
    return math.erfc(math.sqrt(statistic / 2)), "chi2-cc"  # chi-square, 1 df, survival


def verdict(baseline_only: int, variant_only: int, p: float, alpha: float = ALPHA) -> str:
    # Not significant means the test cannot tell the variant from the baseline, which is all
    # "no significant loss" claims; it never proves the accuracies equal.
    if p >= alpha:
        return "no significant loss"
    return "significant loss" if baseline_only > variant_only else "significant gain"


def pareto_front(xs, ys) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x."""
    order = sorted(range(len(xs)), key=lambda i: (-xs[i], -ys[i]))
    front, best_y = [], -math.inf
    for i in order:
        if ys[i] > best_y:
            front.append(i)
            best_y = ys[i]
    return sorted(front, key=lambda i: xs[i])


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# --- tables ------------------------------------------------------------------------------------


def paired_measurements(
    benchmark_metrics: list[str], predictions: list[str], labels: torch.Tensor
) -> pd.DataFrame:
    """One row per measured benchmark row: its keys, batch-1 latencies and paired counts.

    The counts compare the row's per-image predictions with its run's FP32 CPU eager ones on the
    same test images: `baseline_only_correct` and `variant_only_correct` images.
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
    baseline = table[is_baseline].set_index(RUN_KEYS)["correct"]
    counts = []
    for row in table.itertuples():
        reference = baseline.get((row.model, row.width, row.seed))
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
    table["calibration_size"] = table["calibration_size"].astype(float)
    table["calibration_method"] = _calibration_methods(table["calibration_method"])
    # A model by reference has no width (None): NaN, as report.csv reads, so the keys merge.
    table["width"] = pd.to_numeric(table["width"])
    return table.drop(columns="correct")


def _calibration_methods(column: pd.Series) -> pd.Series:
    """As text, "" where none (FP32 rows, metrics written before the knob), so keys match."""
    return column.astype(object).where(column.notna(), "").astype(str)


def _distinct(values) -> str:
    """The distinct values of a provenance column, in order, as text ("" where none)."""
    found = []
    for value in values:
        if pd.isna(value) or value == "":
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if str(value) not in found:
            found.append(str(value))
    return "; ".join(found)


def _date_range(values) -> str:
    dates = sorted(str(value) for value in values if not pd.isna(value))
    if not dates:
        return ""
    return dates[0] if dates[0] == dates[-1] else f"{dates[0]} .. {dates[-1]}"


def summarize(report: pd.DataFrame, measurements: pd.DataFrame, config_digest: str) -> pd.DataFrame:
    """report.csv's rows aggregated over seeds, one row per configuration, with paired tests."""
    report = report.copy()
    report["calibration_size"] = report["calibration_size"].astype(float)
    if "calibration_method" not in report:  # a report.csv written before the knob
        report["calibration_method"] = ""
    report["calibration_method"] = _calibration_methods(report["calibration_method"])
    report = report.merge(
        measurements.drop(columns="latencies_ms"), on=ROW_KEYS, how="left", validate="one_to_one"
    )
    rows = []
    for keys, group in report.groupby(GROUP_KEYS, dropna=False, sort=False):
        measured = group[group["status"] == "ok"]
        reasons = _distinct(group.loc[group["status"] != "ok", "reason"])
        row = {
            **dict(zip(GROUP_KEYS, keys, strict=True)),
            "status": "ok" if len(measured) else "skipped",
            "seeds": len(group),
        }
        if len(measured) == len(group):
            row["reason"] = ""
        elif len(measured):
            row["reason"] = f"{len(group) - len(measured)} of {len(group)} seeds: {reasons}"
        else:
            row["reason"] = reasons
        for metric in METRICS:
            for statistic, value in mean_interval(measured[metric]).items():
                row[f"{metric}_{statistic}"] = value
        row.update(_paired_test(keys, measured))
        if row["status"] != "ok":
            row["verdict"] = f"not measured: {row['reason']}"
        row["config_hash"] = config_digest
        for column in PROVENANCE_COLUMNS:
            row[column] = (_date_range if column == "date" else _distinct)(group[column])
        rows.append(row)
    table = pd.DataFrame(rows)
    order = ["model", "width", "variant", "method", "calibration_method", "calibration_size"]
    return table.sort_values(order, na_position="first").reset_index(drop=True)


def _paired_test(keys: tuple, measured: pd.DataFrame) -> dict:
    """McNemar against the baseline, the seeds' discordant images summed.

    Summing over seeds is the stratified (Mantel-Haenszel) form of McNemar's test for matched
    pairs: under no difference each discordant image is a fair coin in every seed.
    """
    variant, method = keys[2], keys[3]
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
    """Per (model, width): the fastest INT8 configuration with no significant loss.

    Where every one lost accuracy significantly, the most accurate one (its verdict says so).
    """
    int8 = summary[(summary["variant"] == "int8-cpu") & (summary["status"] == "ok")]
    chosen = []
    for _, group in int8.groupby(["model", "width"], dropna=False, sort=True):
        safe = group[group["verdict"] == "no significant loss"]
        if len(safe):
            chosen.append(safe.loc[safe["speedup_vs_fp32_cpu_eager_mean"].idxmax()])
        else:
            chosen.append(group.loc[group["accuracy_mean"].idxmax()])
    return pd.DataFrame(chosen, columns=summary.columns)


# --- text: summary.md and its HTML twin ----------------------------------------------------------


def provenance(report: pd.DataFrame, config_digest: str) -> dict:
    first = {column: _distinct(report[column]) for column in PROVENANCE_COLUMNS}
    commits = "; ".join(commit[:12] for commit in first["git_commit"].split("; "))
    return {
        "config": config_digest[:12],
        "git": commits or "unknown",
        "versions": f"torch {first['torch']}, torchvision {first['torchvision']}, "
        f"torchao {first['torchao']}, Python {first['python']}",
        "CPU": f"{first['cpu_model']} (INT8 flags: {first['cpu_int8_flags'] or 'none'})",
        "GPU": first["gpu_name"] or "none",
        "threads": first["threads"],
        "host": first["host"],
        "measured": _date_range(report["date"]),
    }


def provenance_line(facts: dict) -> str:
    return " · ".join(f"{key} {value}" for key, value in facts.items())


def model_label(model: str, width) -> str:
    """'resnet18_cifar w16'; a model by reference has no width (NaN): its name alone."""
    return model if pd.isna(width) else f"{model} w{int(width)}"


def variant_label(row, with_model: bool = False) -> str:
    if row["variant"] == "int8-cpu":
        calibration = row.get("calibration_method")
        calibration = f" {calibration}" if isinstance(calibration, str) and calibration else ""
        label = f"INT8 CPU {row['method']}{calibration} c{int(row['calibration_size'])}"
    else:
        precision, device = row["variant"].split("-")
        label = f"{precision.upper()} {device.upper()} {row['method']}"
    return f"{model_label(row['model'], row['width'])}: {label}" if with_model else label


def estimate(row, metric: str, scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± half-width of the 95% interval' (just the mean for one seed); '—' if none."""
    mean = row[f"{metric}_mean"]
    if pd.isna(mean):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    if not pd.isna(row[f"{metric}_ci95_low"]):
        half = (row[f"{metric}_ci95_high"] - row[f"{metric}_ci95_low"]) / 2
        text += f" ± {half * scale:.{digits}f}"
    return text


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
    ("speedup (×)", "speedup_vs_fp32_cpu_eager", 1, 2), ("size (MB)", "size_mb", 1, 2),
    ("size ratio (×)", "size_ratio", 1, 2),
]  # fmt: skip


def table1(summary: pd.DataFrame, best: pd.DataFrame, model: str, width: int) -> tuple:
    """The study's Table 1 for one (model, width): FP32 GPU, FP32 CPU, best INT8, with the study's
    figures in a reference column beside each of ours. `width` is NaN for a model by reference."""
    mine = summary[(summary["model"] == model) & _same_or_both_missing(summary["width"], width)]
    picks = {
        "fp32-gpu": mine[(mine["variant"] == "fp32-gpu") & (mine["method"] == "eager")],
        "fp32-cpu": mine[(mine["variant"] == "fp32-cpu") & (mine["method"] == "eager")],
        "int8-cpu": best[(best["model"] == model) & _same_or_both_missing(best["width"], width)],
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
        "model",
        "width",
        "method",
        "calibration images",
        *(title for title, *_ in BEST_COLUMNS),
        "McNemar p",
        "verdict",
        "CPU",
        "INT8 flags",
        "threads",
        "host",
    ]
    rows = [
        [
            row["model"],
            "—" if pd.isna(row["width"]) else str(int(row["width"])),
            f"{row['method']} {row['calibration_method']}".strip(),
            str(int(row["calibration_size"])),
            *_estimates(row, BEST_COLUMNS),
            _p_value(row["mcnemar_p"]),
            row["verdict"],
            row["cpu_model"],
            row["cpu_int8_flags"],
            row["threads"],
            row["host"],
        ]
        for _, row in best.iterrows()
    ]
    return "table", header, rows


def every_table(summary: pd.DataFrame) -> tuple:
    header = [
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
                variant_label(row, with_model=True),
                _distinct([row["batch_size"]]) or "—",
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
    "FP32 CPU eager of the same seed. The paired test is McNemar's on the test images that each "
    "model gets right, against FP32 CPU eager on the same images, discordant images summed over "
    f"seeds; exact binomial below {EXACT_BELOW} discordant images, chi-square with continuity "
    f'correction above. "no significant loss" means p ≥ {ALPHA}: the test cannot tell the two '
    "apart, which is weaker than proving them equal. Every number here is in results/summary.csv."
)


def document(summary: pd.DataFrame, facts: dict, figures: dict[str, str]) -> list[tuple]:
    """summary.md as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("image", alt, src)."""
    best = best_int8(summary)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    blocks = [
        ("h1", "quantpipe summary"),
        ("p", f"Provenance: {provenance_line(facts)} · summarized {now}"),
        ("p", READING),
    ]
    for (model, width), group in summary.groupby(["model", "width"], dropna=False, sort=True):
        batch = _distinct(group["batch_size"]) or "—"
        note = (
            f"Seeds: {group['seeds'].max()}; test-set time at batch {batch}. The study ran "
            "torchvision's ResNet18 with a 1000-class head (workflow/experiments/study.yaml "
            "reproduces it): other configurations compare with it only in shape."
        )
        blocks += [
            ("h2", f"Table 1: {model}" + ("" if pd.isna(width) else f", width {int(width)}")),
            ("p", note),
            table1(summary, best, model, width),
        ]
    blocks += [
        ("h2", "Best INT8 method per model"),
        (
            "p",
            "The fastest INT8 configuration whose paired test shows no significant loss (the "
            "most accurate one where every configuration lost), and the machine it ran on.",
        ),
        best_table(best),
        ("h2", "Every configuration"),
        every_table(summary),
        ("h2", "Figures"),
        *[("image", name.replace("_", " "), src) for name, src in figures.items()],
    ]
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = []
    for kind, *content in blocks:
        if kind == "h1":
            lines += [f"# {content[0]}", ""]
        elif kind == "h2":
            lines += [f"## {content[0]}", ""]
        elif kind == "p":
            lines += [content[0], ""]
        elif kind == "table":
            header, rows = content
            lines.append("| " + " | ".join(map(cell, header)) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
            lines.append("")
        elif kind == "image":
            lines += [f"![{content[0]}]({content[1]})", ""]
    return "\n".join(lines)


def to_html(blocks: list[tuple]) -> str:
    """A standalone page of the same blocks; figures are left to the report's own entries."""
    parts = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{html.escape(str(text))}</th>" for text in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(text))}</td>" for text in row) + "</tr>"
                for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    style = (
        "body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse;"
        "margin-bottom:1em}td,th{border:1px solid #999;padding:2px 6px;text-align:left}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>quantpipe summary</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


# --- figures -----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    # Leave the bottom strip free for the provenance footer.
    return Figure(
        figsize=(width, height), dpi=DPI, layout=ConstrainedLayoutEngine(rect=(0, 0.08, 1, 0.92))
    )


def _plain_log_axis(axis) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, ... rather than 2x10^1: readable at a glance."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


def _half_width(row, metric: str, scale: float = 1.0):
    low, high = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    return None if pd.isna(low) else (high - low) / 2 * scale


def _many_models(summary: pd.DataFrame) -> bool:
    return len(summary[["model", "width"]].drop_duplicates()) > 1


def _not_measured_handles(ax, summary: pd.DataFrame) -> None:
    """Unmeasured configurations stay visible: a legend entry with the reason, never a 0."""
    many = _many_models(summary)
    for _, row in summary[summary["status"] != "ok"].iterrows():
        ax.plot([], [], " ", label=f"{variant_label(row, many)}: not measured ({row['reason']})")


def plot_accuracy_vs_throughput(summary: pd.DataFrame) -> Figure:
    figure = _figure(9, 5)
    ax = figure.add_subplot()
    measured = summary[summary["status"] == "ok"].reset_index(drop=True)
    many = _many_models(summary)
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
            label=variant_label(row, many),
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
    batch = _distinct(measured["batch_size"]) or "—"
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
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
    figure = _figure(8, 5)
    ax = figure.add_subplot()
    int8 = summary[(summary["variant"] == "int8-cpu") & (summary["status"] == "ok")]
    many = _many_models(summary)
    lines = int8.groupby(
        ["model", "width", "method", "calibration_method"], dropna=False, sort=True
    )
    for i, ((model, width, method, calibration), group) in enumerate(lines):
        method = f"{method} {calibration}".strip()
        group = group.sort_values("calibration_size")
        sizes, deltas = group["calibration_size"], group["accuracy_delta_mean"] * 100
        errors = [_half_width(row, "accuracy_delta", 100) or 0 for _, row in group.iterrows()]
        label = f"{model_label(model, width)}: {method}" if many else method
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
    figure = _figure(10, _bar_height(len(summary)))
    speed_ax, size_ax = figure.subplots(1, 2, sharey=True)
    many = _many_models(summary)
    labels = [variant_label(row, many) for _, row in summary.iterrows()]
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
    figure = _figure(9, _bar_height(len(measured)))
    ax = figure.add_subplot()
    many = _many_models(summary)
    data, labels = [], []
    for _, row in measured.iterrows():
        same = np.ones(len(measurements), dtype=bool)
        for key in ["model", "variant", "method", "calibration_method"]:
            same &= (measurements[key] == row[key]).to_numpy()
        for key in ["width", "calibration_size"]:  # NaN: a model by reference; an FP32 row
            same &= _same_or_both_missing(measurements[key], row[key])
        calls = [
            value for latencies in measurements.loc[same, "latencies_ms"] for value in latencies
        ]
        if calls:
            data.append(calls)
            labels.append(f"{variant_label(row, many)} ({len(calls)} calls)")
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
        _plain_log_axis(ax.xaxis)
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


def _same_or_both_missing(column: pd.Series, value) -> np.ndarray:
    if pd.isna(value):
        return column.isna().to_numpy()
    return (column == value).to_numpy()


def render_figures(summary: pd.DataFrame, measurements: pd.DataFrame, footer: str) -> dict:
    figures = {
        "accuracy_vs_throughput": plot_accuracy_vs_throughput(summary),
        "accuracy_delta_vs_calibration": plot_accuracy_delta_vs_calibration(summary),
        "speedup_and_size": plot_speedup_and_size(summary),
        "latency_batch1": plot_latency_batch1(summary, measurements),
    }
    for figure in figures.values():
        # About 20 characters of 6-point text per inch of figure width.
        lines = textwrap.fill(footer, int(figure.get_figwidth() * 20))
        figure.text(0.01, 0.01, lines, fontsize=6, color="0.3", va="bottom")
    return figures


def save_figure(figure: Figure, path: str) -> None:
    kind = Path(path).suffix.removeprefix(".")
    # No creation date in the SVG: the same numbers give the same file.
    metadata = {"Date": None} if kind == "svg" else None
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=kind, metadata=metadata)


# --- the stage ---------------------------------------------------------------------------------


def run(
    report: str,
    benchmark_metrics: list[str],
    predictions: list[str],
    data: str,
    summary: str,
    markdown: str,
    tables: str,
    figures: list[str],
    config: dict,
    log=print,
) -> dict:
    """Summarize `report` over seeds with paired tests: a CSV, markdown, HTML and figures.

    `figures` are paths named `<figure>.<png|svg>`, the figure one of FIGURES. With
    `task: isbi2012_em` in `config`, quantpipe.tasks.isbi2012_em.summary writes the same outputs
    for the EM task.
    """
    if config.get("task") == "isbi2012_em":
        from quantpipe.tasks.isbi2012_em.summary import run as summarize_em

        return summarize_em(
            report, benchmark_metrics, predictions, data, summary, markdown, tables, figures,
            config, log,
        )  # fmt: skip
    unknown = sorted({Path(path).stem for path in figures} - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figures {unknown}: choose from {', '.join(FIGURES)}")
    table = pd.read_csv(report)
    digest = config_hash(config)
    log(f"summary: {len(table)} report rows, {len(benchmark_metrics)} benchmark files")
    labels = load_splits(data, config["val_size"])["test"][1]
    measurements = paired_measurements(benchmark_metrics, predictions, labels)
    result = summarize(table, measurements, digest)
    with atomic_path(summary) as tmp:
        result.to_csv(tmp, index=False)
    log(f"summary: {len(result)} configurations -> {summary}")
    facts = provenance(table, digest)
    pngs = {
        Path(p).stem: os.path.relpath(p, Path(markdown).parent)
        for p in figures
        if p.endswith(".png")
    }
    blocks = document(result, facts, pngs)
    with atomic_path(markdown) as tmp:
        tmp.write_text(to_markdown(blocks))
    with atomic_path(tables) as tmp:
        tmp.write_text(to_html(blocks))
    rendered = render_figures(result, measurements, "Provenance: " + provenance_line(facts))
    for path in figures:
        save_figure(rendered[Path(path).stem], path)
        log(f"summary: figure {path}")
    return {
        "stage": "summary",
        "configurations": len(result),
        "summary": summary,
        "markdown": markdown,
        "figures": figures,
    }
