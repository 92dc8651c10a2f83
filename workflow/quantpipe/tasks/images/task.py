"""Task images' implementation: a user's folder decoded into a verified cache on disk
(quantpipe.tasks.images.cache), read memory-mapped by ClassificationTask batch by batch, with the
training split's channel statistics."""

import numpy as np
import torch

from quantpipe.tasks.classification.task import ClassificationTask
from quantpipe.tasks.images import cache
from quantpipe.tasks.images.folder import SPLITS


class Images(ClassificationTask):
    compares_with_study = False  # the study measured CIFAR-10

    def prepare(self, data: str, config: dict, log=print) -> dict:
        return cache.prepare(
            data, config["root"], config["image_size"], config["val_fraction"], log
        )

    def splits(self, data: str, config: dict) -> dict:
        """Each split's images memory-mapped (copy-on-write, so torch takes them without a
        copy; nothing writes to them) and its labels."""
        cache.load_manifest(data)
        return {
            split: (
                torch.from_numpy(np.load(f"{data}/{split}_images.npy", mmap_mode="c")),
                torch.from_numpy(np.load(f"{data}/{split}_labels.npy")),
            )
            for split in SPLITS
        }

    def channel_stats(self, data: str) -> tuple[torch.Tensor, torch.Tensor]:
        manifest = cache.load_manifest(data)
        return (
            torch.tensor(manifest["mean"], dtype=torch.float32).view(1, 3, 1, 1),
            torch.tensor(manifest["std"], dtype=torch.float32).view(1, 3, 1, 1),
        )

    def example_input(self, config: dict) -> torch.Tensor:
        return torch.zeros(1, 3, config["image_size"], config["image_size"])
