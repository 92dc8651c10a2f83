rule report:
    input:
        benchmark_metrics=benchmark_outputs("metrics"),
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
        # GPU rows compare with FP32 CPU eager of the first node class.
        config={"node_classes": config["node_classes"]},
    script:
        SUBMIT
