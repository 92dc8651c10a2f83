rule quantize:
    input:
        model=rules.train.output.model,
        data=DATA,
    output:
        artifact=f"results/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}/int8.pt",
        metrics=f"results/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}/metrics.json",
    log:
        f"logs/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}.log",
    wildcard_constraints:
        # Every method but qat, which trains: quantize_gpu below.
        method="(?!qat-)[a-z0-9]+",
    conda:
        ENV
    params:
        stage="quantize",
        config=quantize_config,
    script:
        SUBMIT


# qat fine-tunes the model (quantization-aware training): a separate rule so profiles can send it
# to the GPU partition. Without a usable GPU it runs on the CPU and records why.
use rule quantize as quantize_gpu with:
    wildcard_constraints:
        method="qat",


# INT8 within config `accuracy_budget`: the fewest layers, most sensitive first by the
# sensitivity stage's ranking, kept in FP32 (variant int8-cpu-{method}-{calibration}-c{size}-budget).
use rule quantize as quantize_budget with:
    input:
        model=rules.train.output.model,
        data=DATA,
        # The sensitivity ranking quantpipe's search follows; openvino uses NNCF's own.
        sensitivity=lambda wildcards: (
            rules.sensitivity.output.metrics
            if wildcards.method in SENSITIVITY_METHODS
            else []
        ),
    output:
        artifact=f"results/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}-budget/int8.pt",
        metrics=f"results/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}-budget/metrics.json",
    log:
        f"logs/quantize/{RUN}/{{method}}-{{calibration_method}}-c{{calibration_size}}-budget.log",
    wildcard_constraints:
        method="|".join(BUDGET_METHODS),
    params:
        stage="quantize",
        config=lambda wildcards: {
            **quantize_config(wildcards),
            **task_settings("validation"),
            "accuracy_budget": config["accuracy_budget"],
        },
