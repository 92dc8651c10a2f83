"""The sensitivity stage: what INT8 costs layer by layer. Starting from the fully quantized model
(the run's method and calibration), each quantized layer in turn is left in FP32 and the model
scored with the task's validation score on a fixed validation subset (quantpipe.quantize.
accuracy_control says why this way round). The ranking feeds the budgeted quantize stage
(config `accuracy_budget`) and the summary's sensitivity figure.
"""

import csv
import time

import torch

from quantpipe import provenance, tasks
from quantpipe.artifacts import atomic_path, write_json
from quantpipe.models.build import load_trained
from quantpipe.quantize import EXAMPLE_BATCH, backend, compile_for_cpu, requantizer
from quantpipe.quantize import accuracy_control as control
from quantpipe.quantize import calibration as calibration_methods

COLUMNS = ("rank", "layer", "op", "macs", "macs_share", "score_layer_fp32", "recovery_points")


def run(model: str, data: str, table: str, metrics: str, config: dict, log=print) -> dict:
    """Rank the layers of the FP32 checkpoint `model` by what leaving each in FP32 recovers of
    `config['method']`'s INT8 score; write the ranking to the CSV `table`, the record to
    `metrics`."""
    task = tasks.load(config.get("task"))
    threads = provenance.set_threads()
    chosen = calibration_methods.parse(config.get("calibration_method"))
    net, _ = load_trained(model)
    images = task.calibration_inputs(data, config, config["calibration_size"])
    example = images[:EXAMPLE_BATCH]
    quantize = requantizer(
        config["method"], net, images.split(config["calibration_batch_size"]), example, chosen.name
    )
    limit = config["sensitivity_items"] or None
    validate = task.validator(data, config, torch.device("cpu"), limit)
    spec = task.spec

    def score(module) -> float:
        return validate(module)[spec.validation_score]

    started = time.perf_counter()
    fp32 = score(net)
    layers = control.quantized_layers(net, example, backend(config["method"]).LAYER_TYPES)
    log(
        f"sensitivity: method {config['method']}, calibration {chosen.name}, "
        f"{spec.validation_score} on {'the first ' + str(limit) if limit else 'all'} validation "
        f"items; FP32 {fp32:.4f}; {len(layers)} quantized layers; {threads} threads"
    )
    all_int8, rows = control.sensitivity(
        layers,
        lambda keep: quantize(keep, log=lambda line: None),
        lambda quantized: score(compile_for_cpu(config["method"], quantized)),
        spec.validation_higher_is_better,
        log,
    )
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in COLUMNS} for row in rows)
    result = {
        "stage": "sensitivity",
        "config": config,
        "method": config["method"],
        "calibration_method": chosen.name,
        "score": spec.validation_score,
        "higher_is_better": spec.validation_higher_is_better,
        "validation_items": limit,
        "score_fp32": fp32,
        "score_int8": all_int8,
        "drop_points": control.drop_points(fp32, all_int8, spec.validation_higher_is_better),
        "layers": rows,
        "seconds": time.perf_counter() - started,
        "provenance": provenance.collect(),
    }
    top = ", ".join(f"{row['layer']} {row['recovery_points']:+.2f}" for row in rows[:5])
    log(
        f"sensitivity: every layer INT8 loses {result['drop_points']:.2f} points; most sensitive: "
        f"{top}; {result['seconds']:.0f} s"
    )
    write_json(metrics, result)
    return result
