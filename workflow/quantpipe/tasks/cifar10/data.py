"""CIFAR-10 as tensors: the fixed train/validation split, normalisation, batched augmentation.

The validation split is drawn once with a fixed generator, independent of the run's seed, so every
seed, the calibration stage and the benchmark agree on which images are held out. Calibration takes
images from the training part; the test split is only ever used to measure.
"""

import torch

from quantpipe.tasks.cifar10.files import load_cifar10

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
    images = images.float().div_(255)
    return (images - MEAN.to(images.device)) / STD.to(images.device)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole uint8 batch at once."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width))[:, None, None, :]
    channels = torch.arange(images.shape[1])[None, :, None, None]
    cropped = padded[torch.arange(batch)[:, None, None, None], channels, rows, cols]
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def batches(images: torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def calibration_images(root: str, val_size: int, count: int, seed: int) -> torch.Tensor:
    """`count` normalised images drawn from the training split (never validation or test)."""
    train_images, _ = load_splits(root, val_size)["train"]
    if not 0 < count <= len(train_images):
        raise ValueError(
            f"calibration size {count} must be between 1 and the training split's "
            f"{len(train_images)} images (50,000 minus val_size {val_size})"
        )
    chosen = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    return normalize(train_images[chosen[:count]])
