"""Every model the stages train, quantize and benchmark is built here: a built-in (ResNet18s,
U-Nets) or a model by reference (quantpipe.models.references)."""

from torch import nn

from quantpipe.artifacts import load_torch
from quantpipe.models import references as model_refs
from quantpipe.models.resnet import RESNETS, ResNet18
from quantpipe.models.unet import UNETS, build_unet

MODELS = RESNETS + UNETS


def build_model(name: str, num_classes: int = 10, width: int | None = None) -> nn.Module:
    """The model `name`: a built-in, or a reference (quantpipe.models.references:
    torchvision.NAME or package.module:callable). `num_classes` sizes a classifier; a U-Net
    always predicts one membrane channel. `width` applies to built-ins only (default 64)."""
    if not model_refs.is_builtin(name):
        if width is not None:
            raise ValueError(
                f"model {name!r} takes no width (got {width}): width applies to the built-in "
                f"models {', '.join(MODELS)} only"
            )
        return model_refs.build(name, num_classes)
    width = 64 if width is None else width
    if width < 1:
        raise ValueError(f"model width must be a positive integer, got {width}")
    if name in UNETS:
        return build_unet(name, width)
    return ResNet18(num_classes=num_classes, width=width, cifar_stem=name == "resnet18_cifar")


def load_trained(path: str) -> tuple[nn.Module, dict]:
    """The FP32 model of a train-stage checkpoint in eval mode, rebuilt from the architecture it
    records, and the record it was saved with."""
    checkpoint = load_torch(
        path,
        ("architecture", "state_dict", "record"),
        "Rerun the train stage (delete the file first) to make it again.",
        map_location="cpu",
    )
    net = build_model(**checkpoint["architecture"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval(), checkpoint["record"]
