# Per-layer sensitivity of one INT8 configuration (quantpipe.stages.sensitivity): each quantized
# layer left in FP32 in turn, scored on a fixed validation subset. The budgeted quantize below
# follows its ranking; the summary shows the most sensitive layers.
rule sensitivity:
    input:
        model=rules.train.output.model,
        data=DATA,
    output:
        table=f"results/sensitivity/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}/sensitivity.csv",
        metrics=f"results/sensitivity/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}/metrics.json",
    log:
        f"logs/sensitivity/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}.log",
    conda:
        ENV
    params:
        stage="sensitivity",
        config=lambda wildcards: {
            **quantize_config(wildcards),
            **task_settings("validation"),
            "sensitivity_items": config["sensitivity"]["items"],
        },
    script:
        SUBMIT
