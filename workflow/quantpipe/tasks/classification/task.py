"""ClassificationTask: the stages' interface for image classifiers, from a subclass's data splits
and channel statistics (cifar10, images).

Every stage reads the uint8 images batch by batch and normalises each batch as it goes, so a
split can be an array on disk far larger than memory (task images); only the calibration
images are held whole, as the quantizers take them.
"""

from functools import partial

import torch

from quantpipe import ceilings
from quantpipe.models import references as model_refs
from quantpipe.tasks.base import Task
from quantpipe.tasks.classification import images as batched
from quantpipe.tasks.classification.figures import render_figures
from quantpipe.tasks.classification.measure import measure
from quantpipe.tasks.classification.rounds import batch_curve, timed_rounds
from quantpipe.tasks.classification.summary import (
    curve_summary,
    document,
    paired_measurements,
    summarize,
)
from quantpipe.tasks.classification.training import evaluate, training


class ClassificationTask(Task):
    """A subclass gives `splits(data, config)` -> {"train", "val", "test": (uint8 images (N, C,
    H, W), int64 labels)}, in memory or read from disk by batches; `channel_stats(data)`, the
    mean and std ((1, C, 1, 1) tensors) images are normalised with; and the `image_shape`
    (C, H, W) its data comes in, or its own `example_input`. A run of imported weights
    normalises with the statistics they were trained with instead (config `weights`: mean,
    std)."""

    image_shape: tuple[int, int, int]
    # Whether summary.md sets this run beside the study's Table 1 (ResNet18 on CIFAR-10).
    compares_with_study = True

    def splits(self, data: str, config: dict) -> dict:
        raise NotImplementedError

    def channel_stats(self, data: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def statistics(self, data: str, config: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the run `config`'s normalisation: its `weights` entry's, else the
        data's."""
        entry = config.get("weights", {})
        if "mean" not in entry:
            return self.channel_stats(data)
        channels = self.image_shape[0]
        if not len(entry["mean"]) == len(entry["std"]) == channels:
            raise ValueError(
                f"weights of {config['model']!r}: mean {entry['mean']} and std {entry['std']} "
                f"need one value per input channel, {channels} for task {self.spec.name!r}"
            )
        return tuple(
            torch.tensor(entry[key], dtype=torch.float32).view(1, channels, 1, 1)
            for key in ("mean", "std")
        )

    def normalizer(self, data: str, config: dict):
        """uint8 batch -> float32 model input, by the run's channel statistics."""
        mean, std = self.statistics(data, config)
        return partial(batched.normalize, mean=mean, std=std)

    def normalization(self, data: str, config: dict) -> dict:
        mean, std = (
            [round(value, 6) for value in tensor.flatten().tolist()]
            for tensor in self.statistics(data, config)
        )
        return {"mean": mean, "std": std}

    def architecture(self, config: dict) -> dict:
        """A reference and its num_classes; a built-in's width too."""
        if not model_refs.is_builtin(config["model"]):
            return {"name": config["model"], "num_classes": config["num_classes"]}
        return {
            "name": config["model"],
            "width": config["width"],
            "num_classes": config["num_classes"],
        }

    def training(self, data: str, config: dict, net, device):
        parts = self.splits(data, config)
        images, labels = parts["train"]
        if config.get("images"):  # a quick run: a fixed prefix of the (already shuffled) split
            images, labels = images[: config["images"]], labels[: config["images"]]
        return training(
            net, (images, labels), parts["val"], config, self.normalizer(data, config),
            batched.augment,
        )  # fmt: skip

    def validate(self, data: str, config: dict, net, device) -> dict:
        return self.validator(data, config, device)(net)

    def validator(self, data: str, config: dict, device, limit: int | None = None):
        images, labels = self.splits(data, config)["val"]
        images, labels = images[:limit], labels[:limit]
        normalize = self.normalizer(data, config)

        def validate(net, items=None) -> dict:
            chosen = slice(None) if items is None else items
            return {
                "val_accuracy": evaluate(net, images[chosen], labels[chosen], device, normalize)
            }

        validate.items = len(labels)
        return validate

    def calibration_inputs(self, data: str, config: dict, count: int) -> torch.Tensor:
        """`count` normalised images drawn from the training split by the run's seed."""
        train_images, _ = self.splits(data, config)["train"]
        if not 0 < count <= len(train_images):
            raise ValueError(
                f"calibration size {count} must be between 1 and the training split's "
                f"{len(train_images)} images"
            )
        generator = torch.Generator().manual_seed(config["seed"])
        chosen = torch.randperm(len(train_images), generator=generator)
        return self.normalizer(data, config)(train_images[chosen[:count]])

    def fine_tune_data(self, data: str, config: dict):
        images, labels = self.splits(data, config)["train"]
        normalize = self.normalizer(data, config)

        def transform(batch, generator):
            return normalize(batched.augment(batch, generator))

        return images, labels, transform

    def example_input(self, config: dict) -> torch.Tensor:
        return torch.zeros(1, *self.image_shape)

    def benchmark(self, data, net, implementations, base, config, log=print):
        """Each implementation's timed pass over the test split (accuracy, latency), then its
        timed rounds (speed; CPU rows paired with the FP32 eager `net`) and, at each of
        config['batch_sizes'], its rounds again (the row's `batch_curve`); CPU rows also say what
        fraction of this machine's multiply-accumulate ceiling they reach."""
        test_images, test_labels = self.splits(data, config)["test"]
        normalize = self.normalizer(data, config)
        machine = None
        if base["device"] == "cpu" and config.get("ceilings", True):
            macs = ceilings.macs_per_image(net, tuple(test_images.shape[1:]))
            machine = ceilings.measure()
            log(
                f"benchmark: ceilings: FP32 {machine['fp32_gmac_per_s']:.0f} GMAC/s, INT8 "
                f"{machine['int8_gmac_per_s']:.0f} GMAC/s; the model: {macs / 1e9:.3f} GMAC "
                "per image"
            )
        rows, kept = [], {}
        for label, device, module, size in implementations:
            log(f"benchmark: {base['variant']} {label} on {device}")
            prepare = normalize
            if device.type == "cuda":
                prepare = _channels_last(normalize)
            result = measure(module, test_images, test_labels, device, config, prepare, log)
            kept[label] = result.pop("predictions")
            # Speed from rounds on a fixed slice; a CPU row's speedup from rounds paired with
            # the FP32 eager model (`net`) in this process (quantpipe.tasks.classification.rounds).
            sample = test_images[: config["paired_images"]]
            reference = net if device.type == "cpu" else None
            result.update(timed_rounds(module, sample, device, config, prepare, reference))
            result["batch_curve"] = batch_curve(module, sample, device, config, prepare)
            _log_curve(result["batch_curve"], f"{base['variant']} {label}", log)
            usage = (
                ceilings.utilisation(
                    base["precision"],
                    macs,
                    result["images_per_s"],
                    result["latency_ms_p50"],
                    machine,
                )  # fmt: skip
                if machine
                else {}
            )
            rows.append(
                {**base, "method": label, "status": "ok", "reason": "", **result,
                 "size_bytes": size, **usage}
            )  # fmt: skip
            log(
                f"benchmark: {base['variant']} {label}: accuracy {result['accuracy']:.4f}, "
                f"{result['images_per_s']:.0f} img/s (median of {result['rounds']} rounds, "
                f"range {result['images_per_s_spread']:.0f}), p50 {result['latency_ms_p50']:.2f} ms"
            )
            if reference is not None:
                log(
                    f"benchmark: {base['variant']} {label}: {result['paired_speedup']:.2f}x FP32 "
                    f"eager timed beside it (range {result['paired_speedup_spread']:.2f})"
                )
        return rows, kept, {"ceilings": machine}

    # The summary (quantpipe.stages.summary): seed statistics, tests paired on the test split's
    # labels, and the batch-size curves.

    def summary_table(self, report, config_digest, benchmark_metrics, predictions, data, config):
        labels = self.splits(data, config)["test"][1]
        measurements = paired_measurements(
            benchmark_metrics, predictions, labels, config["node_classes"]
        )
        extra = {
            "measurements": measurements,
            "curve": curve_summary(benchmark_metrics, config_digest),
        }
        return summarize(report, measurements, config_digest), extra

    def summary_document(self, table, extra, facts, figures):
        return document(table, extra["curve"], facts, figures, self.compares_with_study)

    def summary_figures(self, table, extra, footer):
        return render_figures(table, extra["measurements"], extra["curve"], footer)


def _log_curve(curve: list[dict], name: str, log) -> None:
    for point in curve:
        speed = (
            f"{point['images_per_s']:.0f} img/s (range {point['images_per_s_spread']:.0f}), "
            f"{point['batch_latency_ms_p50']:.2f} ms per batch"
            if point["status"] == "ok"
            else f"skipped: {point['reason']}"
        )
        log(f"benchmark: {name} at batch {point['batch_size']}: {speed}")


def _channels_last(normalize):
    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return normalize(batch).contiguous(memory_format=torch.channels_last)

    return prepare
