"""Quantization-aware training: a short fine-tune with fake quantization, then PT2E's INT8 graph.

The flow is torchao's PT2E QAT: torch.export of the FP32 model in train mode, `prepare_qat_pt2e`
with X86InductorQuantizer's QAT config (fake quantizers with moving-average min-max observers,
per-channel weights; convolution and batch norm fused into one QAT pattern), a few hundred SGD
steps on augmented training images with a small, cosine-decayed learning rate (the training
engine's `train_steps`, as training uses), then `convert_pt2e`. Batch norm statistics are frozen
part-way (torchao's `move_exported_model_to_eval` switches the graph's batch norms to their
running statistics, weights still train) and the observers a little later (the quantization
ranges stop moving), as the PyTorch QAT recipes do.

The fine-tune runs on CUDA where it is usable, else on the CPU (recorded with the reason). The INT8
graph is the same kind as `pt2e`'s and is saved, loaded and compiled by pt2e's own functions, so
the benchmark runs it on the same Inductor/oneDNN CPU path.

The calibration images warm the observers up before the first step (in eval mode, as PTQ
calibration does); after that the fake quantizers follow the fine-tune. The calibration method's
range part (`_reduce_range` / `_full_range`) applies; its observer does not (QAT's ranges are
torchao's moving-average fake quantizers whatever the name says: `settings()` records it), and
per-tensor weights are refused: torchao's QAT config supports per-channel weights only.
"""

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchao.quantization.pt2e import (
    disable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

from quantpipe import engine
from quantpipe.quantize import pt2e
from quantpipe.quantize.calibration import Calibration, parse

# The artifact is pt2e's: the benchmark loads and compiles it with pt2e's functions.
from quantpipe.quantize.pt2e import compile_for_cpu, load, save  # noqa: F401

REDUCE_RANGE_DEFAULT = pt2e.REDUCE_RANGE_DEFAULT


@dataclass
class FineTune:
    """What the QAT fine-tune trains on and how; `record` is filled in by `quantize`.

    `images` are a task's training inputs and `labels` their classes; `transform(batch,
    generator)` makes a batch of them what the model takes (the task's augmentation and
    normalisation, as its training does). The freeze points are fractions of `steps`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    freeze_bn_after: float = 0.5
    freeze_observers_after: float = 0.75
    device: str = "auto"  # auto: CUDA when usable, else the CPU; cuda: fail without one
    seed: int = 0
    log_every: int = 50
    record: dict = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, images, labels, transform, qat: dict, trained: dict, seed: int
    ) -> "FineTune":
        """The stage's `qat` config section; momentum, weight decay and label smoothing as the
        model was trained (`trained`: the train stage's config, when the checkpoint has one)."""
        inherited = {
            key: trained[key]
            for key in ("momentum", "weight_decay", "label_smoothing")
            if key in trained
        }
        return cls(images, labels, transform, **{**inherited, **qat}, seed=seed)


def settings(calibration: str | Calibration | None = None) -> dict:
    """What this backend applies for a calibration method name."""
    calibration = parse(calibration)
    if calibration.weights != "per_channel":
        raise ValueError(
            f"qat cannot use calibration method {calibration.name!r}: torchao's QAT config "
            "supports per-channel weights only (drop _per_tensor, or use method pt2e)"
        )
    reduce_range = calibration.reduce_range(REDUCE_RANGE_DEFAULT)
    return {
        # QAT learns its ranges during the fine-tune: the calibration observer does not apply.
        "activation_observer": "FusedMovingAvgObsFakeQuantize(MovingAverageMinMaxObserver)",
        "weights": "per_channel",
        "reduce_range": reduce_range,
        "activation_range": [0, 127 if reduce_range else 255],
    }


def quantizer(calibration: str | Calibration | None = None) -> xiq.X86InductorQuantizer:
    """torchao's x86 Inductor QAT config, with the calibration method's activation range."""
    calibration = parse(calibration)
    settings(calibration)  # refuses what QAT cannot do
    config = xiq.get_default_x86_inductor_quantization_config(
        is_qat=True, reduce_range=calibration.reduce_range(REDUCE_RANGE_DEFAULT)
    )
    return xiq.X86InductorQuantizer().set_global(config)


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / steps))


def prepare(
    model: nn.Module, example: torch.Tensor, calibration: str | Calibration | None = None
) -> torch.fx.GraphModule:
    """A copy of `model` exported in train mode (batch norms use batch statistics; the caller's
    model stays) with fake quantizers inserted, on the CPU. quantpipe.quantize.readiness.check runs
    it on a model by reference before any job, so one it fails on is refused there."""
    net = copy.deepcopy(model).cpu().train()
    graph_module = torch.export.export(net, (example,), dynamic_shapes=pt2e._batch_dim()).module()
    pt2e._split_reused_module_calls(graph_module)
    return prepare_qat_pt2e(graph_module, quantizer(calibration))


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    log=print,
    calibration: str | Calibration | None = None,
    fine_tune: FineTune | None = None,
) -> torch.fx.GraphModule:
    """Export `model` for training, insert fake quantizers, warm them up on the calibration
    batches, fine-tune per `fine_tune`, and convert to an INT8 graph (on the CPU)."""
    if fine_tune is None:
        raise ValueError(
            "qat needs training images and labels: pass fine_tune=qat.FineTune(images, labels)"
        )
    if example.shape[0] < 2:
        raise ValueError(
            "the example batch needs at least 2 images so the batch size stays dynamic"
        )
    tune = fine_tune
    device, reason = engine.choose_device({"device": tune.device})
    log(f"qat: {reason}")
    started = time.perf_counter()
    prepared = prepare(model, example, calibration).to(device)

    # Warm-up: the calibration images set the first ranges, with batch norm's running statistics.
    move_exported_model_to_eval(prepared)
    seen = 0
    with torch.no_grad():
        for batch in calibration_batches:
            prepared(batch.to(device))
            seen += batch.shape[0]
    log(f"qat: observers warmed up on {seen} calibration images")
    move_exported_model_to_train(prepared)

    optimizer = torch.optim.SGD(
        prepared.parameters(),
        lr=tune.lr,
        momentum=tune.momentum,
        nesterov=tune.momentum > 0,
        weight_decay=tune.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, tune.steps))
    freeze_bn_step = round(tune.freeze_bn_after * tune.steps)
    freeze_observers_step = round(tune.freeze_observers_after * tune.steps)
    generator = torch.Generator().manual_seed(tune.seed * 100_003 + 7)

    def batches():
        """`steps` batches of augmented training images, reshuffled whenever they run out."""
        order, position = torch.randperm(len(tune.images), generator=generator), 0
        for _ in range(tune.steps):
            if position + tune.batch_size > len(order):
                order, position = torch.randperm(len(tune.images), generator=generator), 0
            index = order[position : position + tune.batch_size]
            position += tune.batch_size
            yield tune.transform(tune.images[index], generator), tune.labels[index]

    def freeze(step: int) -> None:
        if step == freeze_bn_step:
            move_exported_model_to_eval(prepared)  # batch norm: running statistics from here on
            log(f"qat: step {step}: batch norm statistics frozen")
        if step == freeze_observers_step:
            prepared.apply(disable_observer)  # quantization ranges fixed from here on
            log(f"qat: step {step}: observers frozen")

    history = []

    def show(progress: engine.Progress) -> None:
        history.append({"step": progress.step, "loss": progress.loss})
        remaining = (tune.steps - progress.step) * tune.batch_size
        log(
            f"qat: step {progress.step}/{tune.steps} loss {progress.loss:.4f} "
            f"{progress.shown_rate} img/s ETA {remaining / progress.rate:.0f} s"
        )

    engine.train_steps(
        prepared,
        batches(),
        nn.CrossEntropyLoss(label_smoothing=tune.label_smoothing),
        optimizer,
        scheduler,
        device,
        steps=tune.steps,
        log_every=tune.log_every,
        on_progress=show,
        before_step=freeze,
    )
    trained_seconds = time.perf_counter() - started

    prepared = prepared.cpu()
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        quantized = convert_pt2e(prepared)
    tune.record.update(
        {
            "device": device.type,
            "device_reason": reason,
            "steps": tune.steps,
            "batch_size": tune.batch_size,
            "lr": tune.lr,
            "schedule": "cosine to 0",
            "momentum": tune.momentum,
            "weight_decay": tune.weight_decay,
            "label_smoothing": tune.label_smoothing,
            "freeze_bn_step": freeze_bn_step,
            "freeze_observers_step": freeze_observers_step,
            "warmup_images": seen,
            "training_images": len(tune.images),
            "seconds": trained_seconds,
            "history": history,
        }
    )
    return quantized
