"""The report stage: merge every benchmark metrics file into one tidy CSV, a row per measurement.

The task (TaskSpec) names its measured columns, which of them are quality figures (each also as
`{name}_delta`, the difference from FP32 CPU eager), its rate (images/s, voxels/s) and its
validation score. Every comparison is with FP32 CPU eager of the same run on the same node class
(a GPU row: on the config's first class; `baseline_node_class`). Speedups are timed beside it in
the row's own job where the task paired them (`paired_speedup`), else (and always in
`speedup_vs_fp32_cpu_eager_unpaired`) the ratio of the two jobs' rates. Every row also carries the
columns every task shares (node class, run, variant, size, provenance, where it ran and the other
jobs seen on its node).

The batch-size curves (benchmark.batch_sizes; the rows' `batch_curve` lists) stay out of
report.csv, whose rows are one per measurement: batch_sizes.csv holds them, a row per
measurement and batch size (quantpipe.reporting.rows.curve_table).
"""

import pandas as pd

from quantpipe import tasks
from quantpipe.artifacts import atomic_path, read_json
from quantpipe.reporting.node_classes import baseline_class
from quantpipe.reporting.rows import LEADING, benchmark_rows, curve_table
from quantpipe.tasks.base import TaskSpec

RUN_KEYS = ["model", "width", "seed"]
# What a row compares with: FP32 CPU eager of the same run on the same node class (a GPU row:
# the first class of the config, quantpipe.reporting.node_classes).
BASELINE_KEYS = ["baseline_node_class", *RUN_KEYS]
# Every task's rows lead with reporting.rows.LEADING; the task's own measured columns
# (TaskSpec.report_columns) go after it, its validation score before the speed columns.
TRAILING = [
    "test_set_seconds", "speedup_vs_fp32_cpu_eager", "speedup_vs_fp32_cpu_eager_unpaired",
    "speedup_vs_best_fp32_cpu", "baseline_node_class", "size_mb", "size_ratio", "accuracy_budget",
    "fp32_layers", "batch_size",
    "threads", "cpu_model", "cpu_int8_flags", "gpu_name", "ran_on", "host", "slurm_node",
    "slurm_job_id", "slurm_partition",
    "neighbours_at_start", "neighbours_at_end", "neighbour_jobs", "neighbours_reason", "torch",
    "torchvision", "torchao", "python", "git_commit", "date",
]  # fmt: skip


def columns(task: TaskSpec) -> list[str]:
    """report.csv's columns for `task`: the shared ones around the task's own, each quality
    column followed by its difference from FP32 CPU eager."""
    measured = []
    for name in task.report_columns:
        measured += [name, f"{name}_delta"] if name in task.quality else [name]
    return [*LEADING, *measured, f"{task.validation_score}_fp32", *TRAILING]


def build(
    benchmark_metrics: list[str], train_metrics: list[str], node_classes: list[str]
) -> pd.DataFrame:
    """report.csv's table; `node_classes` as in the config (the GPU rows compare with the
    first)."""
    table = pd.DataFrame([row for path in benchmark_metrics for row in benchmark_rows(path)])
    if table.empty:
        raise ValueError(
            f"no benchmark rows in {len(benchmark_metrics)} metrics files: nothing to report"
        )
    task = tasks.spec(read_json(benchmark_metrics[0]).get("config", {}).get("task"))
    score = task.validation_score
    trained = pd.DataFrame(
        [
            {**{key: record["config"][key] for key in RUN_KEYS}, f"{score}_fp32": record.get(score)}
            for record in map(read_json, train_metrics)
        ]
    )  # fmt: skip
    table = table.merge(trained, on=RUN_KEYS, how="left")
    wanted = columns(task)
    # Every column, empty where no row has it (a variant that was skipped measures nothing).
    table = table.reindex(columns=[*table.columns, *(c for c in wanted if c not in table)])
    table["size_mb"] = table["size_bytes"] / 1e6
    table["rate"] = table[task.rate]
    table["baseline_node_class"] = [
        baseline_class(node_class, node_classes) for node_class in table["node_class"]
    ]
    is_fp32 = (table["variant"] == "fp32-cpu") & (table["status"] == "ok")
    baseline = table[is_fp32 & (table["method"] == "eager")].set_index(BASELINE_KEYS)
    keys = pd.MultiIndex.from_frame(table[BASELINE_KEYS])
    for name in task.quality:
        table[f"{name}_delta"] = table[name] - baseline[name].reindex(keys).to_numpy()
    unpaired = table["rate"] / baseline["rate"].reindex(keys).to_numpy()
    table["speedup_vs_fp32_cpu_eager_unpaired"] = unpaired
    # The pair timed in the row's own process where the task measured one (CPU rows), else the
    # ratio of the two jobs' rates (GPU rows, tasks without pairs).
    paired = table.get("paired_speedup")
    speedup = unpaired if paired is None else paired.fillna(unpaired)
    table["speedup_vs_fp32_cpu_eager"] = speedup
    best = speedup[is_fp32].groupby([table[key] for key in BASELINE_KEYS]).max()
    table["speedup_vs_best_fp32_cpu"] = speedup / best.reindex(keys).to_numpy()
    table["size_ratio"] = baseline["size_bytes"].reindex(keys).to_numpy() / table["size_bytes"]
    table = table.reindex(columns=wanted)
    order = ["node_class", "model", "width", "seed", "variant", "calibration_method"]
    order.append("calibration_size")
    order.append("method")
    return table.sort_values(order, na_position="first").reset_index(drop=True)


def run(
    benchmark_metrics: list[str],
    train_metrics: list[str],
    report: str,
    batch_sizes: str,
    config: dict,
    log=print,
) -> dict:
    """report.csv to `report`; the batch-size curves (benchmark.batch_sizes), one row per
    measurement and batch size, to `batch_sizes` (only its header where none was asked for).
    `config`: {"node_classes": [...]}, as in the experiment's config."""
    table = build(benchmark_metrics, train_metrics, config["node_classes"])
    with atomic_path(report) as tmp:
        table.to_csv(tmp, index=False)
    log(f"report: {len(table)} rows from {len(benchmark_metrics)} benchmark files -> {report}")
    curve = curve_table(benchmark_metrics)
    with atomic_path(batch_sizes) as tmp:
        curve.to_csv(tmp, index=False)
    log(f"report: {len(curve)} batch-size curve rows -> {batch_sizes}")
    return {"stage": "report", "rows": len(table), "report": report, "batch_sizes": batch_sizes}
