"""INT8 backends: one module per backend, each with `quantize`, `save`, `load`, `compile_for_cpu`
and `settings`
(what a calibration method name means to it): `pt2e` and `eager` in torch; `qat`, a short
quantization-aware fine-tune that ends in pt2e's INT8 graph (a GPU job; it also takes training
images and labels); `onnxruntime` and `openvino`, peers to compare with from the optional `peers`
extra, which also give their FP32 runtimes (`fp32_for_cpu`). This package picks one by name.
"""

import importlib

import torch

from quantpipe.optional import PEER_METHODS
from quantpipe.quantize import peers

METHODS = ("pt2e", "eager", "qat", "onnxruntime", "openvino")
PEERS = tuple(PEER_METHODS)  # the methods that need the optional `peers` extra
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
