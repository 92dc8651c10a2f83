"""CIFAR-10 as tensors: the fixed train/validation split and the channel statistics.

The validation split is drawn once with a fixed generator, independent of the run's seed, so every
seed, the calibration stage and the benchmark agree on which images are held out. Calibration takes
images from the training part; the test split is only ever used to measure.
"""

import torch

from quantpipe.tasks.cifar10.files import load_cifar10
from quantpipe.tasks.classification import images as images_module

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
SPLIT_SEED = 20091  # fixed forever: changing it silently changes every validation set


def load_splits(root: str, val_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images (N, 3, 32, 32) and int64 labels for the train, val and test splits."""
    data = load_cifar10(root)
    images, labels = data["train_images"], data["train_labels"]
    if not 0 <= val_size < len(images):
        raise ValueError(f"val_size must be in [0, {len(images)}), got {val_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, val = order[val_size:], order[:val_size]
    return {
        "train": (images[train], labels[train]),
        "val": (images[val], labels[val]),
        "test": (data["test_images"], data["test_labels"]),
    }


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised by the CIFAR-10 channel statistics."""
    return images_module.normalize(images, MEAN, STD)
