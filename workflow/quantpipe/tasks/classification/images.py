"""Image batches as classifiers take them: normalisation by channel statistics, batched random
crop and flip, fixed-size batches."""

import torch


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalised by the channel statistics `mean` and `std`."""
    images = images.float().div_(255)
    return (images - mean.to(images.device)) / std.to(images.device)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole uint8 batch at once.
    Each crop is a slice of the padded batch: no index tensors the size of the batch, which at
    224x224 would take several times its memory."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).tolist()
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).tolist()
    cropped = torch.stack(
        [
            padded[index, :, row : row + height, column : column + width]
            for index, (row, column) in enumerate(zip(top, left, strict=True))
        ]
    )
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def batches(items: torch.Tensor, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
