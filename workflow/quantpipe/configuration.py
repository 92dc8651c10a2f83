"""Config coming from the command line, made to match the schema before validation.

Snakemake parses `--config seeds=[0,1,2]` with YAML's BaseLoader, so every scalar inside arrives as
a string ("0"); `--config 'train={epochs: 2}'` likewise. This converts such strings to the type the
schema declares for that key, and leaves anything it cannot convert for the validator to reject
with its own message.
"""

import importlib.util

import yaml

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


def check_consistency(config: dict) -> None:
    """Rules across keys, which a JSON schema cannot state; raise before any job is submitted."""
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
