"""The quantize stage: calibrate a trained FP32 model on training images and convert it to INT8
with one of quantpipe.quantize's backends, and record what it made.

With `accuracy_budget` (points of the task's validation score) it keeps in FP32 the fewest
layers, most sensitive first by the sensitivity stage's ranking, until the INT8 model's
validation score is within the budget of FP32's (quantpipe.quantize.accuracy_control); the record
says which layers stayed FP32 and the score at each step.
"""

import os
import time

import torch

from quantpipe import provenance, tasks
from quantpipe.artifacts import atomic_path, read_json, write_json
from quantpipe.models.build import load_trained
from quantpipe.quantize import (
    EXAMPLE_BATCH,
    backend,
    compile_for_cpu,
    quantize_and_save,
    requantizer,
    save,
)
from quantpipe.quantize import accuracy_control as control
from quantpipe.quantize import calibration as calibration_methods


def run(
    model: str,
    data: str,
    artifact: str,
    metrics: str,
    config: dict,
    sensitivity: str | list | None = None,
    log=print,
) -> dict:
    """Quantize the FP32 checkpoint `model` with `config['method']`; write the INT8 `artifact`.
    With config `accuracy_budget`, `sensitivity` is the sensitivity stage's metrics.json of the
    same method and calibration, whose ranking the budget search follows."""
    task = tasks.load(config.get("task"))
    threads = provenance.set_threads()
    method = backend(config["method"])
    chosen = calibration_methods.parse(config.get("calibration_method"))
    net, record = load_trained(model)
    images = task.calibration_inputs(data, config, config["calibration_size"])
    budget = config.get("accuracy_budget")
    log(
        f"quantize: method {config['method']}, calibration {chosen.name} "
        f"({method.settings(chosen)}), {len(images)} calibration images from the training "
        f"split, {threads} threads"
        + (f", accuracy budget {budget} points" if budget is not None else "")
    )
    fine_tune = None
    if config["method"] == "qat":  # fine-tunes on the training split (never val or test)
        fine_tune = method.FineTune.from_config(
            *task.fine_tune_data(data, config),
            config.get("qat", {}),
            record.get("config", {}),
            config["seed"],
        )
    started = time.perf_counter()
    batches = images.split(config["calibration_batch_size"])
    example = images[:EXAMPLE_BATCH]
    controlled = {}
    with atomic_path(artifact) as tmp:
        if budget is None:
            quantize_and_save(
                config["method"], net, batches, example, record["architecture"], tmp,
                chosen.name, log, fine_tune,
            )  # fmt: skip
        else:
            quantized, controlled = _within_budget(
                task, data, config, net, batches, example, chosen.name, sensitivity, log
            )
            save(
                config["method"], quantized, tmp, example, record["architecture"], chosen.name,
                tuple(controlled["fp32_layers"]),
            )  # fmt: skip
    result = {
        "stage": "quantize",
        "config": config,
        "architecture": record["architecture"],
        "method": config["method"],
        "calibration_method": chosen.name,
        "calibration_settings": method.settings(chosen),
        "calibration_size": len(images),
        "seconds": time.perf_counter() - started,
        "size_bytes": os.path.getsize(artifact),
        **({"qat": fine_tune.record} if fine_tune else {}),
        **({"accuracy_control": controlled} if controlled else {}),
        "provenance": provenance.collect(),
    }
    log(
        f"quantize: wrote {artifact} ({result['size_bytes'] / 1e6:.2f} MB) "
        f"in {result['seconds']:.1f} s"
    )
    write_json(metrics, result)
    return result


def _within_budget(task, data, config, net, batches, example, calibration, sensitivity, log):
    """The INT8 model within the budget, and what the record keeps of the search: quantpipe's
    (pt2e, eager), or the peer's own accuracy control (openvino: NNCF's)."""
    spec, budget = task.spec, config["accuracy_budget"]
    validate = task.validator(data, config, torch.device("cpu"))

    def score(module, items=None) -> float:
        return validate(module, items)[spec.validation_score]

    started = time.perf_counter()
    fp32 = score(net)
    log(f"quantize: FP32 {spec.validation_score} {fp32:.4f} on the whole validation split")
    method = backend(config["method"])
    if hasattr(method, "quantize_within_budget"):
        quantized = method.quantize_within_budget(
            net, batches, example, score, validate.items, budget, log, calibration
        )
        kept, layers = method.layer_precisions(quantized)
        scored = score(compile_for_cpu(config["method"], quantized))
        chosen, steps, searched_by = {"fp32_layers": kept, "score": scored}, [], "nncf"
        chosen["drop_points"] = control.drop_points(fp32, scored, spec.validation_higher_is_better)
    else:
        if not sensitivity:
            raise ValueError(
                "accuracy_budget needs the sensitivity stage's ranking: give its metrics.json as "
                "`sensitivity` (quantpipe quantize --sensitivity PATH)"
            )
        ranked = [row["layer"] for row in read_json(sensitivity)["layers"]]
        requantize = requantizer(config["method"], net, batches, example, calibration)
        quantized, chosen, steps = control.within_budget(
            ranked,
            lambda keep: requantize(keep, log=lambda line: None),
            lambda model: score(compile_for_cpu(config["method"], model)),
            fp32,
            budget,
            spec.validation_higher_is_better,
            log,
        )
        layers, searched_by = len(ranked), "quantpipe"
    log(
        f"quantize: {chosen['drop_points']:+.2f} points from FP32 (budget {budget}) with "
        f"{len(chosen['fp32_layers'])} of {layers} layers in FP32: {chosen['fp32_layers']}"
    )
    return quantized, {
        "budget_points": budget,
        "search": searched_by,
        "score": spec.validation_score,
        "score_fp32": fp32,
        "score_int8": chosen["score"],
        "drop_points": chosen["drop_points"],
        "fp32_layers": chosen["fp32_layers"],
        "layers": layers,
        "steps": steps,
        "search_seconds": time.perf_counter() - started,
    }
