"""Eager-mode static INT8 quantization, the study's method, kept as its faithful reproduction.

Fused conv-bn(-relu), the x86 qconfig (fbgemm kernels, reduce_range activations), QuantStub and
DeQuantStub around the network. It needs a model written for it: one whose residual adds are
FloatFunctionals and that lists its fusion groups (quantpipe's ResNet18s do). The artifact is the
converted model's state_dict (INT8 tensors, loadable with weights_only=True) plus the architecture
needed to rebuild the skeleton it loads into.
"""

import os
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao import quantization as tq

from quantpipe.models import build_model

# torch.ao.quantization warns on every call that it is deprecated; this backend exists to
# reproduce the study, which used exactly this API.
warnings.filterwarnings("ignore", module=r"torch\.ao\.quantization.*")
warnings.filterwarnings("ignore", message=r".*(deprecated|reduce_range).*")

BACKEND = "x86"


class Quantizable(nn.Sequential):
    """QuantStub -> model -> DeQuantStub, so INT8 tensors flow between the stubs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(tq.QuantStub(), model, tq.DeQuantStub())


def _prepare(model: nn.Module) -> nn.Module:
    if not hasattr(model, "fusion_groups"):
        raise TypeError(
            f"the eager method needs a model that lists its fusion groups and uses FloatFunctional "
            f"adds; {type(model).__name__} does not. Use method 'pt2e', which takes any model."
        )
    torch.backends.quantized.engine = BACKEND
    model = model.eval()
    tq.fuse_modules(model, model.fusion_groups(), inplace=True)
    wrapped = Quantizable(model)
    wrapped.qconfig = tq.get_default_qconfig(BACKEND)
    return tq.prepare(wrapped)


def quantize(model: nn.Module, calibration_batches: Iterable[torch.Tensor], log=print) -> nn.Module:
    prepared = _prepare(model)
    seen = 0
    with torch.no_grad():
        for step, batch in enumerate(calibration_batches, 1):
            prepared(batch)
            seen += batch.shape[0]
            log(f"calibrate step {step}: {seen} images")
    if seen == 0:
        raise ValueError("calibration needs at least one batch of images")
    return tq.convert(prepared)


def save(quantized: nn.Module, path: str | os.PathLike, architecture: dict) -> None:
    torch.save({"architecture": architecture, "state_dict": quantized.state_dict()}, path)


def load(path: str | os.PathLike) -> nn.Module:
    artifact = torch.load(path, weights_only=True)
    with (
        warnings.catch_warnings()
    ):  # the skeleton's observers never ran: its qparams are placeholders
        warnings.simplefilter("ignore")
        skeleton = tq.convert(_prepare(build_model(**artifact["architecture"])))
    skeleton.load_state_dict(artifact["state_dict"])
    return skeleton


def compile_for_cpu(module: nn.Module) -> nn.Module:
    """Eager INT8 runs fbgemm kernels directly: there is nothing for a compiler to fuse."""
    torch.backends.quantized.engine = BACKEND
    return module
