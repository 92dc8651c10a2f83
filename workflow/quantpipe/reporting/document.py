"""The summary's text: cells (estimates, variant labels), provenance, and a document as blocks
written out as markdown (summary.md) and as a standalone HTML page (tables.html).

A document is a list of blocks: ("h1"|"h2"|"p", text), ("table", header, rows) and
("image", alt, src).
"""

import datetime
import html

import pandas as pd

from quantpipe.reporting.aggregate import PROVENANCE_COLUMNS, date_range, distinct


def provenance(report: pd.DataFrame, config_digest: str) -> dict:
    """Where report.csv's numbers come from: config, commits, versions, machines and dates."""
    first = {column: distinct(report[column]) for column in PROVENANCE_COLUMNS}
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
        "measured": date_range(report["date"]),
    }


def provenance_line(facts: dict) -> str:
    return " · ".join(f"{key} {value}" for key, value in facts.items())


def provenance_block(facts: dict) -> tuple:
    """The paragraph under a document's title: the provenance and when it was summarized."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return "p", f"Provenance: {provenance_line(facts)} · summarized {now}"


def figure_blocks(figures: dict[str, str]) -> list[tuple]:
    """The Figures section: each figure's PNG (`figures`: name -> path from summary.md)."""
    return [
        ("h2", "Figures"),
        *[("image", name.replace("_", " "), src) for name, src in figures.items()],
    ]


def model_label(model: str, width) -> str:
    """'resnet18_cifar w16'; a model by reference has no width (NaN): its name alone."""
    return model if pd.isna(width) else f"{model} w{int(width)}"


def variant_label(row, with_model: bool = False, with_class: bool = False) -> str:
    """'FP32 CPU eager', 'INT8 CPU pt2e minmax c64', with the model and the node class ('amx:')
    in front if asked."""
    if row["variant"] == "int8-cpu":
        calibration = row.get("calibration_method")
        calibration = f" {calibration}" if isinstance(calibration, str) and calibration else ""
        label = f"INT8 CPU {row['method']}{calibration} c{int(row['calibration_size'])}"
    else:
        precision, device = row["variant"].split("-")
        label = f"{precision.upper()} {device.upper()} {row['method']}"
    if with_model:
        label = f"{model_label(row['model'], row['width'])}: {label}"
    return f"{row['node_class']}: {label}" if with_class else label


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
