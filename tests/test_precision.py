"""The GPU precision variants (fp32-gpu, bf16-gpu, fp16-gpu): what can be checked without CUDA.

The autocast wrapper runs on the CPU too (bf16 and fp16 autocast exist there), so its dtype logic
is tested here; where CUDA is absent every GPU row says skipped, with the reason and no number
(tested on every machine by hiding CUDA). tests/test_gpu.py measures the rows on a GPU.
"""

import json

import pytest
import torch
from quantpipe import precision
from quantpipe.models.build import build_model
from quantpipe.reporting.document import variant_label
from quantpipe.stages import benchmark


@pytest.fixture
def no_cuda(monkeypatch):
    """This process as on a node without a usable GPU, also where one is present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18_cifar", width=4).eval()


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_convolutions_in_the_precision_and_returns_fp32(name, dtype):
    model, x = tiny_model(), torch.randn(4, 3, 32, 32)
    seen = []
    model.conv1.register_forward_hook(lambda _module, _input, output: seen.append(output.dtype))
    wrapped = precision.for_precision(model, name)
    with torch.no_grad():
        reference, output = model(x), wrapped(x)
    assert seen == [torch.float32, dtype]  # the plain call, then the autocast one
    assert output.dtype == torch.float32 and output.shape == reference.shape
    assert ((output - reference).norm() / reference.norm()).item() < 0.05
    assert wrapped.module is model  # the FP32 weights are shared, not converted


def test_fp32_is_the_model_itself_and_unknown_precisions_are_named():
    model = tiny_model()
    assert precision.for_precision(model, "fp32") is model
    with pytest.raises(ValueError, match="'int4'.*fp32, bf16, fp16"):
        precision.for_precision(model, "int4")
    assert precision.GPU_VARIANTS == ("fp32-gpu", "bf16-gpu", "fp16-gpu")
    assert set(precision.GPU_VARIANTS) <= set(benchmark.VARIANTS)


def test_autocast_compiles():
    """torch.compile traces the autocast region (the compiled GPU rows run it so)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10))  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    model(x)  # materialise the lazy layer
    compiled = torch.compile(precision.for_precision(model, "bf16"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), precision.for_precision(model, "bf16")(x),
                                   rtol=0.05, atol=0.05)  # fmt: skip


def test_without_cuda_every_precision_is_unusable_and_says_why(no_cuda, monkeypatch):
    for name in ("fp32", "bf16", "fp16"):
        assert precision.unusable(name) == "no CUDA device on this node"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    reason = precision.unusable("bf16")
    assert reason == "CUDA cannot use the allocated GPU (CUDA_VISIBLE_DEVICES=0)"


def test_the_precisions_are_usable_where_cuda_is():
    """On this machine: usable with CUDA (bf16 where the GPU has it natively), else the reason."""
    if not torch.cuda.is_available():
        assert "CUDA" in precision.unusable("fp32") and "CUDA" in precision.unusable("fp16")
        return
    assert precision.unusable("fp32") is None and precision.unusable("fp16") is None
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert (precision.unusable("bf16") is None) == native_bf16


@pytest.mark.parametrize("variant", ["fp32-gpu", "bf16-gpu", "fp16-gpu"])
def test_gpu_variant_rows_say_skipped_with_no_numbers(variant, tmp_path, no_cuda):
    config = {"variant": variant, "node_class": "gpu", "model": "resnet18_cifar", "width": 4,
              "seed": 0}  # fmt: skip
    metrics, predictions = str(tmp_path / "metrics.json"), str(tmp_path / "predictions.pt")
    record = benchmark.run("unread.pt", "unread", metrics, predictions, config, log=lambda _: None)
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert rows == record["rows"] and [row["method"] for row in rows] == ["eager", "compiled"]
    for row in rows:
        assert row["status"] == "skipped" and row["reason"] == "no CUDA device on this node"
        assert row["device"] == "cuda" and row["precision"] == variant.split("-")[0]
        assert row["node_class"] == "gpu"  # every row names the class its job ran as
        assert not {"accuracy", "images_per_s", "latency_ms_p50", "size_bytes"} & set(row)
        label = variant_label(row)
        assert label == f"{variant.split('-')[0].upper()} GPU {row['method']}"
    assert torch.load(tmp_path / "predictions.pt", weights_only=True) == {}


def test_gpu_check_script_packs_and_reports_the_rows(tmp_path, cifar_dir, capsys):
    """workflow/scripts/gpu_check.py, as a lent GPU machine runs it: measured rows with CUDA,
    skipped ones with the reason without."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "gpu_check", REPO / "workflow" / "scripts" / "gpu_check.py"
    )
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    architecture = {"name": "resnet18_cifar", "width": 4, "num_classes": 10}
    weights = build_model(**architecture).state_dict()
    torch.save({"architecture": architecture, "record": {}, "state_dict": weights},
               tmp_path / "m.pt")  # fmt: skip
    bundle = tmp_path / "bundle"
    gpu_check.main(["pack", "--model", str(tmp_path / "m.pt"), "--data", str(cifar_dir),
                    "--out", str(bundle)])  # fmt: skip
    assert sorted(path.name for path in bundle.iterdir()) == ["model.pt", "test.pt"]
    gpu_check.main(["run", "--bundle", str(bundle), "--warmup", "1", "--latency-iterations", "20",
                    "--json", str(tmp_path / "rows.json")])  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(row["variant"], row["method"]) for row in rows] == [
        (f"{name}-gpu", method)
        for name in ("fp32", "bf16", "fp16")
        for method in ("eager", "compiled")
    ]
    printed = capsys.readouterr().out
    for row in rows:
        reason = precision.unusable(row["variant"].split("-")[0])
        if reason:  # without CUDA: every row
            assert row["status"] == "skipped" and row["reason"] == reason
            assert f"| {row['variant']} | {row['method']} | skipped: {reason} |" in printed
        else:
            assert row["status"] == "ok" and 0 <= row["accuracy"] <= 1
            assert row["images_per_s"] > 0 and row["latency_ms_p50"] > 0 and row["size_mb"] > 0
            assert f"| {row['variant']} | {row['method']} | ok | {row['accuracy']:.4f} |" in printed
