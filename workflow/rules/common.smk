import itertools

RUN = "{model}-w{width}-s{seed}"
SUBMIT = "../scripts/submit_stage.py"
DATA = "resources/cifar-10-batches-py"


wildcard_constraints:
    model="[a-z0-9_]+",
    width="[0-9]+",
    seed="[0-9]+",
    method="[a-z0-9]+",
    calibration_size="[0-9]+",


def runs():
    """Every (model, width, seed) the config sweeps, as wildcard dicts."""
    for model, width, seed in itertools.product(
        config["models"], config["widths"], config["seeds"]
    ):
        yield {"model": model, "width": width, "seed": seed}


def benchmark_variants():
    variants = ["fp32-cpu"] + (["fp32-gpu"] if config["benchmark"]["gpu"] else [])
    for method, size in itertools.product(config["methods"], config["calibration_sizes"]):
        variants.append(f"int8-cpu-{method}-c{size}")
    return variants


def run_config(wildcards):
    return {
        "model": wildcards.model,
        "width": int(wildcards.width),
        "seed": int(wildcards.seed),
        "num_classes": config["num_classes"],
        "val_size": config["val_size"],
    }
