import itertools

from quantpipe.configuration import PEER_METHODS

RUN = "{model}-w{width}-s{seed}"
SUBMIT = "../scripts/submit_stage.py"
ENV = "../../envs/quantpipe.yaml"
DATA = "resources/cifar-10-batches-py"


wildcard_constraints:
    model="[a-z0-9_]+",
    width="[0-9]+",
    seed="[0-9]+",
    method="[a-z0-9]+",
    calibration_method="[a-z_]+",
    calibration_size="[0-9]+",


def runs():
    """Every (model, width, seed) the config sweeps, as wildcard dicts."""
    for model, width, seed in itertools.product(
        config["models"], config["widths"], config["seeds"]
    ):
        yield {"model": model, "width": width, "seed": seed}


def gpu_precisions():
    """The precisions of the GPU variants ({precision}-gpu); bf16 and fp16 are the CIFAR
    benchmark's (quantpipe.precision), other tasks keep fp32."""
    if not config["benchmark"]["gpu"]:
        return []
    if config.get("task", "cifar10") != "cifar10":
        return ["fp32"]
    return config["benchmark"]["gpu_precisions"]


def benchmark_variants():
    variants = ["fp32-cpu"] + [f"{precision}-gpu" for precision in gpu_precisions()]
    # A peer runtime (ONNX Runtime, OpenVINO) runs its own FP32 beside its INT8.
    variants += [
        f"fp32-cpu-{method}" for method in config["methods"] if method in PEER_METHODS
    ]
    for method, calibration_method, size in itertools.product(
        config["methods"], config["calibration_methods"], config["calibration_sizes"]
    ):
        variants.append(f"int8-cpu-{method}-{calibration_method}-c{size}")
    return variants


def run_config(wildcards):
    return {
        "model": wildcards.model,
        "width": int(wildcards.width),
        "seed": int(wildcards.seed),
        "num_classes": config["num_classes"],
        "val_size": config["val_size"],
    }


def int8_variant(variant):
    """'int8-cpu-{method}-{calibration_method}-c{size}' -> (method, calibration_method, size);
    None for the FP32 variants."""
    if not variant.startswith("int8-cpu-"):
        return None
    named, size = variant.removeprefix("int8-cpu-").rsplit("-c", 1)
    method, calibration_method = named.split("-", 1)
    return method, calibration_method, int(size)


def benchmark_inputs(wildcards):
    inputs = {"model": rules.train.output.model.format(**wildcards), "data": DATA}
    int8 = int8_variant(wildcards.variant)
    if int8:
        inputs["artifact"] = rules.quantize.output.artifact.format(
            **wildcards,
            method=int8[0],
            calibration_method=int8[1],
            calibration_size=int8[2],
        )
    return inputs


def benchmark_config(wildcards):
    settings = {
        **run_config(wildcards),
        **config["benchmark"],
        "variant": wildcards.variant,
    }
    settings.pop("gpu")
    settings.pop("gpu_precisions", None)  # the variant names its own precision
    if wildcards.variant.startswith("fp32-cpu-"):
        settings.update(
            variant="fp32-cpu", method=wildcards.variant.removeprefix("fp32-cpu-")
        )
    int8 = int8_variant(wildcards.variant)
    if int8:
        settings.update(
            variant="int8-cpu",
            method=int8[0],
            calibration_method=int8[1],
            calibration_size=int8[2],
        )
    return settings
