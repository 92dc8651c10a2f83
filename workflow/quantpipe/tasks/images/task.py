"""Task images' implementation: a user's folder decoded into a verified cache on disk
(quantpipe.tasks.images.cache), read from disk by ClassificationTask batch by batch
(quantpipe.tasks.images.reader), with the training split's channel statistics."""

import numpy as np
import torch

from quantpipe.tasks.classification.task import ClassificationTask
from quantpipe.tasks.images import cache
from quantpipe.tasks.images.folder import SPLITS
from quantpipe.tasks.images.reader import ImagesOnDisk


class Images(ClassificationTask):
    compares_with_study = False  # the study measured CIFAR-10

    def prepare(self, data: str, config: dict, log=print) -> dict:
        return cache.prepare(
            data, config["root"], config["image_size"], config["val_fraction"], log
        )

    def splits(self, data: str, config: dict) -> dict:
        """Each split's images, read from the cache batch by batch, and its labels."""
        cache.load_manifest(data)
        return {
            split: (
                ImagesOnDisk(f"{data}/{split}_images.npy"),
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
