import io

import pytest
import torch
import torchvision
from quantpipe.models.build import build_model


def serialized_mb(module) -> float:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def test_resnet18_is_torchvisions_architecture():
    ours = build_model("resnet18", num_classes=1000, width=64).eval()
    theirs = torchvision.models.resnet18().eval()
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_study_size_is_reproduced():
    # The study's 46.84 MB is torchvision's resnet18 with its 1000-way head.
    assert serialized_mb(build_model("resnet18", num_classes=1000)) == pytest.approx(
        46.84, abs=0.01
    )


def test_cifar_variant_and_width():
    model = build_model("resnet18_cifar", num_classes=10, width=64)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=1e-3)
    narrow = build_model("resnet18_cifar", width=8)
    assert narrow.fc.in_features == 64
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,width", [("vgg", 64), ("resnet18", 0)])
def test_bad_model_arguments_are_named(name, width):
    with pytest.raises(ValueError, match=name if name == "vgg" else "width"):
        build_model(name, width=width)
