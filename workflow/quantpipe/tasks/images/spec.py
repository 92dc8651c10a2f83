"""Task images' torch-free facts (quantpipe.tasks.base.TaskSpec): a user's folder of labelled
images, its settings in the config's `images` section."""

from quantpipe.tasks.base import TaskSpec
from quantpipe.tasks.classification.spec import (
    FIGURES,
    QUALITY,
    REPORT_COLUMNS,
    check_batch_sizes,
    check_qat_calibration,
)
from quantpipe.tasks.images import folder

# The calibration images are held in memory as float32, every stage's peak under 8 GB with room
# for the model and the quantizer's copies.
CALIBRATION_BYTES = 2 * 1024**3
DATA_KEYS = ("root", "image_size", "val_fraction")


def data_settings(config: dict) -> dict:
    return {key: config["images"][key] for key in DATA_KEYS}


def benchmark_settings(config: dict) -> dict:
    """The benchmark section, and the image size its example input takes."""
    return {**config["benchmark"], "image_size": config["images"]["image_size"]}


def data_inputs(config: dict) -> list[str]:
    """Every image of the folder: a changed, added or removed file reruns prepare_data."""
    root = config["images"]["root"]
    return folder.input_files(root) if root else []


def check(config: dict) -> None:
    images = config["images"]
    if not images["root"]:
        raise ValueError(
            "task images needs images.root: a folder holding train/CLASS/* and test/CLASS/* "
            "(PNG or JPEG)"
        )
    scanned = folder.scan(images["root"], images["val_fraction"])
    classes = scanned["classes"]
    if config["num_classes"] != len(classes):
        raise ValueError(
            f"num_classes is {config['num_classes']}, but {images['root']} holds "
            f"{len(classes)} classes ({', '.join(classes)}): set num_classes: {len(classes)}"
        )
    training_split = sum(file.split == "train" for file in scanned["files"])
    too_large = [size for size in config["calibration_sizes"] if size > training_split]
    if too_large:
        raise ValueError(
            f"calibration_sizes {too_large} exceed the training split's {training_split} images "
            f"(images.val_fraction {images['val_fraction']} held out). Lower them"
        )
    per_image = 3 * images["image_size"] ** 2 * 4
    too_big = [size for size in config["calibration_sizes"] if size * per_image > CALIBRATION_BYTES]
    if too_big:
        raise ValueError(
            f"calibration_sizes {too_big} at images.image_size {images['image_size']} take more "
            f"than {CALIBRATION_BYTES / 1e9:.1f} GB as float32 (the stage holds them in memory): "
            f"at most {CALIBRATION_BYTES // per_image} images"
        )
    check_qat_calibration(config)
    check_batch_sizes(config)


SPEC = TaskSpec(
    name="images",
    data="resources/images",
    implementation="quantpipe.tasks.images.task:Images",
    models=("resnet18", "resnet18_cifar"),
    references=True,
    gpu_precisions=True,
    figures=FIGURES,
    data_inputs=data_inputs,
    settings={"data": data_settings, "benchmark": benchmark_settings},
    run_keys=("num_classes",),
    report_columns=REPORT_COLUMNS,
    quality=QUALITY,
    check=check,
)
