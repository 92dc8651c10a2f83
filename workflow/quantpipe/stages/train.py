"""The train stage: train a task's model on its training split with quantpipe.engine's loop, or
import weights trained elsewhere (config `weights`, quantpipe.models.weights) instead.

The task (quantpipe.tasks) gives the architecture, the optimizer, the batches, the loss and the
validation scores; the engine gives device choice, checkpoints and resume. Imported weights are
loaded into the model the run builds and validated once, with the task's own validation. Either
way the final weights are saved with the architecture, so every later stage rebuilds the model
without the config and cannot tell imported weights from trained ones.
"""

import time

import torch

from quantpipe import engine, provenance, tasks
from quantpipe.models.build import build_model
from quantpipe.models.weights import load_weights, sha256


def run(
    data: str, model: str, metrics: str, config: dict, weights: str | None = None, log=print
) -> dict:
    """Train per `config`, or import the file `weights` (the run's `weights` entry) instead;
    write the final weights to `model` and the run's record to `metrics`."""
    if "weights" in config and not weights:
        raise ValueError(
            f"config names weights {config['weights']['path']} to import: give that file as "
            "`weights` (quantpipe train --weights PATH)"
        )
    task = tasks.load(config.get("task"))
    threads = provenance.set_threads()
    device, device_reason = engine.choose_device(config)
    log(f"train: {device_reason}; {threads} CPU threads")
    torch.manual_seed(config["seed"])
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    architecture = task.architecture(config)
    net = build_model(**architecture)
    started = time.perf_counter()
    if weights:
        outcome = imported(task, data, net, weights, config, device, log)
    else:
        outcome = trained(task, data, net, config, model, device, log)
    record = {
        "stage": "train",
        "config": config,
        "architecture": architecture,
        "device": device.type,
        "device_reason": device_reason,
        **outcome,
        "seconds": time.perf_counter() - started,
        "provenance": provenance.collect(),
    }
    return engine.save_trained(model, metrics, net, record)


def trained(task, data: str, net, config: dict, model: str, device, log) -> dict:
    """Train `net` for the run's epochs (resuming from its checkpoint): what the record says."""
    net.to(device)
    training = task.training(data, config, net, device)
    if device.type == "cuda" and training.channels_last:
        net.to(memory_format=torch.channels_last)
    start_epoch, history = engine.fit(net, training, config, model, device, log)
    last = history[-1] if history else {}
    return {
        "epochs_run_here": config["epochs"] - start_epoch,
        "resumed_from_epoch": start_epoch,
        "history": history,
        **{key: last.get(key) for key in training.scores},
    }


def imported(task, data: str, net, weights: str, config: dict, device, log) -> dict:
    """Load the file `weights` into `net` and validate it, running no epoch: what the record
    says, with the file's SHA-256, what its loading adapted (quantpipe.models.weights) and the
    normalisation the run's inputs get."""
    entry = config.get("weights", {})
    adapted = load_weights(net, weights, config["model"], entry.get("prefix"), entry.get("key"),
                           log=lambda line: log(f"train: {line}"))  # fmt: skip
    scores = task.validate(data, config, net.to(device), device)
    digest = sha256(weights)
    shown = ", ".join(f"{key} {value:.4f}" for key, value in scores.items())
    log(f"train: imported {weights} (sha256 {digest[:12]}...), not trained: {shown}")
    return {
        "epochs_run_here": 0,
        "resumed_from_epoch": 0,
        "history": [],
        **scores,
        "weights": {
            "path": weights,
            "sha256": digest,
            "imported": True,
            "adapted": adapted,
            "mean": None,
            "std": None,
            **task.normalization(data, config),
        },
    }
