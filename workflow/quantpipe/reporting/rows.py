"""Benchmark metrics files read as flat rows: each measurement with where it was measured
(report.csv's rows), and each measurement's batch-size curve (its `batch_curve`) as one row per
batch size (batch_sizes.csv's rows)."""

import pandas as pd

from quantpipe.artifacts import read_json

# What every task's rows lead with: the node class, the run, the variant and whether it was
# measured.
LEADING = [
    "node_class", "model", "width", "seed", "calibration_method", "calibration_size", "variant",
    "method", "device", "precision", "status", "reason",
]  # fmt: skip
# Where a row was measured (the metrics file's provenance), and the versions it ran with.
WHERE = [
    "threads", "cpu_model", "cpu_int8_flags", "gpu_name", "host", "slurm_node", "slurm_job_id",
    "slurm_partition", "git_commit", "date",
]  # fmt: skip
VERSIONS = ["torch", "torchvision", "torchao", "python"]


def benchmark_rows(metrics_path: str) -> list[dict]:
    """The rows of one benchmark metrics file, each with where it was measured."""
    return _with_context(read_json(metrics_path))


def ran_on(where: dict) -> str:
    """Where a record was measured (its provenance): the Slurm node and partition, or the host
    without Slurm (a profile without Slurm runs every node class there)."""
    if where.get("slurm_node"):
        return f"Slurm node {where['slurm_node']}, partition {where.get('slurm_partition')}"
    return f"{where.get('host')}, no Slurm"


def _with_context(record: dict) -> list[dict]:
    where = record["provenance"]
    context = {
        **{key: where.get(key) for key in WHERE},
        "ran_on": ran_on(where),
        **{key: where["versions"].get(key) for key in VERSIONS},
    }
    return [{**row, **context} for row in record["rows"]]


def curve_table(benchmark_metrics: list[str]) -> pd.DataFrame:
    """Every row's batch-size curve, one row per batch size: the row's leading keys, the batch
    size, the curve point's measurements and where it was measured. A row that was not measured
    gives each batch size its config asked for a row saying why, with no number. Rows without a
    curve (none asked for; a task that times none) give nothing."""
    entries, measured = [], []
    for path in benchmark_metrics:
        record = read_json(path)
        sizes = record["config"].get("batch_sizes", [])
        for row in _with_context(record):
            keys = {key: row.get(key) for key in LEADING}
            context = {key: row[key] for key in (*WHERE, "ran_on", *VERSIONS)}
            if row["status"] != "ok":
                entries += [{**keys, "batch_size": size, **context} for size in sizes]
                continue
            for point in row.get("batch_curve", []):
                entries.append({**keys, **point, **context})
                measured += [key for key in point if key not in measured]
    columns = [*LEADING, "batch_size", *(key for key in measured if key not in LEADING)]
    return pd.DataFrame(entries, columns=[*dict.fromkeys(columns), *WHERE, "ran_on", *VERSIONS])
