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
        config=lambda wildcards: {
            **run_config(wildcards),
            "method": wildcards.method,
            "calibration_method": wildcards.calibration_method,
            "calibration_size": int(wildcards.calibration_size),
            # Only qat reads (and so reruns on) the fine-tune's settings.
            **({"qat": config["qat"]} if wildcards.method == "qat" else {}),
            **task_settings("quantize"),
        },
    script:
        SUBMIT


# qat fine-tunes the model (quantization-aware training): a separate rule so profiles can send it
# to the GPU partition. Without a usable GPU it runs on the CPU and records why.
use rule quantize as quantize_gpu with:
    wildcard_constraints:
        method="qat",
