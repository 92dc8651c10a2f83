"""Config coming from the command line, made to match the schema before validation.

Snakemake parses `--config seeds=[0,1,2]` with YAML's BaseLoader, so every scalar inside arrives as
a string ("0"); `--config 'train={epochs: 2}'` likewise. This converts such strings to the type the
schema declares for that key, and leaves anything it cannot convert for the validator to reject
with its own message.
"""

import importlib.util

import yaml

from quantpipe.models import references as model_refs

CONVERTERS = {
    "integer": int,
    "number": float,
    "boolean": lambda text: {"true": True, "false": False}[text.lower()],
}


def _coerce(value, schema: dict):
    if isinstance(value, str) and schema.get("type") in CONVERTERS:
        try:
            return CONVERTERS[schema["type"]](value)
        except (ValueError, KeyError):
            return value
    if isinstance(value, list) and "items" in schema:
        return [_coerce(item, schema["items"]) for item in value]
    if isinstance(value, dict) and "properties" in schema:
        return {
            key: _coerce(item, schema["properties"].get(key, {})) for key, item in value.items()
        }
    return value


def coerce_to_schema(config: dict, schema_path: str) -> None:
    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    config.update(_coerce(dict(config), schema))


CIFAR10_TRAIN_IMAGES = 50_000
# Methods from the optional `peers` extra and the packages each imports (quantpipe.quantize.peers).
PEER_METHODS = {
    "onnxruntime": ("onnx", "onnxruntime", "onnxscript"),
    "openvino": ("openvino", "nncf"),
}
PEERS_INSTALL = "pip install -e .[peers]"
# What each task may run: its built-in models (quantpipe.models.RESNETS and UNETS, spelled out so
# that the Snakefile need not import torch; cifar10 also takes models by reference,
# quantpipe.models.references), and for isbi2012_em the quantize methods its stages take.
TASK_MODELS = {"cifar10": ("resnet18", "resnet18_cifar"), "isbi2012_em": ("unet2d", "unet3d_aniso")}
EM_METHODS = ("pt2e", "eager")
EM_POOLING = 8  # quantpipe.models.unet.MIN_SIZE: in-plane sizes must be multiples of it


def check_consistency(config: dict) -> None:
    """Rules across keys, which a JSON schema cannot state; raise before any job is submitted."""
    task = config.get("task", "cifar10")
    models = list(config.get("models", ()))
    model_refs.check_config(models, config.get("widths", model_refs.DEFAULT_WIDTHS))
    allowed = TASK_MODELS[task]
    foreign = [model for model in models if model_refs.is_builtin(model) and model not in allowed]
    if foreign:
        raise ValueError(
            f"models {foreign} do not belong to task {task!r}: for task {task!r} choose models "
            f"from {', '.join(allowed)}"
        )
    references = [model for model in models if not model_refs.is_builtin(model)]
    if references and task != "cifar10":
        raise ValueError(
            f"models {references} are references to image classifiers, which task {task!r} "
            f"does not train: for task {task!r} choose models from {', '.join(allowed)}"
        )
    if task == "isbi2012_em":
        _check_em(config)
    else:
        _check_cifar10(config)
    # Last, as it imports torch and builds each network: only for models by reference (the
    # built-ins are tested with every method).
    for model in references:
        model_refs.check(model, config.get("num_classes", 10), config.get("methods", ()))


def _check_em(config: dict) -> None:
    unsupported = [method for method in config["methods"] if method not in EM_METHODS]
    if unsupported:
        raise ValueError(
            f"methods {unsupported} are not supported for task 'isbi2012_em': choose methods "
            f"from {', '.join(EM_METHODS)}"
        )
    em = config["em"]
    for key in ("patch_size", "tile"):
        if em[key] % EM_POOLING:
            raise ValueError(
                f"em.{key} = {em[key]} must be a multiple of {EM_POOLING} (the U-Nets pool "
                "three times)"
            )
    if em["overlap"] >= em["tile"]:
        raise ValueError(
            f"em.overlap = {em['overlap']} must be smaller than em.tile = {em['tile']}"
        )
    if em["section_overlap"] >= em["sections"] and "unet3d_aniso" in config["models"]:
        raise ValueError(
            f"em.section_overlap = {em['section_overlap']} must be smaller than em.sections = "
            f"{em['sections']}"
        )


def _check_cifar10(config: dict) -> None:
    training_split = CIFAR10_TRAIN_IMAGES - config["val_size"]
    too_large = [size for size in config["calibration_sizes"] if size > training_split]
    if too_large:
        raise ValueError(
            f"calibration_sizes {too_large} exceed the training split: {CIFAR10_TRAIN_IMAGES} "
            f"images minus val_size {config['val_size']} = {training_split}. "
            "Lower them or val_size."
        )
    for method in config["methods"]:
        absent = [
            name for name in PEER_METHODS.get(method, ()) if importlib.util.find_spec(name) is None
        ]
        if absent:
            raise ValueError(
                f"method {method!r} needs {', '.join(absent)} from the optional `peers` extra: "
                f"run `{PEERS_INSTALL}` (pins in envs/peers.txt), or drop it from `methods`"
            )
    per_tensor = [name for name in config.get("calibration_methods", ()) if "_per_tensor" in name]
    if "qat" in config["methods"] and per_tensor:
        raise ValueError(
            f"method 'qat' cannot run calibration_methods {per_tensor}: torchao's QAT config "
            "supports per-channel weights only. Drop them, or run qat in a separate sweep"
        )
