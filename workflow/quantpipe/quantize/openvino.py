"""OpenVINO with NNCF post-training INT8 quantization, a peer to compare with (`peers` extra).

`openvino.convert_model` straight from the PyTorch module (dynamic batch), then `nncf.quantize`
with its defaults (performance preset: symmetric INT8 weights and activations, fast bias
correction) and the chosen range estimator. The artifact is one uncompressed zip holding the IR
(model.xml, model.bin, weights kept as they are, no FP16 compression), so its size is the INT8 size.

Calibration methods map to NNCF's range estimators: minmax -> MINMAX (global extremes),
moving_average -> MEAN_MINMAX (per-image extremes, averaged), histogram -> HISTOGRAM (the range
minimising the quantization error of the histogram, as torch's HistogramObserver does);
`_per_tensor` -> per_channel=False for weights; `_reduce_range` / `_full_range` -> NNCF's overflow
fix ENABLE / DISABLE (7-bit weights in every / no layer; NNCF's default is the first layer only).
Calibration feeds one image at a time, as NNCF expects, so every image is one statistics sample.

Compiled models run with INFERENCE_PRECISION_HINT=f32: otherwise OpenVINO silently runs the
"FP32" model (and the INT8 model's non-quantized parts) in bf16 on CPUs that have it.
"""

import os
import tempfile
import zipfile
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from quantpipe.quantize import peers
from quantpipe.quantize.calibration import Calibration, parse

peers.require("openvino")

import nncf  # noqa: E402
import openvino as ov  # noqa: E402
from nncf.quantization.advanced_parameters import (  # noqa: E402
    AdvancedQuantizationParameters,
    OverflowFix,
    QuantizationParameters,
)
from nncf.quantization.range_estimator import RangeEstimatorParametersSet  # noqa: E402

RANGE_ESTIMATORS = {
    "minmax": "MINMAX",
    "moving_average": "MEAN_MINMAX",
    "histogram": "HISTOGRAM",
}
OVERFLOW_FIX = {
    "default": None,
    "reduce_range": OverflowFix.ENABLE,
    "full_range": OverflowFix.DISABLE,
}
PRECISION = "f32"


def settings(calibration: str | Calibration | None = None) -> dict:
    """What this backend applies for a calibration method name."""
    calibration = parse(calibration)
    fix = OVERFLOW_FIX[calibration.range]
    return {
        "range_estimator": RANGE_ESTIMATORS[calibration.observer],
        "per_channel": calibration.weights == "per_channel",
        "overflow_fix": fix.value if fix else f"NNCF default ({OverflowFix.FIRST_LAYER.value})",
        "preset": "performance",
        "fast_bias_correction": True,
        "inference_precision_hint": PRECISION,
        "openvino": ov.__version__,
        "nncf": nncf.__version__,
    }


def convert(model: nn.Module, example: torch.Tensor) -> ov.Model:
    """The FP32 model as an OpenVINO model with a dynamic batch dimension."""
    with torch.no_grad():
        return ov.convert_model(
            model.eval(),
            example_input=example,
            input=[ov.PartialShape([-1, *example.shape[1:]])],
        )


def _calibration(calibration_batches: Iterable[torch.Tensor], calibration: Calibration):
    """(the calibration images one by one, as NNCF takes them; NNCF's settings for them)."""
    images = [peers.as_numpy(image[None]) for batch in calibration_batches for image in batch]
    if not images:
        raise ValueError("calibration needs at least one batch of images")
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OVERFLOW_FIX[calibration.range],
        activations_range_estimator_params=getattr(
            RangeEstimatorParametersSet, RANGE_ESTIMATORS[calibration.observer]
        ),
    )
    if calibration.weights == "per_tensor":
        advanced.weights_quantization_params = QuantizationParameters(per_channel=False)
    return images, advanced


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    log=print,
    calibration: str | Calibration | None = None,
) -> ov.Model:
    """Convert `model` to OpenVINO, calibrate with NNCF on the images, return the INT8 model."""
    calibration = parse(calibration)
    images, advanced = _calibration(calibration_batches, calibration)
    log(f"openvino: calibrating on {len(images)} images ({settings(calibration)})")
    return nncf.quantize(
        convert(model, example),
        nncf.Dataset(images),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(images),
        advanced_parameters=advanced,
    )


VALIDATION_BATCH = 100  # validation items per NNCF data item: its ranking draws subsets of them


def quantize_within_budget(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    validate,
    items: int,
    budget_points: float,
    log=print,
    calibration: str | Calibration | None = None,
) -> ov.Model:
    """NNCF's own accuracy control (nncf.quantize_with_accuracy_control) at the budget: the same
    calibration as `quantize`, then the quantizers that cost the most reverted to FP32 until the
    validation score drops at most `budget_points` (absolute, x100). `validate(module, indices)`
    scores a model (called like a torch module) on those of the `items` validation items."""
    calibration = parse(calibration)
    images, advanced = _calibration(calibration_batches, calibration)
    batches = list(torch.arange(items).split(VALIDATION_BATCH))

    def validation_fn(compiled, chosen) -> tuple[float, None]:
        request = compiled.create_infer_request()
        runtime = peers.Runtime(lambda array: request.infer({0: array})[0], {})
        return validate(runtime, torch.cat(list(chosen))), None

    log(
        f"openvino: NNCF accuracy control, max drop {budget_points} points, calibrating on "
        f"{len(images)} images ({settings(calibration)})"
    )
    return nncf.quantize_with_accuracy_control(
        convert(model, example),
        nncf.Dataset(images),
        nncf.Dataset(batches),
        validation_fn,
        max_drop=budget_points / 100,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(images),
        advanced_quantization_parameters=advanced,
    )


# Operations with weights that NNCF quantizes; one whose weights are not INT8 runs in FP32.
WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")


def layer_precisions(model: ov.Model) -> tuple[list[str], int]:
    """(the weighted layers left in FP32, the number of weighted layers): a layer is INT8 when
    its weights come from an INT8 constant (through NNCF's dequantizing Convert, Subtract,
    Multiply), FP32 otherwise."""
    fp32, total = [], 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED:
            continue
        source = op.input_value(1).get_node()
        while source.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape"):
            source = source.input_value(0).get_node()
        if source.get_type_name() != "Constant":
            continue  # a product of two activations (attention), not a layer's weights
        total += 1
        if source.get_output_element_type(0).get_type_name() not in ("i8", "u8"):
            fp32.append(op.get_friendly_name())
    return fp32, total


def _serialize(model: ov.Model) -> dict[str, bytes]:
    """model.xml and model.bin in memory (no FP16 compression: weights stay as they are)."""
    with tempfile.TemporaryDirectory(prefix="quantpipe-ov-") as tmp:
        ov.save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        return {
            name: open(os.path.join(tmp, name), "rb").read() for name in ("model.xml", "model.bin")
        }


def save(quantized: ov.Model, path: str | os.PathLike, example=None) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in _serialize(quantized).items():
            archive.writestr(name, content)


def load(path: str | os.PathLike) -> ov.Model:
    with zipfile.ZipFile(path) as archive:
        xml, weights = archive.read("model.xml"), archive.read("model.bin")
    return ov.Core().read_model(
        model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy())
    )


class OpenVino(peers.Runtime):
    name = "openvino"


def compile_for_cpu(model: ov.Model, threads: int | None = None) -> OpenVino:
    """One latency stream with as many threads as torch uses, FP32 where not quantized."""
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads()),
        "INFERENCE_PRECISION_HINT": PRECISION,
    }
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        return request.infer({0: images})[0]

    return OpenVino(run, config)


def fp32_for_cpu(model: nn.Module, example: torch.Tensor) -> tuple[OpenVino, int]:
    """The FP32 model in OpenVINO (f32 forced), and its IR's size in bytes."""
    converted = convert(model, example)
    size = sum(len(content) for content in _serialize(converted).values())
    return compile_for_cpu(converted), size
