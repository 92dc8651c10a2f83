"""The train stage: train a task's model on its training split with quantpipe.engine's loop.

The task (quantpipe.tasks) gives the architecture, the optimizer, the batches, the loss and the
validation scores; the engine gives device choice, checkpoints and resume. The final weights are
saved with the architecture, so every later stage rebuilds the model without the config.
"""

import time

import torch

from quantpipe import engine, provenance, tasks
from quantpipe.models.build import build_model


def run(data: str, model: str, metrics: str, config: dict, log=print) -> dict:
    """Train per `config`; write the final weights to `model` and the run's record to `metrics`."""
    task = tasks.load(config.get("task"))
    threads = provenance.set_threads()
    device, device_reason = engine.choose_device(config)
    log(f"train: {device_reason}; {threads} CPU threads")
    torch.manual_seed(config["seed"])
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    architecture = task.architecture(config)
    net = build_model(**architecture).to(device)
    training = task.training(data, config, net, device)
    if device.type == "cuda" and training.channels_last:
        net = net.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    start_epoch, history = engine.fit(net, training, config, model, device, log)
    last = history[-1] if history else {}
    record = {
        "stage": "train",
        "config": config,
        "architecture": architecture,
        "device": device.type,
        "device_reason": device_reason,
        "epochs_run_here": config["epochs"] - start_epoch,
        "resumed_from_epoch": start_epoch,
        "seconds": time.perf_counter() - started,
        "history": history,
        **{key: last.get(key) for key in training.scores},
        "provenance": provenance.collect(),
    }
    return engine.save_trained(model, metrics, net, record)
