def benchmark_inputs(wildcards):
    inputs = {"model": rules.train.output.model.format(**wildcards), "data": DATA}
    if wildcards.variant.startswith("int8-cpu-"):
        method, size = wildcards.variant.removeprefix("int8-cpu-").rsplit("-c", 1)
        inputs["artifact"] = rules.quantize.output.artifact.format(
            **wildcards, method=method, calibration_size=size
        )
    return inputs


def benchmark_config(wildcards):
    settings = {**run_config(wildcards), **config["benchmark"], "variant": wildcards.variant}
    settings.pop("gpu")
    if wildcards.variant.startswith("int8-cpu-"):
        settings["variant"] = "int8-cpu"
        method, size = wildcards.variant.removeprefix("int8-cpu-").rsplit("-c", 1)
        settings.update(method=method, calibration_size=int(size))
    return settings


rule benchmark:
    input:
        unpack(benchmark_inputs),
    output:
        metrics=f"results/benchmark/{RUN}/{{variant}}/metrics.json",
        predictions=f"results/benchmark/{RUN}/{{variant}}/predictions.pt",
    wildcard_constraints:
        variant="fp32-cpu|int8-cpu-[a-z0-9]+-c[0-9]+",
    params:
        stage="benchmark",
        config=benchmark_config,
    log:
        f"logs/benchmark/{RUN}/{{variant}}.log",
    script:
        SUBMIT


# The same stage on a GPU node; a separate rule so profiles can send it to the GPU partition.
use rule benchmark as benchmark_gpu with:
    input:
        unpack(benchmark_inputs),
    wildcard_constraints:
        variant="fp32-gpu",
