"""The quantize stage: calibrate a trained FP32 model on training images and convert it to INT8
with one of quantpipe.quantize's backends, and record what it made."""

import os
import time

from quantpipe import provenance, tasks
from quantpipe.artifacts import atomic_path, write_json
from quantpipe.models.build import load_trained
from quantpipe.quantize import EXAMPLE_BATCH, backend, quantize_and_save
from quantpipe.quantize import calibration as calibration_methods


def run(model: str, data: str, artifact: str, metrics: str, config: dict, log=print) -> dict:
    """Quantize the FP32 checkpoint `model` with `config['method']`; write the INT8 `artifact`."""
    task = tasks.load(config.get("task"))
    threads = provenance.set_threads()
    method = backend(config["method"])
    chosen = calibration_methods.parse(config.get("calibration_method"))
    net, record = load_trained(model)
    images = task.calibration_inputs(data, config, config["calibration_size"])
    log(
        f"quantize: method {config['method']}, calibration {chosen.name} "
        f"({method.settings(chosen)}), {len(images)} calibration images from the training "
        f"split, {threads} threads"
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
    with atomic_path(artifact) as tmp:
        quantize_and_save(
            config["method"],
            net,
            images.split(config["calibration_batch_size"]),
            images[:EXAMPLE_BATCH],
            record["architecture"],
            tmp,
            chosen.name,
            log,
            fine_tune,
        )
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
        "provenance": provenance.collect(),
    }
    log(
        f"quantize: wrote {artifact} ({result['size_bytes'] / 1e6:.2f} MB) "
        f"in {result['seconds']:.1f} s"
    )
    write_json(metrics, result)
    return result
