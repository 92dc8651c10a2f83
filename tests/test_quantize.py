"""Both quantize backends on small models: INT8 outputs stay close to FP32, artifacts reload."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from quantpipe.models.build import build_model
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
        pytest.param(
            lambda: build_model("resnet18_cifar", width=8), id="ours", marks=pytest.mark.slow
        ),
        pytest.param(  # reuses one ReLU per block
            lambda: torchvision.models.resnet18(num_classes=10),
            id="torchvision-resnet18",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            lambda: torchvision.models.mobilenet_v2(num_classes=10),
            id="mobilenet_v2",
            marks=pytest.mark.slow,
        ),
        pytest.param(UnseenNet, id="unseen"),
    ],
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert done.stdout.splitlines()[-1] == "ok"  # the comparison ran to its end


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


def test_an_eager_artifact_the_network_no_longer_fits_names_the_fix(tmp_path):
    from quantpipe.artifacts import ArtifactError

    converted = eager.quantize(trained_like(build_model("resnet18_cifar", width=4)),
                               calibration(count=1), log=lambda _: None)  # fmt: skip
    state = converted.state_dict()  # its _metadata (module versions) kept
    state["1.removed.scale"] = torch.tensor(1.0)
    architecture = {"name": "resnet18_cifar", "width": 4, "num_classes": 10}
    torch.save({"architecture": architecture, "state_dict": state}, tmp_path / "int8.pt")
    with pytest.raises(ArtifactError, match="not fit quantpipe's resnet18_cifar.*Rerun the quan"):
        eager.load(tmp_path / "int8.pt")


def test_eager_names_what_it_needs_from_a_model():
    with pytest.raises(TypeError, match="fusion groups.*Use method 'pt2e'"):
        eager.quantize(UnseenNet().eval(), calibration(count=1))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="'fp8'.*pt2e, eager"):
        backend("fp8")


@pytest.mark.slow
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


# --- calibration methods -----------------------------------------------------------------------


def prepared_observers(name: str) -> list:
    """The observer modules prepare_pt2e inserts into a small conv net for calibration `name`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = trained_like(build_model("resnet18_cifar", width=4))
    x = calibration(count=1)[0][:2]
    graph = torch.export.export(model, (x,)).module()
    prepared = prepare_pt2e(graph, pt2e.quantizer(name))
    return [m for n, m in prepared.named_modules() if "activation_post_process" in n]


def test_calibration_names_parse_back_and_match_the_schema():
    from conftest import REPO
    from quantpipe.quantize.calibration import DEFAULT, NAMES, parse

    assert DEFAULT == "histogram" and len(NAMES) == len(set(NAMES)) == 18
    for name in NAMES:
        assert parse(name).name == name
        assert re.fullmatch(r"[a-z_]+", name)  # fits the DAG's wildcard and variant names
    assert parse("minmax_per_tensor_full_range").as_dict() == {
        "observer": "minmax", "weights": "per_tensor", "range": "full_range",
    }  # fmt: skip
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    knob = schema["properties"]["calibration_methods"]
    assert tuple(knob["items"]["enum"]) == NAMES and knob["default"] == [DEFAULT]
    assert "default" in knob["description"].lower()
    with pytest.raises(ValueError, match="unknown calibration method 'kl'.*histogram"):
        parse("kl")


@pytest.mark.parametrize(
    "name, observer",
    [("histogram", "HistogramObserver"), ("minmax", "MinMaxObserver"),
     ("moving_average", "MovingAverageMinMaxObserver")],
)  # fmt: skip
def test_observer_choice_changes_the_observer_class(name, observer):
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    observers = prepared_observers(name)
    kinds = {type(m).__name__ for m in observers}
    assert observer in kinds
    others = {"HistogramObserver", "MinMaxObserver", "MovingAverageMinMaxObserver"} - {observer}
    assert not kinds & others
    assert any(isinstance(m, PerChannelMinMaxObserver) for m in observers)  # the weights
    prepared = eager._prepare(build_model("resnet18_cifar", width=4), name)
    eager_kinds = {type(m).__name__ for m in prepared.modules()}
    assert observer in eager_kinds and not eager_kinds & others


def test_default_calibration_is_torchaos_default_config():
    """The default sweep (histogram, per-channel) quantizes exactly as before the knob existed."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    ours = pt2e.quantizer(None).global_config
    theirs = xiq.get_default_x86_inductor_quantization_config()
    for spec in ("input_activation", "output_activation", "weight"):
        mine, reference = getattr(ours, spec), getattr(theirs, spec)
        assert (mine.dtype, mine.quant_min, mine.quant_max, mine.qscheme) == (
            reference.dtype, reference.quant_min, reference.quant_max, reference.qscheme,
        )  # fmt: skip
        assert type(mine.observer_or_fake_quant_ctr()) is type(
            reference.observer_or_fake_quant_ctr()
        )
    x86 = torch.ao.quantization.get_default_qconfig("x86")
    assert type(eager.qconfig(None).activation()) is type(x86.activation())
    assert eager.qconfig(None).activation().reduce_range is True  # the study's x86 qconfig
    assert type(eager.qconfig(None).weight()) is type(x86.weight())


def conv_weight_scales(graph_module: torch.fx.GraphModule) -> list[torch.Tensor]:
    """The per-channel weight scales of every dequantize_per_channel in a converted PT2E graph."""
    scales = []
    for node in graph_module.graph.nodes:
        if "dequantize_per_channel" in str(node.target):
            scale = node.args[1]
            scales.append(getattr(graph_module, scale.target))
    return scales


@pytest.mark.slow
def test_per_tensor_gives_one_weight_scale_per_tensor():
    model = trained_like(build_model("resnet18_cifar", width=8))
    x = calibration(seed=2, count=1)[0]
    with torch.no_grad():
        reference = model(x)
        per_channel = pt2e.quantize(model, calibration(count=2), x[:2], log=lambda _: None)
        per_tensor = pt2e.quantize(
            model,
            calibration(count=2),
            x[:2],
            log=lambda _: None,
            calibration="histogram_per_tensor",
        )
        assert relative_error(reference, per_tensor(x)) < 0.25
    channel_scales, tensor_scales = conv_weight_scales(per_channel), conv_weight_scales(per_tensor)
    assert len(channel_scales) == len(tensor_scales) > 10
    assert all(len(s.unique()) > 1 for s in channel_scales)
    assert all(len(s.unique()) == 1 for s in tensor_scales)
    converted = eager.quantize(model, calibration(count=2), log=lambda _: None,
                               calibration="minmax_per_tensor")  # fmt: skip
    schemes = {m.weight().qscheme() for m in converted.modules() if hasattr(m, "weight")
               and callable(m.weight)}  # fmt: skip
    assert schemes == {torch.per_tensor_affine} or schemes == {torch.per_tensor_symmetric}


def activation_ranges(graph_module: torch.fx.GraphModule) -> set[tuple[int, int]]:
    """(quant_min, quant_max) of every activation quantize node of a converted PT2E graph."""
    return {
        (node.args[3], node.args[4])
        for node in graph_module.graph.nodes
        if "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target)
    }


@pytest.mark.slow
def test_reduce_range_halves_the_activation_range(tmp_path):
    model = trained_like(build_model("resnet18_cifar", width=8))
    x = calibration(seed=2, count=1)[0]
    with torch.no_grad():
        full = pt2e.quantize(model, calibration(count=1), x[:2], log=lambda _: None)
        reduced = pt2e.quantize(model, calibration(count=1), x[:2], log=lambda _: None,
                                calibration="histogram_reduce_range")  # fmt: skip
        assert relative_error(model(x), reduced(x)) < 0.25
    assert activation_ranges(full) == {(0, 255)}
    assert activation_ranges(reduced) == {(0, 127)}
    assert pt2e.settings("histogram_reduce_range")["activation_range"] == [0, 127]
    # eager: on by default (the x86 qconfig), off with _full_range
    assert eager.qconfig("histogram").activation().quant_max == 127
    assert eager.qconfig("histogram_full_range").activation().quant_max == 255
    converted = eager.quantize(model, calibration(count=1), log=lambda _: None,
                               calibration="histogram_full_range")  # fmt: skip
    architecture = {"name": "resnet18_cifar", "width": 8, "num_classes": 10}
    eager.save(converted, tmp_path / "int8.pt", architecture, "histogram_full_range")
    with torch.no_grad():
        torch.testing.assert_close(eager.load(tmp_path / "int8.pt")(x), converted(x))


def test_eager_leaves_the_callers_model_alone():
    model = trained_like(build_model("resnet18_cifar", width=4))
    before = {name: type(module) for name, module in model.named_modules()}
    eager.quantize(model, calibration(count=1), log=lambda _: None)
    assert {name: type(module) for name, module in model.named_modules()} == before


@pytest.mark.slow
def test_per_tensor_pt2e_keeps_the_fused_int8_kernels():
    """Per-tensor weights written per channel still lower to oneDNN's fused INT8 convolution."""
    from torch._inductor.utils import run_and_get_code

    model = trained_like(build_model("resnet18_cifar", width=4))
    x = calibration(count=1)[0][:2]
    quantized = pt2e.quantize(model, calibration(count=1), x, log=lambda _: None,
                              calibration="minmax_per_tensor")  # fmt: skip
    compiled = pt2e.compile_for_cpu(quantized)
    with torch.no_grad():
        _, code = run_and_get_code(compiled, x)
    assert "qconv" in "\n".join(code)


@pytest.mark.slow
def test_compiled_pt2e_runs_small_batches_through_the_cpp_wrapper():
    """compile_for_cpu: the C++-wrapper compilation for small batches, the Python one for large;
    both give the same logits."""
    from torch._inductor.utils import run_and_get_code

    model = trained_like(build_model("resnet18_cifar", width=4))
    x = calibration(count=1)[0]
    quantized = pt2e.quantize(model, calibration(count=1), x[:2], log=lambda _: None)
    compiled = pt2e.compile_for_cpu(quantized)
    large = torch.cat([x] * 5)  # 80 images: above CPP_WRAPPER_MAX_BATCH
    assert len(large) > compiled.cpp_wrapper_max_batch >= len(x)
    with torch.no_grad():
        small_logits, large_logits = compiled(x), compiled(large)
        # The same graph at two batch sizes: oneDNN may pick another kernel for each and round
        # requantized values a step apart (seen: 9 of 160 logits, by 0.03), so each compiled path
        # is held to the reference graph, not to the other.
        reference = quantized(x)
        torch.testing.assert_close(small_logits, reference, rtol=0.05, atol=0.05)
        torch.testing.assert_close(large_logits[: len(x)], reference, rtol=0.05, atol=0.05)
        torch._dynamo.reset()
        _, small_code = run_and_get_code(pt2e.compile_for_cpu(quantized), x[:1])
    assert "aoti_torch" in "\n".join(small_code)  # the C++ wrapper calls the ops through AOTI shims


# --- qat ----------------------------------------------------------------------------------------


# --- the per-stage command line -----------------------------------------------------------------


@pytest.mark.slow
def test_the_quantize_command_works_as_the_manual_shows(tmp_path, cifar_dir):
    """`quantpipe quantize --model ... --data ... --artifact ... --metrics ... --config ...` on a
    checkpoint as the train stage writes it: an INT8 artifact close to the FP32 model, and its
    record."""
    import json
    from importlib.metadata import version

    from quantpipe.tasks.cifar10.data import load_splits, normalize

    run = {"model": "resnet18_cifar", "width": 4, "seed": 0, "num_classes": 10, "val_size": 45000}
    architecture = {"name": "resnet18_cifar", "width": 4, "num_classes": 10}
    splits = load_splits(str(cifar_dir), run["val_size"])
    # A few SGD steps on CIFAR-10's training split: trained weights and batch norm statistics,
    # in seconds (the train stage's own run is tests/test_train.py's).
    torch.manual_seed(0)
    model = build_model(**architecture)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, labels = splits["train"]
    for start in range(0, 1280, 64):
        loss = F.cross_entropy(model(normalize(images[start : start + 64])),
                               labels[start : start + 64])  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    torch.save({"architecture": architecture, "state_dict": model.state_dict(),
                "record": {"architecture": architecture, "config": run}},
               tmp_path / "model.pt")  # fmt: skip
    config = {**run, "method": "pt2e", "calibration_method": "histogram",
              "calibration_size": 32, "calibration_batch_size": 16}  # fmt: skip
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(config))
    command = [str(Path(sys.executable).with_name("quantpipe")), "quantize",
               "--model", str(tmp_path / "model.pt"), "--data", str(cifar_dir),
               "--artifact", str(tmp_path / "int8.pt"), "--metrics", str(tmp_path / "q.json"),
               "--config", str(tmp_path / "q.yaml")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "q.json").read_text())
    assert metrics["stage"] == "quantize" and metrics["config"] == config
    assert metrics["method"] == "pt2e" and metrics["calibration_method"] == "histogram"
    assert metrics["calibration_size"] == 32 and metrics["calibration_settings"]["weights"]
    assert metrics["size_bytes"] == (tmp_path / "int8.pt").stat().st_size > 0
    assert metrics["architecture"] == architecture
    assert metrics["provenance"]["versions"]["torch"] == version("torch")
    assert '"stage": "quantize"' in done.stdout  # the command prints the record
    # The artifact is this model in INT8: its logits on test images stay close.
    test_images = normalize(splits["test"][0][:256])
    with torch.no_grad():
        reference, int8 = model(test_images), pt2e.load(tmp_path / "int8.pt")(test_images)
    print(f"relative error {relative_error(reference, int8):.3f}")
    assert relative_error(reference, int8) < 0.25
