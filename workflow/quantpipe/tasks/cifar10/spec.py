"""Task cifar10's torch-free facts (quantpipe.tasks.base.TaskSpec)."""

from quantpipe.tasks.base import TaskSpec

TRAIN_IMAGES = 50_000


def check(config: dict) -> None:
    training_split = TRAIN_IMAGES - config["val_size"]
    too_large = [size for size in config["calibration_sizes"] if size > training_split]
    if too_large:
        raise ValueError(
            f"calibration_sizes {too_large} exceed the training split: {TRAIN_IMAGES} "
            f"images minus val_size {config['val_size']} = {training_split}. "
            "Lower them or val_size."
        )
    per_tensor = [name for name in config.get("calibration_methods", ()) if "_per_tensor" in name]
    if "qat" in config["methods"] and per_tensor:
        raise ValueError(
            f"method 'qat' cannot run calibration_methods {per_tensor}: torchao's QAT config "
            "supports per-channel weights only. Drop them, or run qat in a separate sweep"
        )


SPEC = TaskSpec(
    name="cifar10",
    data="resources/cifar-10-batches-py",
    implementation="quantpipe.tasks.cifar10.task:Cifar10",
    models=("resnet18", "resnet18_cifar"),
    references=True,
    gpu_precisions=True,
    figures=(
        "accuracy_vs_throughput",
        "accuracy_delta_vs_calibration",
        "speedup_and_size",
        "latency_batch1",
    ),
    data_keys=("cifar10_copy", "cifar10_url", "allow_download", "allow_npm"),
    run_keys=("num_classes", "val_size"),
    report_columns=(
        "accuracy",
        "images_per_s",
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_p99",
        "macs_per_image",
        "achieved_gmac_per_s",
        "ceiling_gmac_per_s",
        "fraction_of_ceiling",
        "fraction_of_ceiling_batch1",
    ),  # fmt: skip
    quality=("accuracy",),
    check=check,
)
