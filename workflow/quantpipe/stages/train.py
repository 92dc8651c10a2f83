"""Train a ResNet18 on CIFAR-10: SGD + Nesterov momentum, one-cycle schedule, label smoothing.

Requeue-safe: every epoch ends in an atomic checkpoint (model, optimizer, scheduler, RNG state,
epoch, history); a restarted job resumes from it when the training config is unchanged. Each
epoch's shuffling and augmentation draw from a generator seeded by (seed, epoch), so a resumed run
ends with the same weights as an uninterrupted one. The model is chosen by nothing: the last epoch
is kept, and the validation split (held out of the training set) is reported, never the test set.
With `task: isbi2012_em` the stage trains a U-Net instead (quantpipe.tasks.isbi2012_em.train),
through the same
device choice, checkpoints, resume and record, which live here as functions.
"""

import math
import time
from pathlib import Path

import torch
from quantpipe import provenance
from quantpipe.artifacts import atomic_path, load_torch, write_json
from quantpipe.models import build_model
from quantpipe.models import references as model_refs
from quantpipe.tasks.cifar10.data import augment, batches, load_splits, normalize
from torch import nn

CHECKPOINT_NAME = "last.pt"


def architecture(config: dict) -> dict:
    """What the checkpoint keeps to rebuild the model without the config (build_model's
    arguments): a reference and its num_classes; a built-in's width too."""
    if not model_refs.is_builtin(config["model"]):
        return {"name": config["model"], "num_classes": config["num_classes"]}
    return {"name": config["model"], "width": config["width"], "num_classes": config["num_classes"]}


def choose_device(config: dict) -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        return torch.device("cuda"), f"CUDA device {torch.cuda.get_device_name(0)}"
    visible = provenance.collect()["cuda_visible_devices"]
    reason = (
        f"a GPU was allocated (CUDA_VISIBLE_DEVICES={visible}) but CUDA cannot use it"
        if visible
        else "no CUDA device on this node"
    )
    if config["device"] == "cuda":
        raise RuntimeError(
            f"config demands device 'cuda' but {reason}; set device: auto to allow CPU"
        )
    return torch.device("cpu"), f"running on the CPU: {reason}"


def evaluate(model: nn.Module, images, labels, device, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device))
            correct += (model(x).argmax(1).cpu() == labels[start : start + batch_size]).sum().item()
    return correct / max(len(images), 1)


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int):
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Each epoch's shuffling and augmentation: the same after a resume as without one."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def checkpoint_path_for(model: str) -> Path:
    return Path(model).parent / "checkpoints" / CHECKPOINT_NAME


def resume(checkpoint_path: Path, config: dict, net, optimizer, scheduler, log) -> tuple[int, list]:
    """(epochs done, history) of the last checkpoint if made with `config`; else (0, [])."""
    if not checkpoint_path.exists():
        return 0, []
    state = load_torch(
        checkpoint_path,
        ("model", "optimizer", "scheduler", "epoch", "config"),
        f"Delete {checkpoint_path} to train from the start.",
        # RNG states must stay CPU tensors; load_state_dict moves weights to the device.
        map_location="cpu",
    )
    if state["config"] != config:
        log(f"train: ignoring {checkpoint_path}: it was made with another training config")
        return 0, []
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and "cuda" in state["rng"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    log(f"train: resuming from {checkpoint_path} after epoch {state['epoch']}")
    return state["epoch"], state["history"]


def save_checkpoint(
    checkpoint_path: Path, config: dict, net, optimizer, scheduler, epoch: int, history: list
) -> None:
    with atomic_path(checkpoint_path) as tmp:
        torch.save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_states(),
                "epoch": epoch,
                "history": history,
                "config": config,
            },
            tmp,
        )


def save_trained(
    model: str,
    metrics: str,
    net: nn.Module,
    config: dict,
    *,
    architecture: dict,
    device: torch.device,
    device_reason: str,
    start_epoch: int,
    started: float,
    history: list,
    scores: dict,
) -> dict:
    """Write the final weights (CPU tensors) with their architecture and the run's record, and
    the record alone to `metrics`; `scores` are the last epoch's validation figures."""
    result = {
        "stage": "train",
        "config": config,
        "architecture": architecture,
        "device": device.type,
        "device_reason": device_reason,
        "epochs_run_here": config["epochs"] - start_epoch,
        "resumed_from_epoch": start_epoch,
        "seconds": time.perf_counter() - started,
        "history": history,
        **scores,
        "provenance": provenance.collect(),
    }
    weights = {name: tensor.cpu() for name, tensor in net.state_dict().items()}
    with atomic_path(model) as tmp:
        torch.save(
            {"architecture": result["architecture"], "state_dict": weights, "record": result}, tmp
        )
    write_json(metrics, result)
    return result


def run(data: str, model: str, metrics: str, config: dict, log=print) -> dict:
    """Train per `config`; write the final weights to `model` and the run's record to `metrics`."""
    if config.get("task") == "isbi2012_em":
        from quantpipe.tasks.isbi2012_em.train import run as train_em

        return train_em(data, model, metrics, config, log)
    threads = provenance.set_threads()
    device, device_reason = choose_device(config)
    log(f"train: {device_reason}; {threads} CPU threads")
    torch.manual_seed(config["seed"])
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    splits = load_splits(data, config["val_size"])
    train_images, train_labels = splits["train"]
    if config.get("images"):  # a quick run: a fixed prefix of the (already shuffled) split
        train_images, train_labels = (
            train_images[: config["images"]],
            train_labels[: config["images"]],
        )
    net = build_model(**architecture(config)).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=config["lr"],
        momentum=config["momentum"],
        nesterov=True,
        weight_decay=config["weight_decay"],
    )
    steps_per_epoch = math.ceil(len(train_images) / config["batch_size"])
    scheduler = one_cycle(optimizer, config["lr"], config["epochs"] * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])

    checkpoint_path = checkpoint_path_for(model)
    start_epoch, history = resume(checkpoint_path, config, net, optimizer, scheduler, log)

    started = time.perf_counter()
    for epoch in range(start_epoch, config["epochs"]):
        net.train()
        generator = epoch_generator(config["seed"], epoch)
        order = torch.randperm(len(train_images), generator=generator)
        epoch_start, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for step, index in enumerate(batches(order, config["batch_size"]), 1):
            x = normalize(augment(train_images[index], generator).to(device, non_blocking=True))
            y = train_labels[index].to(device, non_blocking=True)
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                output = net(x)
                loss = criterion(output, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(index)
            loss_sum += loss.item() * len(index)
            correct += (output.argmax(1) == y).sum().item()
            if step % config["log_every"] == 0 or step == steps_per_epoch:
                rate = seen / (time.perf_counter() - epoch_start)
                remaining = (config["epochs"] - epoch) * len(train_images) - seen
                log(
                    f"train: epoch {epoch + 1}/{config['epochs']} step {step}/{steps_per_epoch} "
                    f"loss {loss_sum / seen:.4f} {rate:.0f} img/s ETA {remaining / rate:.0f} s"
                )
        val_accuracy = evaluate(net, *splits["val"], device)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_accuracy": val_accuracy,
            "images_per_s": seen / (time.perf_counter() - epoch_start),
        }
        history.append(record)
        log(
            f"train: epoch {epoch + 1} done: loss {record['train_loss']:.4f} "
            f"train acc {record['train_accuracy']:.4f} val acc {val_accuracy:.4f}"
        )
        save_checkpoint(checkpoint_path, config, net, optimizer, scheduler, epoch + 1, history)

    return save_trained(
        model,
        metrics,
        net,
        config,
        architecture=architecture(config),
        device=device,
        device_reason=device_reason,
        start_epoch=start_epoch,
        started=started,
        history=history,
        scores={"val_accuracy": history[-1]["val_accuracy"] if history else None},
    )


def load_trained(path: str) -> tuple[nn.Module, dict]:
    """The FP32 model in eval mode and the record it was saved with."""
    checkpoint = load_torch(
        path,
        ("architecture", "state_dict", "record"),
        "Rerun the train stage (delete the file first) to make it again.",
        map_location="cpu",
    )
    net = build_model(**checkpoint["architecture"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval(), checkpoint["record"]
