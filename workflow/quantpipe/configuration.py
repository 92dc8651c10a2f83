"""Config coming from the command line, made to match the schema before validation.

Snakemake parses `--config seeds=[0,1,2]` with YAML's BaseLoader, so every scalar inside arrives as
a string ("0"); `--config 'train={epochs: 2}'` likewise. This converts such strings to the type the
schema declares for that key, and leaves anything it cannot convert for the validator to reject
with its own message.
"""

import yaml

from quantpipe import optional, tasks
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
    if task.check:
        task.check(config)
    # Last, and only for models by reference (the built-ins are tested with every method): it
    # builds each network. Imported here because it imports torch, which a Snakefile parse of a
    # built-in-only config should not pay for.
    if references:
        from quantpipe.quantize import readiness

        for model in references:
            readiness.check(model, config.get("num_classes", 10), config.get("methods", ()))
