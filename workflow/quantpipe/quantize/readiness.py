"""Whether a model by reference can go through the stages, tried before any job on two images:
its training and eval forwards, the export and annotation of pt2e and qat, eager's fusion
groups. Errors name the cause and the fix (quantpipe.models.references.ModelReferenceError)."""

import traceback

import torch
from torch import nn

from quantpipe.models.references import (
    EAGER_NEEDS,
    EXPORT_METHODS,
    ModelReferenceError,
    build,
    first_line,
    user_frame,
)
from quantpipe.quantize import pt2e, qat


def _forward(net, images, mode: str, num_classes: int, text: str) -> None:
    try:
        with torch.no_grad():
            output = net(images)
    except Exception as error:
        raise ModelReferenceError(
            f"model {text!r} fails on a batch of {tuple(images.shape)} images in {mode} mode: "
            f"{first_line(error)} ({user_frame(error) or 'inside torch'})"
        ) from error
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (len(images), num_classes):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelReferenceError(
            f"model {text!r} returns {got} in {mode} mode for a batch of {tuple(images.shape)}: "
            f"quantpipe needs a tensor of logits ({len(images)}, {num_classes}) in both modes"
        )


def _training_forward(net, images, num_classes: int, text: str) -> list[str]:
    """The training-mode forward; the names of the batch norms it calls more than once."""
    calls = {}
    hooks = [
        module.register_forward_hook(
            lambda module, *_: calls.update({module: calls.get(module, 0) + 1})
        )
        for module in net.modules()
    ]
    try:
        _forward(net.train(), images, "training", num_classes, text)
    finally:
        for hook in hooks:
            hook.remove()
    return [
        name
        for name, module in net.named_modules()
        if calls.get(module, 0) > 1 and isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]


def _prepare(net, example, text: str, method: str, reused: list[str]) -> None:
    """Export and annotate `net` as `method` will (quantpipe.quantize.pt2e.prepare, under
    no_grad as its calibration runs, or qat.prepare): an error names the operation
    torch.export stopped at, or the quantizer's complaint."""
    try:
        if method == "pt2e":
            with torch.no_grad():
                pt2e.prepare(net, example)
        else:
            qat.prepare(net, example)
    except Exception as error:
        if _is_export_error(error):
            raise _untraceable(error, text) from error
        fix = "use method pt2e instead" if method == "qat" else "drop pt2e and qat from `methods`"
        cause = ""
        if method == "qat" and reused:
            # Measured with tests/userpkg/usernets.py: the same network without its repeated
            # block prepares. In training mode each call of a batch norm updates its statistics,
            # and torch.export chains those updates from one call to the next.
            cause = (
                f" Its batch norms called more than once per forward ({', '.join(reused)}) are "
                "a known cause: in training mode torch.export chains their statistics updates "
                "from call to call."
            )
        raise ModelReferenceError(
            f"model {text!r}: method {method!r} cannot prepare it for INT8: torchao's "
            f"X86InductorQuantizer fails on its exported graph ({first_line(error)}; "
            f"{user_frame(error) or 'inside torchao'}).{cause} For this model, {fix}"
        ) from error


def _is_export_error(error: BaseException) -> bool:
    """Whether `error` was raised while torch.export traced the model (not while torchao
    annotated the graph)."""
    frames = traceback.extract_tb(error.__traceback__)
    return not any("torchao" in frame.filename for frame in frames)


def _untraceable(error: BaseException, text: str) -> ModelReferenceError:
    if "specialized it to be a constant" in str(error):
        what = (
            "the batch size must stay free (one INT8 program serves batch 1 and batch 256), "
            "but the model fixes it"
        )
        fix = "Write a view or reshape without a literal batch size (x.flatten(1))"
    else:
        what = first_line(error)
        fix = (
            "Rewrite that operation with tensor operations (no Python branch on tensor "
            "values, .item(), .numpy() or data-dependent shapes)"
        )
    return ModelReferenceError(
        f"model {text!r}: torch.export cannot trace it, and methods {list(EXPORT_METHODS)} "
        f"start with torch.export: {what} (at {user_frame(error) or 'no line of the model'}). "
        f"{fix}, or drop pt2e and qat from `methods`"
    )


def check(text: str, num_classes: int, methods: list[str], image_shape=(3, 32, 32)) -> None:
    """Build the reference and try what the stages will do with it, on a batch of two images of
    `image_shape`: training and eval forwards; for pt2e and qat, their export and annotation (no
    calibration); for eager, its fusion groups. Raises ModelReferenceError naming the cause
    and the fix."""
    net = build(text, num_classes)
    images = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
    reused = _training_forward(net, images, num_classes, text)
    _forward(net.eval(), images, "eval", num_classes, text)
    if "eager" in methods and not hasattr(net, "fusion_groups"):
        raise ModelReferenceError(
            f"{EAGER_NEEDS}; {text} has no fusion_groups. Use method pt2e instead (it takes any "
            "model torch.export can trace): drop 'eager' from `methods`"
        )
    for method in EXPORT_METHODS:
        if method in methods:
            _prepare(net.eval(), images, text, method, reused)
