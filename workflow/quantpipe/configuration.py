"""Config coming from the command line, made to match the schema before validation.

Snakemake parses `--config seeds=[0,1,2]` with YAML's BaseLoader, so every scalar inside arrives as
a string ("0"); `--config 'train={epochs: 2}'` likewise. This converts such strings to the type the
schema declares for that key, and leaves anything it cannot convert for the validator to reject
with its own message.
"""

import os
from collections.abc import Mapping
from types import SimpleNamespace

import yaml

from quantpipe import optional, tasks
from quantpipe.models import references as model_refs
from quantpipe.reporting.node_classes import GPU_CLASS

# The methods per-layer sensitivity and quantpipe's budget search apply to: those whose layers
# can be left in FP32 one by one (quantpipe.quantize.CONTROLLED, which
# tests/test_accuracy_control.py checks against this torch-free copy for the Snakefile).
SENSITIVITY_METHODS = ("pt2e", "eager")
# The methods accuracy_budget gives a budgeted variant: those, and openvino with NNCF's own
# accuracy control.
BUDGET_METHODS = (*SENSITIVITY_METHODS, "openvino")

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
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        # Keys the schema does not name (e.g. the models of `weights`) follow additionalProperties.
        other = schema.get("additionalProperties")
        other = other if isinstance(other, dict) else {}
        return {
            key: _coerce(item, schema.get("properties", {}).get(key, other))
            for key, item in value.items()
        }
    return value


def coerce_to_schema(config: dict, schema_path: str) -> None:
    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    config.update(_coerce(dict(config), schema))


def check_consistency(config: dict) -> None:
    """Rules across keys, which a JSON schema cannot state; raise before any job is submitted.
    The task's own rules are its TaskSpec.check."""
    task = tasks.spec(config.get("task"))
    models = list(config.get("models", ()))
    model_refs.check_config(models, config.get("widths", model_refs.DEFAULT_WIDTHS))
    foreign = [
        model for model in models if model_refs.is_builtin(model) and model not in task.models
    ]
    if foreign:
        raise ValueError(
            f"models {foreign} do not belong to task {task.name!r}: for task {task.name!r} "
            f"choose models from {', '.join(task.models)}"
        )
    references = [model for model in models if not model_refs.is_builtin(model)]
    if references and not task.references:
        raise ValueError(
            f"models {references} are references to image classifiers, which task "
            f"{task.name!r} does not train: for task {task.name!r} choose models from "
            f"{', '.join(task.models)}"
        )
    unsupported = [m for m in config.get("methods", ()) if task.methods and m not in task.methods]
    if unsupported:
        raise ValueError(
            f"methods {unsupported} are not supported for task {task.name!r}: choose methods "
            f"from {', '.join(task.methods)}"
        )
    for method in config.get("methods", ()):
        absent = optional.missing(method)
        if absent:
            raise ValueError(
                f"method {method!r} needs {', '.join(absent)} from the optional `peers` extra: "
                f"run `{optional.PEERS_INSTALL}` (pins in envs/peers.txt), or drop it from "
                "`methods`"
            )
    if GPU_CLASS in config.get("node_classes", ()):
        raise ValueError(
            f"node class {GPU_CLASS!r} is reserved for the GPU benchmark rows (they run once, on "
            "the GPU partition): name the class of CPU nodes differently in `node_classes`"
        )
    check_weights(config)
    check_accuracy_control(config, task)
    if task.check:
        task.check(config)
    # Last, and only for models by reference (the built-ins are tested with every method): it
    # builds each network. Imported here because it imports torch, which a Snakefile parse of a
    # built-in-only config should not pay for.
    if references:
        from quantpipe.quantize import readiness

        for model in references:
            readiness.check(model, config.get("num_classes", 10), config.get("methods", ()))


def check_accuracy_control(config: dict, task) -> None:
    """accuracy_budget and sensitivity need a task that scores INT8 models on its validation
    split and a method whose layers can stay FP32; without such a method there is nothing to
    do, which a user would not notice in the report."""
    wanted = config.get("accuracy_budget") is not None or config.get("sensitivity", {}).get(
        "enabled"
    )
    if not wanted:
        return
    keys = "accuracy_budget / sensitivity.enabled"
    if not task.accuracy_control:
        raise ValueError(f"{keys}: task {task.name!r} has no accuracy control yet; unset them")
    methods = set(config.get("methods", ()))
    for key, wanted_by, applies_to in (
        ("accuracy_budget", config.get("accuracy_budget") is not None, BUDGET_METHODS),
        ("sensitivity.enabled", config.get("sensitivity", {}).get("enabled"), SENSITIVITY_METHODS),
    ):
        if wanted_by and not methods & set(applies_to):
            raise ValueError(
                f"{key} applies to methods {', '.join(applies_to)}, and `methods` holds none of "
                "them: add one, or unset it"
            )


def check_weights(config: dict) -> None:
    """Each `weights` entry names a model of `models` and a file that exists, gives mean and std
    alike, and, for a built-in model, meets one width: the weights fit the one they were
    trained at."""
    models = list(config.get("models", ()))
    widths = list(config.get("widths", model_refs.DEFAULT_WIDTHS))
    for model, entry in config.get("weights", {}).items():
        where = f"weights[{model!r}]"
        if model not in models:
            raise ValueError(
                f"{where} names no model of `models` {models}: add {model!r} to models, or "
                "spell the key as models does, or drop the entry"
            )
        path = entry["path"]
        if not os.path.isfile(path):
            raise ValueError(
                f"{where}: the weights file {path} does not exist (looked for "
                f"{os.path.abspath(path)}). Fix its path: absolute, or relative to the folder "
                "Snakemake runs in"
            )
        mean, std = entry.get("mean", []), entry.get("std", [])
        if len(mean) != len(std):
            raise ValueError(
                f"{where}: mean has {len(mean)} values and std {len(std)}: give both, one value "
                "per input channel in each"
            )
        if model_refs.is_builtin(model) and len(widths) > 1:
            raise ValueError(
                f"{where}: the weights fit one width, but widths sweeps {widths}. Set widths to "
                "the one they were trained at, or sweep the other widths in a separate run"
            )


def check_node_classes(node_classes: list[str], benchmark_resources: Mapping[str, object]) -> None:
    """Every class of `node_classes` is one the profile maps: each resource of the benchmark rule
    (the profile's `set-resources: benchmark:`, name -> value) whose Python expression reads
    `wildcards.node_class` gives a value for it. Snakemake evaluates these expressions itself; this
    only turns a class missing from a map into a clear error before any job."""
    for name, value in benchmark_resources.items():
        if not (isinstance(value, str) and "node_class" in value):
            continue
        for node_class in node_classes:
            try:
                eval(value, {"wildcards": SimpleNamespace(node_class=node_class), "attempt": 1})
            except KeyError:
                raise ValueError(
                    f"node class {node_class!r} (config `node_classes`) is not defined by the "
                    f"profile: its `set-resources: benchmark: {name}` ({value}) has no entry "
                    f"for it. Add {node_class!r} to that map in the profile's config.yaml "
                    "(profiles/slurm/config.yaml as shipped), or drop the class from node_classes"
                ) from None
            except NameError:  # it reads more than the wildcards: left to Snakemake
                break
