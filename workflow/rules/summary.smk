# The figures of the summary stage, the task's (quantpipe.tasks' TaskSpec.figures, which the stage
# checks the names against): each a PNG shown in the HTML report with its caption from
# workflow/report/, and an SVG beside it.
SUMMARY_FIGURES = {
    "cifar10": [
        "accuracy_vs_throughput",
        "accuracy_delta_vs_calibration",
        "speedup_and_size",
        "latency_batch1",
    ],
    "isbi2012_em": ["quality_vs_throughput", "cost_per_mm3"],
}[TASK]


rule summary:
    input:
        report=rules.report.output.report,
        benchmark_metrics=[
            rules.benchmark.output.metrics.format(**run, variant=variant)
            for run in runs()
            for variant in benchmark_variants()
        ],
        predictions=[
            rules.benchmark.output.predictions.format(**run, variant=variant)
            for run in runs()
            for variant in benchmark_variants()
        ],
        data=DATA,
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary_csv.rst",
            category="Summary",
            subcategory="Tables",
            labels={"table": "summary.csv (every number)"},
        ),
        markdown=report(
            "results/summary.md",
            caption="../report/summary_md.rst",
            category="Summary",
            subcategory="Tables",
            labels={"table": "summary.md (download)"},
        ),
        tables=report(
            "results/summary/tables.html",
            caption="../report/tables.rst",
            category="Summary",
            subcategory="Tables",
            labels={"table": "Table 1, best INT8, paired tests"},
        ),
        figures=[
            path
            for name in SUMMARY_FIGURES
            for path in (
                report(
                    f"results/summary/{name}.png",
                    caption=f"../report/{name}.rst",
                    category="Summary",
                    subcategory="Figures",
                    labels={"figure": name.replace("_", " ")},
                ),
                f"results/summary/{name}.svg",
            )
        ],
    log:
        "logs/summary/summary.log",
    conda:
        ENV
    params:
        stage="summary",
        config=experiment_config(),
    script:
        SUBMIT
