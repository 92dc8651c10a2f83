"""The quantize stage: calibrate a trained FP32 model on training images and convert it to INT8.

One module per backend (`pt2e`, `eager`), each with `quantize`, `save`, `load` and
`compile_for_cpu`; this module picks one, runs it and records what it made.
"""

import importlib
import os
import time

import torch

from quantpipe import provenance
from quantpipe.artifacts import atomic_path, write_json

METHODS = ("pt2e", "eager")
EXAMPLE_BATCH = 2  # export needs a batch of at least 2 to keep the batch dimension dynamic


def backend(method: str):
    if method not in METHODS:
        raise ValueError(
            f"unknown quantization method {method!r}: choose one of {', '.join(METHODS)}"
        )
    return importlib.import_module(f"quantpipe.quantize.{method}")


def run(model: str, data: str, artifact: str, metrics: str, config: dict, log=print) -> dict:
    """Quantize the FP32 checkpoint `model` with `config['method']`; write the INT8 `artifact`."""
    from quantpipe.datasets import batches, calibration_images
    from quantpipe.train import load_trained

    threads = provenance.set_threads()
    method = backend(config["method"])
    net, record = load_trained(model)
    images = calibration_images(
        data, config["val_size"], config["calibration_size"], config["seed"]
    )
    log(
        f"quantize: method {config['method']}, {len(images)} calibration images from the training "
        f"split, {threads} threads"
    )
    started = time.perf_counter()
    calibration = batches(images, config["calibration_batch_size"])
    if config["method"] == "pt2e":
        quantized = method.quantize(net, calibration, images[:EXAMPLE_BATCH], log=log)
        with atomic_path(artifact) as tmp:
            method.save(quantized, tmp, images[:EXAMPLE_BATCH])
    else:
        quantized = method.quantize(net, calibration, log=log)
        with atomic_path(artifact) as tmp:
            method.save(quantized, tmp, record["architecture"])
    result = {
        "stage": "quantize",
        "config": config,
        "architecture": record["architecture"],
        "method": config["method"],
        "calibration_size": len(images),
        "seconds": time.perf_counter() - started,
        "size_bytes": os.path.getsize(artifact),
        "provenance": provenance.collect(),
    }
    log(
        f"quantize: wrote {artifact} ({result['size_bytes'] / 1e6:.2f} MB) "
        f"in {result['seconds']:.1f} s"
    )
    write_json(metrics, result)
    return result


def load_for_cpu(method: str, artifact: str) -> torch.nn.Module:
    module = backend(method)
    return module.compile_for_cpu(module.load(artifact))
