"""Training and evaluation of a classifier: SGD with Nesterov momentum, label-smoothed
cross-entropy, validation accuracy (quantpipe.engine runs the epochs)."""

import math

import torch
from torch import nn

from quantpipe.engine import Training
from quantpipe.tasks.classification.images import batches


def evaluate(net: nn.Module, images, labels, device, transform, batch_size: int = 1000) -> float:
    """Accuracy of `net` on uint8 `images`, each batch made model input by `transform`."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = transform(images[start : start + batch_size].to(device))
            correct += (net(x).argmax(1).cpu() == labels[start : start + batch_size]).sum().item()
    return correct / max(len(images), 1)


def training(net: nn.Module, train, val, config: dict, normalize, augment) -> Training:
    """SGD + Nesterov momentum on (images, labels) `train`, a fresh permutation per epoch;
    each batch augmented, then normalised; validation accuracy on `val`."""
    images, labels = train
    batch_size = config["batch_size"]
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=config["lr"],
        momentum=config["momentum"],
        nesterov=True,
        weight_decay=config["weight_decay"],
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])

    def epoch(generator):
        order = torch.randperm(len(images), generator=generator)
        for index in batches(order, batch_size):
            yield normalize(augment(images[index], generator)), labels[index]

    def validate(model, device) -> dict:
        return {"val_accuracy": evaluate(model, *val, device, normalize)}

    return Training(
        optimizer=optimizer,
        steps_per_epoch=math.ceil(len(images) / batch_size),
        items_per_epoch=len(images),
        batches=epoch,
        loss=criterion,
        validate=validate,
        scores=("val_accuracy",),
        unit="images",
        channels_last=True,
    )
