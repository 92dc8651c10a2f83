"""Quantization-aware training (method qat): a short fine-tune whose INT8 artifact pt2e's loader
runs, the settings torchao's QAT cannot honour refused by name, and the quantize stage's qat run
on CIFAR-10's training split."""

import pytest
import torch
import torch.nn.functional as F
from quantpipe.models.build import build_model
from quantpipe.quantize import backend, pt2e


def colour_task(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class (0-2) is the brightest channel: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    images = torch.randint(0, 120, (count, 3, 32, 32), generator=generator)
    images[torch.arange(count), labels] += 100
    return images.to(torch.uint8), labels


def accuracy(model, images, labels) -> float:
    from quantpipe.tasks.cifar10.data import normalize

    with torch.no_grad():
        return (model(normalize(images)).argmax(1) == labels).float().mean().item()


@pytest.mark.slow
def test_qat_artifact_loads_with_pt2e_and_keeps_accuracy(tmp_path):
    """A few QAT steps on a tiny trained model: an INT8 artifact pt2e's loader runs, accurate."""
    from quantpipe.quantize import qat
    from quantpipe.tasks.cifar10.data import normalize
    from quantpipe.tasks.classification.images import augment

    torch.manual_seed(0)
    images, labels = colour_task(512, seed=0)
    test_images, test_labels = colour_task(256, seed=1)
    model = build_model("resnet18_cifar", width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):  # the "FP32 checkpoint"
        index = torch.randint(0, len(images), (64,), generator=generator)
        loss = F.cross_entropy(model(normalize(augment(images[index], generator))), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    fp32 = accuracy(model, test_images, test_labels)
    before = {name: value.clone() for name, value in model.state_dict().items()}

    lines = []
    fine_tune = qat.FineTune(
        images,
        labels,
        lambda batch, generator: normalize(augment(batch, generator)),
        steps=12,
        batch_size=32,
        lr=0.01,
        log_every=4,
    )
    calibration_batches = list(normalize(images[:64]).split(32))
    quantized = qat.quantize(model, calibration_batches, normalize(images[:2]), log=lines.append,
                             fine_tune=fine_tune)  # fmt: skip
    qat.save(quantized, tmp_path / "int8.pt", normalize(images[:2]))
    assert qat.load is pt2e.load and qat.compile_for_cpu is pt2e.compile_for_cpu
    loaded = pt2e.load(tmp_path / "int8.pt")
    int8 = accuracy(loaded, test_images, test_labels)
    print(f"FP32 {fp32:.3f}, QAT INT8 {int8:.3f}")
    assert fp32 > 0.9 and int8 >= fp32 - 0.05
    assert loaded(normalize(test_images[:1])).shape == (1, 10)  # the batch size stayed dynamic
    # The fine-tune froze batch norm, then the observers, and recorded where it ran and why.
    assert any("batch norm statistics frozen" in line for line in lines)
    assert any("observers frozen" in line for line in lines)
    record = fine_tune.record
    assert record["steps"] == 12 and record["freeze_bn_step"] < record["freeze_observers_step"]
    if torch.cuda.is_available():
        assert record["device"] == "cuda" and record["device_reason"].startswith("CUDA device")
    else:
        assert record["device"] == "cpu" and "CUDA" in record["device_reason"]
    assert len(record["history"]) == 3
    # The caller's FP32 model is left as it was.
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name])


def test_qat_settings_refuse_what_torchaos_qat_cannot_do():
    from quantpipe.quantize import qat

    assert qat.settings("histogram")["weights"] == "per_channel"
    assert qat.settings("minmax_reduce_range")["activation_range"] == [0, 127]
    with pytest.raises(ValueError, match="per-channel weights only"):
        qat.settings("histogram_per_tensor")
    config = qat.quantizer("moving_average_reduce_range").global_config
    assert config.is_qat and config.input_activation.quant_max == 127


@pytest.mark.slow
def test_qat_stage_fine_tunes_on_the_training_split(tmp_path, cifar_dir):
    """The quantize stage with method qat: CIFAR-10's training split, the `qat` config section,
    the device and its reason in metrics.json, an artifact the benchmark's loader takes."""
    import json

    from quantpipe.stages.quantize import run

    architecture = {"name": "resnet18_cifar", "width": 4, "num_classes": 10}
    torch.save(
        {"architecture": architecture, "state_dict": build_model(**architecture).state_dict(),
         "record": {"architecture": architecture, "config": {"label_smoothing": 0.0}}},
        tmp_path / "model.pt",
    )  # fmt: skip
    config = {"model": "resnet18_cifar", "width": 4, "seed": 0, "num_classes": 10,
              "val_size": 45000, "method": "qat", "calibration_method": "histogram",
              "calibration_size": 32, "calibration_batch_size": 16,
              "qat": {"steps": 4, "batch_size": 16, "lr": 0.001}}  # fmt: skip
    run(str(tmp_path / "model.pt"), str(cifar_dir), str(tmp_path / "int8.pt"),
        str(tmp_path / "metrics.json"), config, log=lambda _: None)  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["qat"]["steps"] == 4 and metrics["qat"]["training_images"] == 5000
    assert metrics["qat"]["label_smoothing"] == 0.0  # as the model was trained
    assert metrics["qat"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert metrics["qat"]["device_reason"]
    assert metrics["calibration_settings"]["weights"] == "per_channel"
    # The benchmark loads method qat's artifact with pt2e's loader (its compiled path is
    # test_compiled_pt2e_runs_small_batches_through_the_cpp_wrapper's).
    assert backend("qat").load is pt2e.load
    with torch.no_grad():
        logits = pt2e.load(tmp_path / "int8.pt")(torch.zeros(3, 3, 32, 32))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
