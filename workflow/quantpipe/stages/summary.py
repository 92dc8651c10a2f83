"""The summary stage: the report people read, built on results/report.csv.

The task (quantpipe.tasks) aggregates report.csv's rows over seeds into summary.csv, lays out
summary.md (written again as HTML for Snakemake's report) and draws its figures, each saved as
PNG and SVG. Every output says where its numbers come from: config hash, git commit, versions,
hardware, threads and dates.
"""

import os
from pathlib import Path

import pandas as pd

from quantpipe import tasks
from quantpipe.artifacts import atomic_path
from quantpipe.reporting import sensitivity as layer_sensitivity
from quantpipe.reporting.document import provenance, provenance_line, to_html, to_markdown
from quantpipe.reporting.figures import save_figure
from quantpipe.reporting.stats import config_hash


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
    sensitivity: list[str] | None = None,
    log=print,
) -> dict:
    """Summarize `report` over seeds: a CSV, markdown, HTML and figures.

    `figures` are paths named `<figure>.<png|svg>`, the figure one of the task's (its
    TaskSpec.figures) or `sensitivity`, drawn from the sensitivity stage's records
    `sensitivity`.
    """
    task = tasks.load(config.get("task"))
    known = [*task.spec.figures, *(["sensitivity"] if sensitivity else [])]
    unknown = sorted({Path(path).stem for path in figures} - set(known))
    if unknown:
        raise ValueError(
            f"unknown figures {unknown} for task {task.spec.name!r}: choose from {', '.join(known)}"
        )
    table = pd.read_csv(report)
    digest = config_hash(config)
    log(f"summary: {len(table)} report rows, {len(benchmark_metrics)} benchmark files")
    result, extra = task.summary_table(table, digest, benchmark_metrics, predictions, data, config)
    with atomic_path(summary) as tmp:
        result.to_csv(tmp, index=False)
    log(f"summary: {len(result)} configurations -> {summary}")
    facts = provenance(table, digest)
    pngs = {
        Path(p).stem: os.path.relpath(p, Path(markdown).parent)
        for p in figures
        if p.endswith(".png")
    }
    ranked = layer_sensitivity.configurations(sensitivity or [])
    blocks = task.summary_document(result, extra, facts, pngs) + layer_sensitivity.blocks(ranked)
    with atomic_path(markdown) as tmp:
        tmp.write_text(to_markdown(blocks))
    with atomic_path(tables) as tmp:
        tmp.write_text(to_html(blocks))
    footer = "Provenance: " + provenance_line(facts)
    rendered = task.summary_figures(result, extra, footer)
    if ranked:
        rendered["sensitivity"] = layer_sensitivity.figure(ranked, footer)
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
