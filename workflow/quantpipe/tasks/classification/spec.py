"""What every classification task's TaskSpec shares (torch-free: the Snakefile imports it at
every parse): the summary's figures, the report's columns and the checks across keys."""

FIGURES = (
    "accuracy_vs_throughput",
    "accuracy_delta_vs_calibration",
    "speedup_and_size",
    "latency_batch1",
    "batch_size_curve",
)

# The benchmark's measured columns, accuracy the quality one (TaskSpec.report_columns, quality).
REPORT_COLUMNS = (
    "accuracy", "images_per_s", "images_per_s_spread", "rounds", "round_images", "paired_speedup",
    "paired_speedup_spread", "reference_images_per_s", "latency_ms_p50", "latency_ms_p90",
    "latency_ms_p99", "macs_per_image", "achieved_gmac_per_s", "ceiling_gmac_per_s",
    "fraction_of_ceiling", "fraction_of_ceiling_batch1",
)  # fmt: skip
QUALITY = ("accuracy",)


def check_qat_calibration(config: dict) -> None:
    per_tensor = [name for name in config.get("calibration_methods", ()) if "_per_tensor" in name]
    if "qat" in config["methods"] and per_tensor:
        raise ValueError(
            f"method 'qat' cannot run calibration_methods {per_tensor}: torchao's QAT config "
            "supports per-channel weights only. Drop them, or run qat in a separate sweep"
        )


def check_batch_sizes(config: dict) -> None:
    """benchmark.batch_sizes (the batch-size curve): ascending, no repeats, each within the
    paired_images test images that every timed round passes over."""
    benchmark = config.get("benchmark", {})
    sizes = benchmark.get("batch_sizes", [])
    if sizes != sorted(set(sizes)):
        raise ValueError(
            f"benchmark.batch_sizes {sizes} must be ascending without repeats: write "
            f"{sorted(set(sizes))}"
        )
    limit = benchmark.get("paired_images", 1000)
    too_large = [size for size in sizes if size > limit]
    if too_large:
        raise ValueError(
            f"benchmark.batch_sizes {too_large} exceed benchmark.paired_images = {limit}, the "
            "test images each timed round passes over: lower them, or raise paired_images"
        )
