"""Training on real CIFAR-10 (a tiny network on a small split): records, checkpoints, resume."""

import pytest
import torch
from quantpipe.artifacts import read_json
from quantpipe.engine import checkpoint_path_for, one_cycle, resume, save_checkpoint
from quantpipe.models.build import load_trained
from quantpipe.stages.train import run

# 2,000 training images (`images`) and 1,000 validation images: a few seconds an epoch.
CONFIG = {
    "model": "resnet18_cifar", "width": 4, "num_classes": 10, "seed": 3, "val_size": 1000,
    "images": 2000, "epochs": 2, "batch_size": 100, "lr": 0.1, "momentum": 0.9,
    "weight_decay": 5e-4, "label_smoothing": 0.1, "device": "auto", "log_every": 5,
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


@pytest.fixture(scope="module")
def straight_run(cifar_dir, tmp_path_factory):
    """One uninterrupted run of CONFIG, shared by the tests that only read it."""
    pytest.cifar_dir = cifar_dir
    return train(tmp_path_factory.mktemp("train"), "straight")


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_same_weights(tmp_path, straight_run):
    straight, straight_dir = straight_run
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


@pytest.mark.slow
def test_record_describes_the_run(straight_run):
    result, out = straight_run
    record = read_json(out / "metrics.json")
    assert record["config"]["seed"] == 3 and record["config"]["images"] == 2000
    assert [epoch["epoch"] for epoch in record["history"]] == [1, 2]
    if torch.cuda.is_available():
        assert record["device"] == "cuda" and record["device_reason"].startswith("CUDA device")
    else:
        assert record["device"] == "cpu" and "no CUDA device" in record["device_reason"]
    assert record["provenance"]["threads"] >= 1 and record["provenance"]["versions"]["torch"]
    assert 0.15 < record["val_accuracy"] <= 1  # better than chance (0.1) after two short epochs
    model, saved = load_trained(out / "model.pt")
    assert saved["val_accuracy"] == result["val_accuracy"]


@pytest.mark.slow
def test_a_checkpoint_from_another_config_is_not_resumed(tmp_path):
    with pytest.raises(Killed):
        train(tmp_path, "run", log=kill_in_epoch(2))
    lines = []

    def log(line: str) -> None:  # stop once it is clear where training starts again
        lines.append(line)
        if "epoch " in line and "step" in line:
            raise Killed(line)

    with pytest.raises(Killed, match="epoch 1/2 step"):  # from the start, not from epoch 2
        train(tmp_path, "run", log=log, lr=0.05)
    assert any("another training config" in line for line in lines)
    assert not any("resuming from" in line for line in lines)


def test_demanding_a_gpu_without_one_fails_clearly(tmp_path, monkeypatch):
    # As on a node without a usable GPU, also where this machine has one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(RuntimeError, match="demands device 'cuda'.*set device: auto"):
        train(tmp_path, "gpu", device="cuda")


def test_a_checkpoint_carries_the_cuda_rng_state_to_the_resumed_run(tmp_path, monkeypatch):
    """Every CUDA generator's state goes into the checkpoint and is set back on resume. CUDA is
    faked here, so the bookkeeping is checked on any machine; tests/test_gpu.py checks it on a
    GPU."""
    states = [torch.arange(16, dtype=torch.uint8), torch.full((16,), 7, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)

    def parts():
        net = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        return net, optimizer, one_cycle(optimizer, 0.1, 10)

    path = checkpoint_path_for(str(tmp_path / "model.pt"))
    save_checkpoint(path, CONFIG, *parts(), 1, [{"epoch": 1}])
    assert restored == []
    lines = []
    assert resume(path, CONFIG, *parts(), lines.append) == (1, [{"epoch": 1}])
    assert len(restored) == len(states)
    for got, saved in zip(restored, states, strict=True):
        assert torch.equal(got, saved)
    assert any("resuming from" in line for line in lines)


def test_train_steps_reports_progress_and_runs_the_hook_before_each_step():
    """The step loop training and QAT share: the hook sees each step (0-based) before it runs,
    progress comes every `log_every` steps and at the last, with the mean loss over the pass."""
    from quantpipe.engine import Progress, train_steps

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # no learning: every loss is known
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batches = [(torch.full((2, 3), float(step)), torch.zeros(2, 1)) for step in range(5)]
    hooked, shown = [], []
    losses = [torch.nn.functional.mse_loss(net(x), y).item() for x, y in batches]
    done = train_steps(
        net,
        iter(batches),
        torch.nn.functional.mse_loss,
        optimizer,
        scheduler,
        torch.device("cpu"),
        steps=5,
        log_every=2,
        on_progress=shown.append,
        before_step=hooked.append,
    )
    assert hooked == [0, 1, 2, 3, 4]
    assert [progress.step for progress in shown] == [2, 4, 5]
    assert done.step == 5 and done.items == 10
    assert done.loss == pytest.approx(sum(losses) / 5)
    assert shown[0].loss == pytest.approx(sum(losses[:2]) / 2)
    # A slow run's rate keeps its decimals in the progress line.
    assert Progress(1, 0.0, 1, 4.0).shown_rate == "0.25"
    assert Progress(1, 0.0, 400, 4.0).shown_rate == "100"
