import itertools

from quantpipe.models import references as model_refs
from quantpipe.configuration import PEER_METHODS

# A run's folder (quantpipe.models.references.run_folder): {model}-w{width}-s{seed} for a built-in model,
# {folder}-s{seed} for a model by reference (torchvision.NAME, or pkg.module:callable as
# pkg.module.callable), which takes no width.
RUN = "{run}"
SUBMIT = "../scripts/submit_stage.py"
ENV = "../../envs/quantpipe.yaml"
TASK = config["task"]
DATA = {
    "cifar10": "resources/cifar-10-batches-py",
    "isbi2012_em": "resources/isbi2012-em.zarr",
}[TASK]
# Task isbi2012_em: the `em` keys each stage reads, and the keys of the stage's own config
# section that still apply (the rest of train, quantize, benchmark is the CIFAR recipe). A stage
# reruns only when a setting it reads changes.
EM_SETTINGS = {
    "train": ("sections", "patch_size", "epochs", "steps_per_epoch", "batch_size", "lr",
              "weight_decay", "membrane_weight"),
    "quantize": ("sections", "tile"),
    "benchmark": ("sections", "tile", "overlap", "section_overlap", "inference_batch_size",
                  "threshold"),
}  # fmt: skip
EM_SHARED_SETTINGS = {
    "train": ("device", "log_every"),
    "quantize": ("calibration_batch_size",),
    "benchmark": ("gpu",),
}


wildcard_constraints:
    run=model_refs.RUN_FOLDER,
    method="[a-z0-9]+",
    calibration_method="[a-z_]+",
    calibration_size="[0-9]+",


def runs():
    """Every (model, width, seed) the config sweeps, as wildcard dicts ({run}: its folder);
    widths apply to built-in models only."""
    for model in config["models"]:
        widths = config["widths"] if model_refs.is_builtin(model) else [None]
        for width, seed in itertools.product(widths, config["seeds"]):
            yield {"run": model_refs.run_folder(model, width, seed)}


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
    run = model_refs.run_of_folder(wildcards.run, config["models"])
    if TASK == "cifar10":
        return {
            **run,
            "num_classes": config["num_classes"],
            "val_size": config["val_size"],
        }
    return {"task": TASK, **run}


def task_settings(section):
    """What the stage of config section `section` (train, quantize, benchmark) reads."""
    if TASK == "cifar10":
        return dict(config[section])
    return {
        **{key: config[section][key] for key in EM_SHARED_SETTINGS[section]},
        **{key: config["em"][key] for key in EM_SETTINGS[section]},
    }


def data_config():
    """prepare_data's settings: the data keys of this task only, so the other task's change
    nothing here."""
    if TASK == "cifar10":
        return {
            key: value
            for key, value in config["data"].items()
            if not key.startswith("isbi2012_")
        }
    return {
        "task": TASK,
        **{
            key: config["data"][key]
            for key in ("isbi2012_copy", "isbi2012_url", "allow_download")
        },
    }


def experiment_config():
    """The experiment, hashed into every summary output. Not `data`: where the data was copied
    from changes no number (the copy is verified by content hash), so it must not rerun the
    summary; nor, for CIFAR, the em task's keys."""
    excluded = {"data"} | ({"task", "em"} if TASK == "cifar10" else set())
    return {key: value for key, value in config.items() if key not in excluded}


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
        **task_settings("benchmark"),
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


def segment_variants():
    """Task isbi2012_em: the CPU variants that segment the whole stack (FP32 and each INT8)."""
    if TASK == "cifar10":
        return []
    return [
        variant
        for variant in benchmark_variants()
        if variant == "fp32-cpu" or variant.startswith("int8-cpu-")
    ]


def segment_inputs(wildcards):
    inputs = benchmark_inputs(wildcards)
    inputs["volume"] = inputs.pop("data")
    return inputs


def segment_config(wildcards):
    """quantpipe.stages.segment's config: the benchmark's tiling of this model, on the CPU."""
    from quantpipe.tasks.isbi2012_em.benchmark import tiling

    em = config["em"]
    geometry = tiling(
        {"model": run_config(wildcards)["model"]}
        | {key: em[key] for key in ("sections", "tile", "overlap", "section_overlap")}
    )
    int8 = int8_variant(wildcards.variant)
    return {
        **{key: list(value) if isinstance(value, tuple) else value
           for key, value in geometry.items()},
        "batch_size": em["inference_batch_size"],
        "method": int8[0] if int8 else "fp32",
        "device": "cpu",
    }  # fmt: skip
