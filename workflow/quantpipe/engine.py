"""The one training loop every task and QAT use: device choice, one-cycle schedule, the optimizer
steps over a task's batches and loss (`train_steps`, also QAT's fine-tune), epochs with validation,
atomic checkpoints and resume, the final weights and record.

Requeue-safe: every epoch ends in an atomic checkpoint (model, optimizer, scheduler, RNG state,
epoch, history); a restarted job resumes from it when the training config is unchanged. Each
epoch's random draws come from a generator seeded by (seed, epoch), so a resumed run ends with the
same weights as an uninterrupted one. The last epoch is kept: nothing is chosen on the test set.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quantpipe import provenance
from quantpipe.artifacts import atomic_path, load_torch, write_json

CHECKPOINT_NAME = "last.pt"


@dataclass
class Training:
    """What `fit` needs from a task for one run (quantpipe.tasks.base.Task.training).

    batches(generator) yields (inputs, targets) on the CPU for one epoch, drawing every random
    choice from `generator` so that a resumed run repeats it; it yields `steps_per_epoch` batches
    holding `items_per_epoch` items in all. loss(outputs, targets) is the training loss;
    validate(net, device) the validation scores recorded each epoch, named in `scores` (the
    train record keeps the last epoch's). `unit` names the items (images, patches) in the
    progress lines and the history's rate.
    """

    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    items_per_epoch: int
    batches: Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    validate: Callable[[nn.Module, torch.device], dict]
    scores: tuple[str, ...]
    unit: str = "images"
    channels_last: bool = False


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


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int):
    """A one-cycle schedule; its warm-up takes at least one step, so short runs work too (with
    two steps or fewer there is no cycle: the rate stays `lr`)."""
    if total_steps <= 2:
        for group in optimizer.param_groups:
            group["lr"] = lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps)
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


def save_trained(model: str, metrics: str, net: nn.Module, record: dict) -> dict:
    """Write the final weights (CPU tensors) with their architecture and the run's record, and
    the record alone to `metrics`."""
    weights = {name: tensor.cpu() for name, tensor in net.state_dict().items()}
    with atomic_path(model) as tmp:
        torch.save(
            {"architecture": record["architecture"], "state_dict": weights, "record": record}, tmp
        )
    write_json(metrics, record)
    return record


@dataclass
class Progress:
    """Where a pass of `train_steps` stands: its steps, the mean loss over them, the items they
    took and the seconds they ran."""

    step: int
    loss: float
    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    @property
    def shown_rate(self) -> str:
        """The rate for a progress line: a slow run (a wide 3D network on a CPU) shows decimals
        rather than "0"."""
        return f"{self.rate:.0f}" if self.rate >= 10 else f"{self.rate:.2f}"


def train_steps(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    *,
    steps: int,
    log_every: int,
    on_progress: Callable[[Progress], None],
    before_step: Callable[[int], None] | None = None,
    mixed_precision: bool = False,
    channels_last: bool = False,
) -> Progress:
    """Optimizer steps over `batches` ((inputs, targets) on the CPU; `steps` of them): forward,
    loss, backward, optimizer and schedule step. `on_progress` gets the pass so far every
    `log_every` steps and at the last; `before_step(index)` (0-based) runs ahead of each step
    (QAT freezes batch norm and observers there). `mixed_precision`: bf16 autocast."""
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    progress = Progress(0, 0.0, 0, 0.0)
    for step, (inputs, targets) in enumerate(batches, 1):
        if before_step is not None:
            before_step(step - 1)
        x = inputs.to(device, non_blocking=True)
        y = targets.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            batch_loss = loss(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(x)
        loss_sum += batch_loss.item() * len(x)
        progress = Progress(step, loss_sum / seen, seen, time.perf_counter() - started)
        if step % log_every == 0 or step == steps:
            on_progress(progress)
    return progress


def fit(
    net: nn.Module, training: Training, config: dict, model: str, device, log=print
) -> tuple[int, list]:
    """Train `net` for config['epochs'] epochs of `training`, checkpointing each into the folder
    of `model` and resuming from it; (the epoch it started from, the per-epoch history)."""
    on_gpu = device.type == "cuda"
    steps, epochs, unit = training.steps_per_epoch, config["epochs"], training.unit
    scheduler = one_cycle(training.optimizer, config["lr"], epochs * steps)
    checkpoint_path = checkpoint_path_for(model)
    start_epoch, history = resume(checkpoint_path, config, net, training.optimizer, scheduler, log)
    for epoch in range(start_epoch, epochs):

        def show(progress: Progress, epoch: int = epoch) -> None:
            remaining = (epochs - epoch) * training.items_per_epoch - progress.items
            log(
                f"train: epoch {epoch + 1}/{epochs} step {progress.step}/{steps} "
                f"loss {progress.loss:.4f} {progress.shown_rate} {unit}/s "
                f"ETA {remaining / progress.rate:.0f} s"
            )

        net.train()
        done = train_steps(
            net,
            training.batches(epoch_generator(config["seed"], epoch)),
            training.loss,
            training.optimizer,
            scheduler,
            device,
            steps=steps,
            log_every=config["log_every"],
            on_progress=show,
            mixed_precision=on_gpu,
            channels_last=on_gpu and training.channels_last,
        )
        scores = training.validate(net, device)
        history.append(
            {"epoch": epoch + 1, "train_loss": done.loss, **scores, f"{unit}_per_s": done.rate}
        )
        shown = ", ".join(f"{key} {value:.4f}" for key, value in scores.items())
        log(f"train: epoch {epoch + 1} done: loss {done.loss:.4f}, {shown}")
        save_checkpoint(
            checkpoint_path, config, net, training.optimizer, scheduler, epoch + 1, history
        )
    return start_epoch, history
