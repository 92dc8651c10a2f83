"""The report stage: merge every benchmark metrics file into one tidy CSV, a row per measurement.

Each row fills the columns its task measures and leaves the rest empty: classifiers accuracy and
images/s; the membrane task pixel_error, v_rand, v_info and their deltas, voxels_per_s and
job_hours_per_mm3. COLUMNS lists both, so one CSV reads alike for every task. Speedups
compare each row's own throughput (images/s or voxels/s) with FP32 CPU eager of the same run.
`job_hours_per_mm3` is per job with the row's `threads`: the hours one such job would need to
segment a cubic millimetre at 4x4x40 nm (1.5625e15 voxels) at the measured voxels/s, which is
node-hours where a job has the whole node.
"""

import pandas as pd

from quantpipe.artifacts import atomic_path, read_json

RUN_KEYS = ["model", "width", "seed"]
COLUMNS = [
    "model", "width", "seed", "calibration_method", "calibration_size", "variant", "method",
    "device", "precision", "status", "reason", "accuracy", "accuracy_delta", "val_accuracy_fp32",
    "pixel_error", "pixel_error_delta", "v_rand", "v_rand_delta", "v_info", "v_info_delta",
    "val_pixel_error_fp32", "images_per_s", "voxels_per_s", "job_hours_per_mm3",
    "test_set_seconds", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
    "speedup_vs_fp32_cpu_eager", "speedup_vs_best_fp32_cpu", "size_mb", "size_ratio",
    "macs_per_image", "achieved_gmac_per_s", "ceiling_gmac_per_s", "fraction_of_ceiling",
    "fraction_of_ceiling_batch1", "batch_size", "threads", "cpu_model", "cpu_int8_flags",
    "gpu_name", "host", "slurm_job_id", "slurm_partition", "torch", "torchvision", "torchao",
    "python", "git_commit", "date",
]  # fmt: skip
# Measured figures each compared with FP32 CPU eager of the same run as `{name}_delta`.
QUALITY = ["accuracy", "pixel_error", "v_rand", "v_info"]


def _rows(metrics_path: str) -> list[dict]:
    record = read_json(metrics_path)
    where = record["provenance"]
    context = {
        **{key: where.get(key) for key in ("threads", "cpu_model", "cpu_int8_flags", "gpu_name",
                                             "host", "slurm_job_id", "slurm_partition",
                                             "git_commit", "date")},
        **{key: where["versions"].get(key) for key in ("torch", "torchvision", "torchao",
                                                         "python")},
    }  # fmt: skip
    return [{**row, **context} for row in record["rows"]]


def build(benchmark_metrics: list[str], train_metrics: list[str]) -> pd.DataFrame:
    table = pd.DataFrame([row for path in benchmark_metrics for row in _rows(path)])
    if table.empty:
        raise ValueError(
            f"no benchmark rows in {len(benchmark_metrics)} metrics files: nothing to report"
        )
    trained = pd.DataFrame(
        [
            {**{key: record["config"][key] for key in RUN_KEYS},
             "val_accuracy_fp32": record.get("val_accuracy"),
             "val_pixel_error_fp32": record.get("val_pixel_error")}
            for record in map(read_json, train_metrics)
        ]
    )  # fmt: skip
    table = table.merge(trained, on=RUN_KEYS, how="left")
    # Every measured column, empty where a row's task has none.
    table = table.reindex(columns=[*table.columns, *(c for c in COLUMNS if c not in table)])
    table["size_mb"] = table["size_bytes"] / 1e6
    table["rate"] = table["images_per_s"].fillna(table["voxels_per_s"])
    fp32 = table[(table["variant"] == "fp32-cpu") & (table["status"] == "ok")]
    baseline = fp32[fp32["method"] == "eager"].set_index(RUN_KEYS)
    best = fp32.groupby(RUN_KEYS)["rate"].max()
    keys = pd.MultiIndex.from_frame(table[RUN_KEYS])
    for name in QUALITY:
        table[f"{name}_delta"] = table[name] - baseline[name].reindex(keys).to_numpy()
    table["speedup_vs_fp32_cpu_eager"] = table["rate"] / baseline["rate"].reindex(keys).to_numpy()
    table["speedup_vs_best_fp32_cpu"] = table["rate"] / best.reindex(keys).to_numpy()
    table["size_ratio"] = baseline["size_bytes"].reindex(keys).to_numpy() / table["size_bytes"]
    table = table.reindex(columns=COLUMNS)
    order = ["model", "width", "seed", "variant", "calibration_method", "calibration_size"]
    order.append("method")
    return table.sort_values(order, na_position="first").reset_index(drop=True)


def run(benchmark_metrics: list[str], train_metrics: list[str], report: str, log=print) -> dict:
    table = build(benchmark_metrics, train_metrics)
    with atomic_path(report) as tmp:
        table.to_csv(tmp, index=False)
    log(f"report: {len(table)} rows from {len(benchmark_metrics)} benchmark files -> {report}")
    return {"stage": "report", "rows": len(table), "report": report}
