"""The quantize stage: calibrate a trained FP32 model on training images and convert it to INT8.

One module per backend, each with `quantize`, `save`, `load`, `compile_for_cpu` and `settings`
(what a calibration method name means to it): `pt2e` and `eager` in torch; `qat`, a short
quantization-aware fine-tune that ends in pt2e's INT8 graph (a GPU job; it also takes training
images and labels); `onnxruntime` and `openvino`, peers to compare with from the optional `peers`
extra, which also give their FP32 runtimes (`fp32_for_cpu`). This module picks one, runs it and
records what it made.
"""

import importlib
import os
import time

import torch

from quantpipe import provenance
from quantpipe.artifacts import atomic_path, write_json
from quantpipe.quantize import calibration as calibration_methods
from quantpipe.quantize import peers

METHODS = ("pt2e", "eager", "qat", "onnxruntime", "openvino")
PEERS = tuple(peers.MODULES)  # the methods that need the optional `peers` extra
EXAMPLE_BATCH = 2  # export needs a batch of at least 2 to keep the batch dimension dynamic


def backend(method: str):
    """The backend module of `method`; a missing peer package names the command to install it."""
    if method not in METHODS:
        raise ValueError(
            f"unknown quantization method {method!r}: choose one of {', '.join(METHODS)}"
        )
    if method in PEERS:
        peers.require(method)
    return importlib.import_module(f"quantpipe.quantize.{method}")


def run(model: str, data: str, artifact: str, metrics: str, config: dict, log=print) -> dict:
    """Quantize the FP32 checkpoint `model` with `config['method']`; write the INT8 `artifact`."""
    from quantpipe.datasets import batches, calibration_images
    from quantpipe.train import load_trained

    threads = provenance.set_threads()
    method = backend(config["method"])
    chosen = calibration_methods.parse(config.get("calibration_method"))
    net, record = load_trained(model)
    if config.get("task") == "isbi2012_em":  # tile-shaped patches of the training sections
        from quantpipe.em.train import calibration_patches

        images = calibration_patches(data, config, config["calibration_size"])
    else:
        images = calibration_images(
            data, config["val_size"], config["calibration_size"], config["seed"]
        )
    log(
        f"quantize: method {config['method']}, calibration {chosen.name} "
        f"({method.settings(chosen)}), {len(images)} calibration images from the training "
        f"split, {threads} threads"
    )
    fine_tune = None
    if config["method"] == "qat":  # fine-tunes on the training split (never val or test)
        from quantpipe.datasets import load_splits

        fine_tune = method.FineTune.from_config(
            *load_splits(data, config["val_size"])["train"],
            config.get("qat", {}),
            record.get("config", {}),
            config["seed"],
        )
    started = time.perf_counter()
    with atomic_path(artifact) as tmp:
        quantize_and_save(
            config["method"],
            net,
            batches(images, config["calibration_batch_size"]),
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


def quantize_and_save(
    method: str,
    net: torch.nn.Module,
    calibration_batches,
    example: torch.Tensor,
    architecture: dict,
    path,
    calibration: str | None = None,
    log=print,
    fine_tune=None,
):
    """Calibrate and convert `net` with `method`, write its artifact to `path`; the INT8 model.

    `fine_tune` (a `qat.FineTune`: training images, labels, steps, learning rate) is for `qat`.
    """
    module = backend(method)
    if method == "eager":  # rebuilt from the architecture at load time: needs no example
        quantized = module.quantize(net, calibration_batches, log=log, calibration=calibration)
        module.save(quantized, path, architecture, calibration)
    else:
        options = {"fine_tune": fine_tune} if method == "qat" else {}
        quantized = module.quantize(
            net, calibration_batches, example, log=log, calibration=calibration, **options
        )
        module.save(quantized, path, example)
    return quantized


def load_for_cpu(method: str, artifact: str) -> torch.nn.Module:
    """The artifact loaded and compiled for the CPU: called like a module, images in, logits out."""
    module = backend(method)
    return module.compile_for_cpu(module.load(artifact))
