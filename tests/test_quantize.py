"""Both quantize backends on small models: INT8 outputs stay close to FP32, artifacts reload."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from quantpipe.models import build_model
from quantpipe.quantize import backend, eager, pt2e
from torch import nn


def calibration(seed: int = 0, count: int = 4, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, size, size, generator=generator) for _ in range(count)]


def relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    return ((reference - output).norm() / reference.norm()).item()


class UnseenNet(nn.Module):
    """A model the pipeline never saw: its own block class, functional padding, slicing, reuse."""

    class Block(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, bias=False)
            self.norm = nn.BatchNorm2d(channels)

        def forward(self, x):
            return F.relu(self.norm(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate")))) + x

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.block = self.Block(16)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.block(self.block(x))  # the same module twice
        x = x[:, :8].mean((2, 3))  # slicing channels
        return self.head(x)


def trained_like(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial statistics, as a trained network has."""
    model.train()
    with torch.no_grad():
        for batch in calibration(seed=1):
            model(batch)
    return model.eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_model("resnet18_cifar", width=8),
        lambda: torchvision.models.resnet18(num_classes=10),  # reuses one ReLU per block
        lambda: torchvision.models.mobilenet_v2(num_classes=10),
        UnseenNet,
    ],
    ids=["ours", "torchvision-resnet18", "mobilenet_v2", "unseen"],
)
def test_pt2e_quantizes_any_cnn(make, tmp_path):
    torch.manual_seed(0)
    model = trained_like(make())
    x = calibration(seed=2, count=1)[0]
    with torch.no_grad():
        reference = model(x)
        quantized = pt2e.quantize(model, calibration(), x[:2], log=lambda _: None)
        assert relative_error(reference, quantized(x)) < 0.25
        path = tmp_path / "int8.pt"
        pt2e.save(quantized, path, x[:2])
        loaded = pt2e.load(path)
        torch.testing.assert_close(loaded(x), quantized(x))
        assert loaded(x[:1]).shape == reference[:1].shape  # the batch size stayed dynamic


def test_pt2e_artifact_holds_int8_weights_only(tmp_path):
    model = trained_like(build_model("resnet18_cifar", width=32))
    x = calibration(count=1)[0]
    pt2e.save(
        pt2e.quantize(model, calibration(count=2), x[:2], log=lambda _: None), tmp_path / "q", x[:2]
    )
    program = torch.export.load(tmp_path / "q")
    tensors = list(program.state_dict.values()) + [
        t for t in program.constants.values() if isinstance(t, torch.Tensor)
    ]
    int8 = sum(t.numel() for t in tensors if t.dtype == torch.int8)
    params = sum(p.numel() for p in model.parameters())
    assert int8 > 0.99 * sum(
        p.numel() for n, p in model.named_parameters() if "weight" in n and p.dim() > 1
    )
    assert sum(t.numel() * t.element_size() for t in tensors) < 0.3 * 4 * params


def test_pt2e_artifact_runs_in_a_fresh_process(tmp_path):
    """The benchmark job on another node has only the file: no model code, no calibration state."""
    model = trained_like(build_model("resnet18_cifar", width=8))
    x = calibration(count=1)[0]
    quantized = pt2e.quantize(model, calibration(count=2), x[:2], log=lambda _: None)
    pt2e.save(quantized, tmp_path / "int8.pt", x[:2])
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(quantized(x), tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from quantpipe.quantize import load_for_cpu\n"
        f"d = {str(tmp_path)!r}\n"
        "m = load_for_cpu('pt2e', d + '/int8.pt')\n"
        "x = torch.load(d + '/x.pt', weights_only=True)\n"
        "e = torch.load(d + '/expected.pt', weights_only=True)\n"
        "with torch.no_grad(): out = m(x)\n"
        "assert (out - e).abs().max() < 0.05 * e.abs().max(), (out - e).abs().max()\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_eager_roundtrip_and_close_to_fp32(tmp_path):
    architecture = {"name": "resnet18_cifar", "width": 8, "num_classes": 10}
    model = trained_like(build_model(**architecture))
    x = calibration(seed=2, count=1)[0]
    with torch.no_grad():
        reference = model(x)
        quantized = eager.quantize(model, calibration(), log=lambda _: None)
        assert relative_error(reference, quantized(x)) < 0.25
        eager.save(quantized, tmp_path / "int8.pt", architecture)
        loaded = eager.load(tmp_path / "int8.pt")
        torch.testing.assert_close(loaded(x), quantized(x))
    weights = torch.load(tmp_path / "int8.pt", weights_only=True)["state_dict"]
    assert any(t.dtype == torch.qint8 for t in weights.values() if isinstance(t, torch.Tensor))


def test_eager_names_what_it_needs_from_a_model():
    with pytest.raises(TypeError, match="fusion groups.*Use method 'pt2e'"):
        eager.quantize(UnseenNet().eval(), calibration(count=1))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="'fp8'.*pt2e, eager"):
        backend("fp8")


@pytest.mark.parametrize("method", ["pt2e", "eager"])
def test_full_width_artifact_is_four_times_smaller(tmp_path, method):
    architecture = {"name": "resnet18_cifar", "width": 64, "num_classes": 10}
    model = trained_like(build_model(**architecture))
    fp32 = tmp_path / "fp32.pt"
    torch.save(model.state_dict(), fp32)
    x = calibration(count=1)[0]
    if method == "pt2e":
        pt2e.save(
            pt2e.quantize(model, calibration(count=1), x[:2], log=lambda _: None),
            tmp_path / "q",
            x[:2],
        )
    else:
        eager.save(
            eager.quantize(model, calibration(count=1), log=lambda _: None),
            tmp_path / "q",
            architecture,
        )
    fp32_mb, int8_mb = fp32.stat().st_size / 1e6, (tmp_path / "q").stat().st_size / 1e6
    ratio = fp32_mb / int8_mb
    print(f"{method}: {fp32_mb:.2f} MB -> {int8_mb:.2f} MB ({ratio:.3f}x)")
    assert ratio >= 3.95
