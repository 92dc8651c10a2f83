"""Task cifar10's implementation: CIFAR-10's splits and statistics for ClassificationTask."""

from quantpipe.tasks.cifar10.data import MEAN, STD, load_splits
from quantpipe.tasks.classification.task import ClassificationTask


class Cifar10(ClassificationTask):
    mean = MEAN
    std = STD
    image_shape = (3, 32, 32)

    def splits(self, data: str, config: dict) -> dict:
        return load_splits(data, config["val_size"])
