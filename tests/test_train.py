"""Training on real CIFAR-10 (a tiny network on a small split): records, checkpoints, resume."""

import pytest
import torch
from quantpipe.artifacts import read_json
from quantpipe.train import load_trained, run

CONFIG = {
    "model": "resnet18_cifar", "width": 4, "num_classes": 10, "seed": 3, "val_size": 48000,
    "epochs": 2, "batch_size": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "label_smoothing": 0.1, "device": "auto", "log_every": 5,
}  # fmt: skip


class Killed(Exception):
    pass


def kill_in_epoch(epoch: int):
    def log(line: str) -> None:
        if f"epoch {epoch}/" in line:
            raise Killed(line)

    return log


def train(tmp_path, name, log=lambda _: None, **changes):
    out = tmp_path / name
    return run(str(pytest.cifar_dir), str(out / "model.pt"), str(out / "metrics.json"),
               {**CONFIG, **changes}, log=log), out  # fmt: skip


@pytest.fixture(autouse=True)
def _data(cifar_dir):
    pytest.cifar_dir = cifar_dir


def test_a_resumed_run_ends_with_the_same_weights(tmp_path):
    straight, straight_dir = train(tmp_path, "straight")
    with pytest.raises(Killed):
        train(tmp_path, "resumed", log=kill_in_epoch(2))
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "resumed" / "model.pt").exists()
    resumed, resumed_dir = train(tmp_path, "resumed")
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run_here"] == 1
    a, _ = load_trained(straight_dir / "model.pt")
    b, _ = load_trained(resumed_dir / "model.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name

    def learning(history):  # images/s is a timing, the rest must match exactly
        return [{k: v for k, v in epoch.items() if k != "images_per_s"} for epoch in history]

    assert learning(resumed["history"]) == learning(straight["history"])


def test_record_describes_the_run(tmp_path):
    result, out = train(tmp_path, "one", epochs=1)
    record = read_json(out / "metrics.json")
    assert record["config"]["seed"] == 3 and record["device"] == "cpu"
    assert "no CUDA device" in record["device_reason"]
    assert record["provenance"]["threads"] >= 1 and record["provenance"]["versions"]["torch"]
    assert 0.15 < record["val_accuracy"] <= 1  # better than chance after one short epoch
    model, saved = load_trained(out / "model.pt")
    assert saved["val_accuracy"] == result["val_accuracy"]


def test_a_checkpoint_from_another_config_is_not_resumed(tmp_path):
    with pytest.raises(Killed):
        train(tmp_path, "run", log=kill_in_epoch(2))
    lines = []
    result, _ = train(tmp_path, "run", log=lines.append, lr=0.05)
    assert result["resumed_from_epoch"] == 0
    assert any("another training config" in line for line in lines)


def test_demanding_a_gpu_without_one_fails_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(RuntimeError, match="demands device 'cuda'.*set device: auto"):
        train(tmp_path, "gpu", device="cuda")
