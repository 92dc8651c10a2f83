"""report.csv's rows summarized over seeds: one row per configuration, each measurement as mean,
sd, n and 95% interval, with why seeds went unmeasured and where the numbers were measured."""

from collections.abc import Callable

import pandas as pd

from quantpipe.reporting.stats import mean_interval

# Seeds are what varies inside a group; everything else names the configuration, the node class
# first: no statistic mixes classes.
GROUP_KEYS = [
    "node_class", "model", "width", "variant", "method", "calibration_method", "calibration_size",
    "batch_size",
]  # fmt: skip
# report.csv's columns that say where a row was measured (quantpipe.stages.report).
PROVENANCE_COLUMNS = [
    "git_commit", "torch", "torchvision", "torchao", "python", "cpu_model", "cpu_int8_flags",
    "gpu_name", "threads", "ran_on", "host", "date",
]  # fmt: skip


def comparable_keys(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its keys in one form, so that tables read from different files merge and
    group alike: calibration sizes as floats (NaN for FP32 rows), calibration methods as text
    ("" where none: FP32 rows, metrics written before the knob), widths as numbers (NaN for a
    model by reference, whose width is None)."""
    table = table.copy()
    table["calibration_size"] = table["calibration_size"].astype(float)
    if "calibration_method" not in table:  # a report.csv written before the knob
        table["calibration_method"] = ""
    methods = table["calibration_method"].astype(object)
    table["calibration_method"] = methods.where(methods.notna(), "").astype(str)
    table["width"] = pd.to_numeric(table["width"])
    return table


def distinct(values) -> str:
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


def date_range(values) -> str:
    """The first and last of the dates, or the one date, as text ("" where none)."""
    dates = sorted(str(value) for value in values if not pd.isna(value))
    if not dates:
        return ""
    return dates[0] if dates[0] == dates[-1] else f"{dates[0]} .. {dates[-1]}"


def same_or_both_missing(column: pd.Series, value):
    """Where `column` equals `value`, NaN matching NaN (a model by reference has no width)."""
    if pd.isna(value):
        return column.isna().to_numpy()
    return (column == value).to_numpy()


def over_seeds(
    report: pd.DataFrame,
    metrics: list[str],
    config_digest: str,
    columns: Callable[[tuple, pd.DataFrame], dict] | None = None,
) -> pd.DataFrame:
    """report.csv's rows aggregated over seeds, one row per configuration and node class
    (GROUP_KEYS).

    Each metric gets mean, sd, n and ci95_low/high over the measured seeds; a configuration that
    no seed measured is "skipped" with the reasons. `columns(keys, measured rows)` adds a task's
    own columns (e.g. a paired test) before the config hash and provenance.
    """
    report = comparable_keys(report)
    rows = []
    for keys, group in report.groupby(GROUP_KEYS, dropna=False, sort=False):
        measured = group[group["status"] == "ok"]
        reasons = distinct(group.loc[group["status"] != "ok", "reason"])
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
        for metric in metrics:
            for statistic, value in mean_interval(measured[metric]).items():
                row[f"{metric}_{statistic}"] = value
        if columns is not None:
            row.update(columns(keys, measured))
        row["config_hash"] = config_digest
        for column in PROVENANCE_COLUMNS:
            row[column] = (date_range if column == "date" else distinct)(group[column])
        rows.append(row)
    order = GROUP_KEYS[:-1]
    return pd.DataFrame(rows).sort_values(order, na_position="first").reset_index(drop=True)
