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
# The methods whose layers accuracy control can leave in FP32 one by one.
CONTROLLED = ("pt2e", "eager")
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
    if method == "eager":  # traces nothing: needs no example
        quantized = module.quantize(net, calibration_batches, log=log, calibration=calibration)
    else:
        options = {"fine_tune": fine_tune} if method == "qat" else {}
        quantized = module.quantize(
            net, calibration_batches, example, log=log, calibration=calibration, **options
        )
    save(method, quantized, path, example, architecture, calibration)
    return quantized


def save(
    method: str,
    quantized: torch.nn.Module,
    path,
    example: torch.Tensor,
    architecture: dict,
    calibration: str | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> None:
    """Write `quantized` as `method`'s artifact. Eager's is rebuilt at load time from the
    architecture, its calibration method and the layers left in FP32; the others are programs
    traced with `example`."""
    if method == "eager":
        backend(method).save(quantized, path, architecture, calibration, keep_fp32)
    else:
        backend(method).save(quantized, path, example)


def requantizer(method: str, net: torch.nn.Module, calibration_batches, example, calibration):
    """`method`'s quantize as a function of the layers it leaves in FP32, `(keep_fp32, log) ->
    INT8 model` (accuracy control), for the methods in CONTROLLED."""
    if method not in CONTROLLED:
        raise ValueError(
            f"method {method!r} cannot leave chosen layers in FP32: accuracy control "
            f"(accuracy_budget, sensitivity) takes {', '.join(CONTROLLED)} (openvino: NNCF's own)"
        )
    return backend(method).requantizer(net, calibration_batches, example, calibration)


def load_for_cpu(method: str, artifact: str) -> torch.nn.Module:
    """The artifact loaded and compiled for the CPU: called like a module, images in, logits out."""
    return compile_for_cpu(method, backend(method).load(artifact))


def compile_for_cpu(method: str, quantized: torch.nn.Module) -> torch.nn.Module:
    """`quantized` as the benchmark runs it. Accuracy control scores this, not the converted
    graph: Inductor's INT8 kernels round differently from pt2e's reference graph (MobileNetV3-
    Small: 34.3% against 37.0% on the same 1,000 validation images)."""
    return backend(method).compile_for_cpu(quantized)
