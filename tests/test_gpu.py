"""The GPU tier: the CUDA paths run for real, on a tiny network and a few CIFAR-10 images.

Training on CUDA in bf16, and a resume that sets the CUDA generators back; the benchmark's
fp32/bf16/fp16 GPU rows; a QAT fine-tune on CUDA. Every test skips, saying why, where CUDA is not
usable; the rest of the suite checks those paths' no-CUDA side. Run it alone with `-m gpu`.
"""

import json

import pytest
import torch
from quantpipe import precision
from quantpipe.models.build import build_model, load_trained
from quantpipe.quantize import pt2e
from quantpipe.stages import benchmark
from quantpipe.stages import quantize as quantize_stage
from quantpipe.stages import train as train_stage
from quantpipe.tasks.cifar10.data import load_splits, normalize

pytestmark = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py), failed in the gpu tier
# 2,000 training images, 1,000 validation images, width 8: seconds per epoch on a GPU.
CONFIG = {
    "model": "resnet18_cifar", "width": 8, "num_classes": 10, "seed": 5, "val_size": 1000,
    "images": 2000, "epochs": 2, "batch_size": 100, "lr": 0.1, "momentum": 0.9,
    "weight_decay": 5e-4, "label_smoothing": 0.1, "device": "cuda", "log_every": 5,
}  # fmt: skip


class Killed(Exception):
    pass


def train(data, out, log=lambda _: None, **changes) -> dict:
    return train_stage.run(str(data), str(out / "model.pt"), str(out / "metrics.json"),
                           {**CONFIG, **changes}, log=log)  # fmt: skip


@pytest.fixture(scope="module")
def cuda_model(cifar_dir, tmp_path_factory):
    """A model trained one epoch on CUDA, for the benchmark and QAT tests."""
    out = tmp_path_factory.mktemp("cuda_model")
    train(cifar_dir, out, epochs=1)
    return out / "model.pt"


def test_training_on_cuda_runs_in_bf16_and_resumes_with_its_cuda_rng(
    cifar_dir, tmp_path, monkeypatch
):
    seen = set()

    def watched(**architecture):  # the dtypes the first convolution computes in
        net = build_model(**architecture)
        net.conv1.register_forward_hook(lambda _module, _input, output: seen.add(output.dtype))
        return net

    monkeypatch.setattr(train_stage, "build_model", watched)
    straight = train(cifar_dir, tmp_path / "straight")
    assert straight["device"] == "cuda" and straight["device_reason"].startswith("CUDA device")
    assert straight["provenance"]["gpu_name"]
    assert torch.bfloat16 in seen  # the training steps, under autocast (evaluation stays FP32)
    assert 0.15 < straight["val_accuracy"] <= 1

    def draw_then_kill(line: str) -> None:
        if "epoch 1/" in line:  # CUDA random numbers drawn in epoch 1 move CUDA's generator
            torch.rand(1, device="cuda")
        if "epoch 2/" in line:
            raise Killed(line)

    with pytest.raises(Killed):
        train(cifar_dir, tmp_path / "resumed", log=draw_then_kill)
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    saved = checkpoint["rng"]["cuda"]
    torch.cuda.manual_seed_all(CONFIG["seed"])  # where a restart without the restore would be
    assert not torch.equal(saved[0], torch.cuda.get_rng_state(0))

    at_resume = []

    def snapshot(line: str) -> None:
        if "resuming from" in line:
            at_resume.extend(state.clone() for state in torch.cuda.get_rng_state_all())

    resumed = train(cifar_dir, tmp_path / "resumed", log=snapshot)
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run_here"] == 1
    assert len(at_resume) == len(saved)
    for got, expected in zip(at_resume, saved, strict=True):
        assert torch.equal(got, expected)
    a, _ = load_trained(tmp_path / "straight" / "model.pt")
    b, _ = load_trained(tmp_path / "resumed" / "model.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_the_gpu_precision_rows_carry_numbers(cuda_model, cifar_dir, tmp_path):
    rows = {}
    for variant in precision.GPU_VARIANTS:
        name = variant.split("-")[0]
        folder = tmp_path / variant
        config = {"variant": variant, "node_class": "gpu", "model": "resnet18_cifar",
                  "width": 8, "seed": 0, "val_size": 48000, "batch_size": 256, "warmup": 1,
                  "latency_iterations": 20, "rounds": 2, "paired_images": 512,
                  "batch_sizes": []}  # fmt: skip
        record = benchmark.run(str(cuda_model), str(cifar_dir), str(folder / "metrics.json"),
                               str(folder / "predictions.pt"), config, log=print)  # fmt: skip
        assert [row["method"] for row in record["rows"]] == ["eager", "compiled"]
        reason = precision.unusable(name)
        if reason:  # bf16 on a GPU without it: said so, no number
            assert all(row["status"] == "skipped" and row["reason"] == reason
                       for row in record["rows"])  # fmt: skip
            continue
        predictions = torch.load(folder / "predictions.pt", weights_only=True)
        assert sorted(predictions) == ["compiled", "eager"]
        assert all(len(kept) == 10_000 for kept in predictions.values())
        for row in record["rows"]:
            assert row["status"] == "ok" and row["device"] == "cuda" and row["precision"] == name
            assert 0.12 < row["accuracy"] <= 1  # above chance (0.10) after one short epoch
            assert row["images_per_s"] > 0 and row["latency_ms_p50"] > 0
            rows[(variant, row["method"])] = row
    fp32 = rows[("fp32-gpu", "eager")]
    for (variant, method), row in rows.items():
        print(f"{variant} {method}: accuracy {row['accuracy']:.4f}, "
              f"{row['images_per_s']:.0f} img/s, p50 {row['latency_ms_p50']:.3f} ms")  # fmt: skip
        assert row["size_bytes"] == fp32["size_bytes"]  # the weights stay FP32 under autocast
        assert abs(row["accuracy"] - fp32["accuracy"]) <= 0.02, (variant, method)


def test_qat_fine_tunes_on_cuda(cuda_model, cifar_dir, tmp_path):
    config = {"model": "resnet18_cifar", "width": 8, "seed": 0, "num_classes": 10,
              "val_size": 48000, "method": "qat", "calibration_method": "histogram",
              "calibration_size": 64, "calibration_batch_size": 32,
              "qat": {"steps": 6, "batch_size": 32, "device": "cuda"}}  # fmt: skip
    quantize_stage.run(str(cuda_model), str(cifar_dir), str(tmp_path / "int8.pt"),
                       str(tmp_path / "metrics.json"), config, log=print)  # fmt: skip
    record = json.loads((tmp_path / "metrics.json").read_text())["qat"]
    assert record["device"] == "cuda" and record["device_reason"].startswith("CUDA device")
    assert record["steps"] == 6 and record["history"][-1]["step"] == 6
    # The INT8 program runs on the CPU, as the benchmark runs it, close to the FP32 model.
    images, labels = load_splits(str(cifar_dir), config["val_size"])["test"]
    images, labels = normalize(images[:2000]), labels[:2000]
    fp32, _ = load_trained(cuda_model)
    int8 = pt2e.load(tmp_path / "int8.pt")
    with torch.no_grad():
        accuracy = {
            name: (model(images).argmax(1) == labels).float().mean().item()
            for name, model in (("fp32", fp32), ("int8", int8))
        }
    print(accuracy)
    assert accuracy["int8"] >= accuracy["fp32"] - 0.05
