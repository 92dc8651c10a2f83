"""Task cifar10's torch-free facts (quantpipe.tasks.base.TaskSpec)."""

from quantpipe.tasks.base import TaskSpec
from quantpipe.tasks.classification.spec import (
    FIGURES,
    QUALITY,
    REPORT_COLUMNS,
    check_batch_sizes,
    check_qat_calibration,
)

TRAIN_IMAGES = 50_000
CLASSES = 10


def check(config: dict) -> None:
    if config.get("num_classes", CLASSES) < CLASSES:
        raise ValueError(f"num_classes {config['num_classes']} is below CIFAR-10's {CLASSES}")
    training_split = TRAIN_IMAGES - config["val_size"]
    too_large = [size for size in config["calibration_sizes"] if size > training_split]
    if too_large:
        raise ValueError(
            f"calibration_sizes {too_large} exceed the training split: {TRAIN_IMAGES} "
            f"images minus val_size {config['val_size']} = {training_split}. "
            "Lower them or val_size."
        )
    check_qat_calibration(config)
    check_batch_sizes(config)


SPEC = TaskSpec(
    name="cifar10",
    data="resources/cifar-10-batches-py",
    implementation="quantpipe.tasks.cifar10.task:Cifar10",
    models=("resnet18", "resnet18_cifar"),
    references=True,
    gpu_precisions=True,
    figures=FIGURES,
    data_keys=("cifar10_copy", "cifar10_url", "allow_download", "allow_npm"),
    run_keys=("num_classes", "val_size"),
    report_columns=REPORT_COLUMNS,
    quality=QUALITY,
    check=check,
)
