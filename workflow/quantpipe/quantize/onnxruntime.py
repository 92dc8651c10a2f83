"""ONNX Runtime static INT8 quantization, a peer to compare with (the optional `peers` extra).

torch.onnx.export (dynamo) with a dynamic batch, ONNX Runtime's pre-processing (shape inference
and graph optimisation), then `quantize_static` in the QDQ format with per-channel INT8 weights and
uint8 activations (U8S8: on x86 ONNX Runtime's S8S8 default is no faster than FP32, U8S8 is). The
artifact is the INT8 ONNX file itself (one file, weights inside), so its size is the INT8 size.

Calibration methods map to ONNX Runtime's own calibrators: minmax -> MinMax, moving_average ->
MinMax with CalibMovingAverage (constant 0.01, as torch's observer), histogram -> Entropy (its
histogram method that searches the clipping range; torch's minimises the L2 error instead);
`_per_tensor` -> per_channel=False; `_reduce_range` -> reduce_range=True (ONNX Runtime's guard is
7-bit *weights*). Calibration feeds one batch at a time (CalibStridedMinMax), so the histogram
calibrators never hold every batch's activations at once.
"""

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from quantpipe.quantize import peers
from quantpipe.quantize.calibration import Calibration, parse

peers.require("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

INPUT, OUTPUT = "images", "logits"
MAX_BATCH = 65536
CALIBRATE = {
    "minmax": CalibrationMethod.MinMax,
    "moving_average": CalibrationMethod.MinMax,
    "histogram": CalibrationMethod.Entropy,
}
REDUCE_RANGE_DEFAULT = False
ACTIVATION_TYPE, WEIGHT_TYPE = QuantType.QUInt8, QuantType.QInt8


def settings(calibration: str | Calibration | None = None) -> dict:
    """What this backend applies for a calibration method name."""
    calibration = parse(calibration)
    return {
        "calibrate_method": CALIBRATE[calibration.observer].name,
        "moving_average": calibration.observer == "moving_average",
        "per_channel": calibration.weights == "per_channel",
        "reduce_range": calibration.reduce_range(REDUCE_RANGE_DEFAULT),
        "quant_format": "QDQ",
        "activation_type": ACTIVATION_TYPE.name,
        "weight_type": WEIGHT_TYPE.name,
        "onnxruntime": ort.__version__,
    }


def export(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """The FP32 model as ONNX (dynamo exporter), batch dimension dynamic, weights inside."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(
        model.eval(),
        (example,),
        dynamo=True,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: batch},),
        optimize=True,
        verbose=False,
    )
    return program.model_proto


class _Batches(CalibrationDataReader):
    """The calibration batches, in the strided form quantize_static feeds one range at a time."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches
        self.set_range(0, len(batches))

    def get_next(self):
        return next(self._items, None)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(
            {INPUT: peers.as_numpy(batch)} for batch in self.batches[start_index:end_index]
        )


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    log=print,
    calibration: str | Calibration | None = None,
) -> onnx.ModelProto:
    """Export `model` to ONNX, calibrate on the batches, return the INT8 QDQ model."""
    chosen = settings(calibration)
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of images")
    with tempfile.TemporaryDirectory(prefix="quantpipe-ort-") as tmp:
        fp32, prepared, int8 = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "q.onnx"))
        with torch.no_grad():
            onnx.save(export(model, example), fp32)
        quant_pre_process(str(fp32), str(prepared))
        log(f"onnxruntime: calibrating on {sum(len(b) for b in batches)} images ({chosen})")
        quantize_static(
            str(prepared),
            str(int8),
            _Batches(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=chosen["per_channel"],
            reduce_range=chosen["reduce_range"],
            activation_type=ACTIVATION_TYPE,
            weight_type=WEIGHT_TYPE,
            calibrate_method=CALIBRATE[parse(calibration).observer],
            extra_options={
                "CalibStridedMinMax": 1,
                "CalibMovingAverage": chosen["moving_average"],
            },
        )
        return onnx.load(str(int8))


def save(quantized: onnx.ModelProto, path: str | os.PathLike, example=None) -> None:
    Path(path).write_bytes(quantized.SerializeToString())


def load(path: str | os.PathLike) -> bytes:
    return Path(path).read_bytes()


def session(model: onnx.ModelProto | bytes, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntime(peers.Runtime):
    name = "onnxruntime"


def compile_for_cpu(model: onnx.ModelProto | bytes, threads: int | None = None) -> OnnxRuntime:
    """An ONNX Runtime CPU session with all graph optimisations, as many threads as torch uses."""
    runtime = session(model, threads)
    return OnnxRuntime(
        lambda images: runtime.run(None, {INPUT: images})[0],
        {"threads": runtime.get_session_options().intra_op_num_threads},
    )


def fp32_for_cpu(model: nn.Module, example: torch.Tensor) -> tuple[OnnxRuntime, int]:
    """The FP32 model in ONNX Runtime, and its ONNX file's size in bytes."""
    with torch.no_grad():
        proto = export(model, example)
    serialized = proto.SerializeToString()
    return compile_for_cpu(serialized), len(serialized)
