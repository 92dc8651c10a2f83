import itertools

from quantpipe import tasks
from quantpipe.configuration import check_node_classes
from quantpipe.reporting.node_classes import GPU_CLASS
from quantpipe.models import references as model_refs
from quantpipe.optional import PEER_METHODS
from quantpipe.configuration import BUDGET_METHODS, SENSITIVITY_METHODS

# A run's folder (quantpipe.models.references.run_folder): {model}-w{width}-s{seed} for a built-in
# model, {folder}-s{seed} for a model by reference (torchvision.NAME, or pkg.module:callable as
# pkg.module.callable), which takes no width.
RUN = "{run}"
SUBMIT = "../scripts/submit_stage.py"
ENV = "../../envs/quantpipe.yaml"
# The task's torch-free facts (quantpipe.tasks.base.TaskSpec): its data folder, the settings each
# stage reads, its variants and figures. No rule names a task.
TASK = tasks.spec(config["task"])
DATA = TASK.data


# A node class the profile does not map (profiles/slurm, set-resources: benchmark:) stops here,
# before any job, with a message naming it.
check_node_classes(
    config["node_classes"],
    {
        name: resource.raw
        for name, resource in workflow.resource_settings.overwrite_resources.get(
            "benchmark", {}
        ).items()
    },
)


wildcard_constraints:
    run=model_refs.RUN_FOLDER,
    method="[a-z0-9]+",
    calibration_method="[a-z_]+",
    calibration_size="[0-9]+",
    node_class="[a-z0-9_]+",


def runs():
    """Every (model, width, seed) the config sweeps, as wildcard dicts ({run}: its folder);
    widths apply to built-in models only."""
    for model in config["models"]:
        widths = config["widths"] if model_refs.is_builtin(model) else [None]
        for width, seed in itertools.product(widths, config["seeds"]):
            yield {"run": model_refs.run_folder(model, width, seed)}


def gpu_precisions():
    """The precisions of the GPU variants ({precision}-gpu); bf16 and fp16 where the task's
    benchmark takes them (quantpipe.precision), else fp32 only."""
    if not config["benchmark"]["gpu"]:
        return []
    if not TASK.gpu_precisions:
        return ["fp32"]
    return config["benchmark"]["gpu_precisions"]


def cpu_variants():
    # A peer runtime (ONNX Runtime, OpenVINO) runs its own FP32 beside its INT8.
    variants = ["fp32-cpu"] + [
        f"fp32-cpu-{method}" for method in config["methods"] if method in PEER_METHODS
    ]
    for method, calibration_method, size in itertools.product(
        config["methods"], config["calibration_methods"], config["calibration_sizes"]
    ):
        variants.append(f"int8-cpu-{method}-{calibration_method}-c{size}")
        if config["accuracy_budget"] is not None and method in BUDGET_METHODS:
            variants.append(f"int8-cpu-{method}-{calibration_method}-c{size}-budget")
    return variants


def sensitivity_outputs(name):
    """Output `name` (table, metrics) of the sensitivity stage for every configuration accuracy
    control applies to: with accuracy_budget (whose search follows them) or
    sensitivity.enabled; none otherwise."""
    wanted = config["accuracy_budget"] is not None or config["sensitivity"]["enabled"]
    if not wanted:
        return []
    return [
        rules.sensitivity.output[name].format(
            **run, method=method, calibration_method=calibration, calibration_size=size
        )
        for run in runs()
        for method, calibration, size in itertools.product(
            config["methods"],
            config["calibration_methods"],
            config["calibration_sizes"],
        )
        if method in SENSITIVITY_METHODS
    ]


def quantize_config(wildcards):
    """What the quantize and sensitivity stages read of one INT8 configuration."""
    return {
        **run_config(wildcards),
        "method": wildcards.method,
        "calibration_method": wildcards.calibration_method,
        "calibration_size": int(wildcards.calibration_size),
        # Only qat reads (and so reruns on) the fine-tune's settings.
        **({"qat": config["qat"]} if wildcards.method == "qat" else {}),
        **task_settings("quantize"),
    }


def benchmark_jobs():
    """(node class, variant) of each benchmark of one run: every CPU variant on every node class
    of the config, the GPU variants once, as class `gpu` (the GPU partition's nodes)."""
    jobs = [
        (node_class, v) for node_class in config["node_classes"] for v in cpu_variants()
    ]
    return jobs + [(GPU_CLASS, f"{precision}-gpu") for precision in gpu_precisions()]


def benchmark_outputs(name):
    """Output `name` (metrics, predictions) of every benchmark job of every run."""
    return [
        rules.benchmark.output[name].format(
            **run, node_class=node_class, variant=variant
        )
        for run in runs()
        for node_class, variant in benchmark_jobs()
    ]


def run_config(wildcards):
    """What every stage of one run reads: the task, the model, width and seed, the task's
    run keys, and the model's `weights` entry when it imports trained weights (its file and
    the normalisation every stage then applies)."""
    run = model_refs.run_of_folder(wildcards.run, config["models"])
    entry = config["weights"].get(run["model"])
    return {
        "task": config["task"],
        **run,
        **{key: config[key] for key in TASK.run_keys},
        **({"weights": entry} if entry else {}),
    }


def train_inputs(wildcards):
    """The data, and the weights file of a run that imports one: a changed file reruns it."""
    entry = run_config(wildcards).get("weights")
    return {"data": DATA, **({"weights": entry["path"]} if entry else {})}


def train_config(wildcards):
    """The train stage's config: the recipe, or for imported weights only the device they are
    validated on, so that a changed recipe leaves imported runs alone."""
    run = run_config(wildcards)
    if "weights" in run:
        return {**run, "device": config["train"]["device"]}
    return {**run, **task_settings("train")}


def task_settings(section):
    """What the stage of config section `section` (train, quantize, benchmark) reads;
    "validation": what the task's validator adds, for accuracy control."""
    return TASK.stage_settings(config, section)


def data_config():
    """prepare_data's settings: the task and its keys of `data`, so another task's keys change
    nothing here."""
    return {"task": config["task"], **TASK.data_settings(config)}


def experiment_config():
    """The experiment, hashed into every summary output. Not `data`: where the data was copied
    from changes no number (the copy is verified by content hash), so it must not rerun the
    summary."""
    return {key: value for key, value in config.items() if key != "data"}


def int8_variant(variant):
    """'int8-cpu-{method}-{calibration_method}-c{size}[-budget]' -> (method, calibration_method,
    size, budgeted); None for the FP32 variants."""
    if not variant.startswith("int8-cpu-"):
        return None
    named = variant.removeprefix("int8-cpu-")
    budgeted = named.endswith("-budget")
    named, size = named.removesuffix("-budget").rsplit("-c", 1)
    method, calibration_method = named.split("-", 1)
    return method, calibration_method, int(size), budgeted


def benchmark_inputs(wildcards):
    inputs = {"model": rules.train.output.model.format(**wildcards), "data": DATA}
    int8 = int8_variant(wildcards.variant)
    if int8:
        made_by = rules.quantize_budget if int8[3] else rules.quantize
        configuration = {
            "method": int8[0],
            "calibration_method": int8[1],
            "calibration_size": int8[2],
        }
        inputs["artifact"] = made_by.output.artifact.format(
            **wildcards, **configuration
        )
        inputs["quantized"] = made_by.output.metrics.format(
            **wildcards, **configuration
        )
    return inputs


def benchmark_config(wildcards):
    settings = {
        **run_config(wildcards),
        **task_settings("benchmark"),
        "variant": wildcards.variant,
        "node_class": wildcards.node_class,
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
            **({"accuracy_budget": config["accuracy_budget"]} if int8[3] else {}),
        )
    return settings


def segment_variants():
    """For a volume task, the CPU variants that segment the whole volume (FP32 and each INT8)."""
    if TASK.segment_settings is None:
        return []
    return [
        variant
        for variant in cpu_variants()
        if variant == "fp32-cpu" or variant.startswith("int8-cpu-")
    ]


def segment_inputs(wildcards):
    inputs = benchmark_inputs(wildcards)
    inputs["volume"] = inputs.pop("data")
    inputs.pop(
        "quantized", None
    )  # the benchmark rows' record; the segmentation needs no row
    return inputs


def segment_config(wildcards):
    """quantpipe.stages.segment's config: the task's for this model, and the INT8 method."""
    int8 = int8_variant(wildcards.variant)
    model = run_config(wildcards)["model"]
    return {
        **TASK.segment_settings(config, model),
        "method": int8[0] if int8 else "fp32",
    }
