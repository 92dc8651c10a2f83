rule quantize:
    input:
        model=rules.train.output.model,
        data=DATA,
    output:
        artifact=f"results/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}/int8.pt",
        metrics=f"results/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}/metrics.json",
    log:
        f"logs/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}.log",
    conda:
        ENV
    params:
        stage="quantize",
        config=lambda wildcards: {
            **run_config(wildcards),
            "method": wildcards.method,
            "calibration_method": wildcards.calibration_method,
            "calibration_size": int(wildcards.calibration_size),
            **config["quantize"],
        },
    script:
        SUBMIT
