"""Eager-mode static INT8 quantization, the study's method, kept as its faithful reproduction.

Fused conv-bn(-relu), the x86 qconfig (fbgemm kernels, reduce_range activations), QuantStub and
DeQuantStub around the network. It needs a model written for it: one whose residual adds are
FloatFunctionals and that lists its fusion groups (quantpipe's ResNet18s do). The artifact is the
converted model's state_dict (INT8 tensors, loadable with weights_only=True) plus the architecture
needed to rebuild the skeleton it loads into.
"""

import copy
import os
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao import quantization as tq

from quantpipe.artifacts import ArtifactError, load_torch
from quantpipe.models.build import build_model
from quantpipe.quantize.calibration import Calibration, observer_settings, parse

# torch.ao.quantization warns on every call that it is deprecated; this backend exists to
# reproduce the study, which used exactly this API.
warnings.filterwarnings("ignore", module=r"torch\.ao\.quantization.*")
warnings.filterwarnings("ignore", message=r".*(deprecated|reduce_range).*")

BACKEND = "x86"
ACTIVATION_OBSERVERS = {
    "minmax": tq.MinMaxObserver,
    "moving_average": tq.MovingAverageMinMaxObserver,
    "histogram": tq.HistogramObserver,
}
REDUCE_RANGE_DEFAULT = True  # the x86 qconfig's 7-bit activations, as the study ran it
# The layers this backend quantizes, which accuracy control may leave in FP32 by module name.
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def settings(calibration: str | Calibration | None = None) -> dict:
    """What this backend applies for a calibration method name."""
    return observer_settings(parse(calibration), ACTIVATION_OBSERVERS, REDUCE_RANGE_DEFAULT)


def qconfig(calibration: str | Calibration | None = None) -> tq.QConfig:
    """The x86 qconfig (`get_default_qconfig('x86')` for the default calibration) with the chosen
    activation observer, weight granularity and reduce_range."""
    calibration = parse(calibration)
    activation = ACTIVATION_OBSERVERS[calibration.observer].with_args(
        reduce_range=calibration.reduce_range(REDUCE_RANGE_DEFAULT)
    )
    weight = (
        tq.default_per_channel_weight_observer
        if calibration.weights == "per_channel"
        else tq.default_weight_observer
    )
    return tq.QConfig(activation=activation, weight=weight)


class Quantizable(nn.Sequential):
    """QuantStub -> model -> DeQuantStub, so INT8 tensors flow between the stubs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(tq.QuantStub(), model, tq.DeQuantStub())


class FloatIsland(nn.Sequential):
    """DeQuantStub -> an FP32 layer -> QuantStub: how eager mode leaves one layer of an INT8
    network in FP32 (its neighbours still pass INT8 tensors)."""

    def __init__(self, layer: nn.Module) -> None:
        layer.qconfig = None  # explicit None: prepare's propagation leaves it unobserved
        super().__init__(tq.DeQuantStub(), layer, tq.QuantStub())


def _prepare(
    model: nn.Module,
    calibration: str | Calibration | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> nn.Module:
    if not hasattr(model, "fusion_groups"):
        raise TypeError(
            f"the eager method needs a model that lists its fusion groups and uses FloatFunctional "
            f"adds; {type(model).__name__} does not. Use method 'pt2e', which takes any model."
        )
    torch.backends.quantized.engine = BACKEND
    model = copy.deepcopy(model).eval()  # fusion rewrites modules in place: keep the caller's
    tq.fuse_modules(model, model.fusion_groups(), inplace=True)
    for name in keep_fp32:  # a fused group is named by its first module: the convolution
        model.set_submodule(name, FloatIsland(model.get_submodule(name)))
    wrapped = Quantizable(model)
    wrapped.qconfig = qconfig(calibration)
    return tq.prepare(wrapped)


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    log=print,
    calibration: str | Calibration | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> nn.Module:
    """Fuse, observe the calibration batches, convert; `calibration` names the calibration method
    (quantpipe.quantize.calibration; None: histogram with the x86 qconfig's reduce_range).
    `keep_fp32`: module names left in FP32 (accuracy control)."""
    prepared = _prepare(model, calibration, keep_fp32)
    seen = 0
    with torch.no_grad():
        for step, batch in enumerate(calibration_batches, 1):
            prepared(batch)
            seen += batch.shape[0]
            log(f"calibrate step {step}: {seen} images")
    if seen == 0:
        raise ValueError("calibration needs at least one batch of images")
    return tq.convert(prepared)


def requantizer(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    calibration: str | Calibration | None = None,
):
    """quantize() for many choices of FP32 layers, `(keep_fp32, log) -> INT8 model`, as pt2e's
    (eager needs no example: it traces nothing)."""
    batches = list(calibration_batches)
    return lambda keep_fp32=(), log=print: quantize(model, batches, log, calibration, keep_fp32)


def save(
    quantized: nn.Module,
    path: str | os.PathLike,
    architecture: dict,
    calibration: str | Calibration | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> None:
    torch.save(
        {
            "architecture": architecture,
            "calibration": parse(calibration).name,
            "keep_fp32": list(keep_fp32),
            "state_dict": quantized.state_dict(),
        },
        path,
    )


def load(path: str | os.PathLike) -> nn.Module:
    artifact = load_torch(
        path, ("architecture", "state_dict"), "Rerun the quantize stage to make it again."
    )
    with (
        warnings.catch_warnings()
    ):  # the skeleton's observers never ran: its qparams are placeholders
        warnings.simplefilter("ignore")
        skeleton = tq.convert(
            _prepare(
                build_model(**artifact["architecture"]),
                artifact.get("calibration"),
                tuple(artifact.get("keep_fp32", ())),
            )
        )
    try:
        skeleton.load_state_dict(artifact["state_dict"])
    except (RuntimeError, KeyError) as error:  # its modules changed since the artifact was made
        raise ArtifactError(
            f"{path} does not fit quantpipe's {artifact['architecture']['name']} as this version "
            f"builds it ({str(error).splitlines()[0]}). Rerun the quantize stage to make it again."
        ) from None
    return skeleton


def compile_for_cpu(module: nn.Module) -> nn.Module:
    """Eager INT8 runs fbgemm kernels directly: there is nothing for a compiler to fuse."""
    torch.backends.quantized.engine = BACKEND
    return module
