rule report:
    input:
        benchmark_metrics=[
            f"results/benchmark/{RUN}/{variant}/metrics.json".format(**run)
            for run in runs()
            for variant in benchmark_variants()
        ],
        train_metrics=[rules.train.output.metrics.format(**run) for run in runs()],
    output:
        report="results/report.csv",
        # The batch-size curves (benchmark.batch_sizes), a row per measurement and batch size.
        batch_sizes="results/batch_sizes.csv",
    log:
        "logs/report/report.log",
    conda:
        ENV
    params:
        stage="report",
    script:
        SUBMIT
