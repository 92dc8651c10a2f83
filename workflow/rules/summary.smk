# The task's summary figures (TaskSpec.figures), and the per-layer sensitivity where it runs:
# each a PNG shown in the HTML report with its caption from workflow/report/, and an SVG beside it.
SUMMARY_FIGURES = [
    *TASK.figures,
    *(["sensitivity"] if sensitivity_outputs("metrics") else []),
]


rule summary:
    input:
        report=rules.report.output.report,
        benchmark_metrics=benchmark_outputs("metrics"),
        predictions=benchmark_outputs("predictions"),
        data=DATA,
        sensitivity=sensitivity_outputs("metrics"),
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
