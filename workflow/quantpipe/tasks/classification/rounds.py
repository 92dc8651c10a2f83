"""A classifier's speed from several timed rounds over a fixed slice of the test images, a CPU
variant's speedup from rounds paired with the FP32 eager reference (quantpipe.pairing says why
pairs), and its speed at each batch size of benchmark.batch_sizes (the batch-size curve: the same
rounds at each size, unpaired, showing how speed grows with the batch, not a speedup)."""

import statistics
import time
from functools import partial

import torch

from quantpipe.pairing import paired_rounds
from quantpipe.tasks.classification.measure import synchronize


def _batch_seconds(module, images, prepare, batch_size: int, device: torch.device) -> list[float]:
    """Seconds of each batch of one pass of `module` over `images` at `batch_size`: its forward
    pass and transfer, timed after `prepare` made it model input (as the test pass times it)."""
    seconds = []
    for start in range(0, len(images), batch_size):
        batch = prepare(images[start : start + batch_size])
        synchronize(device)
        started = time.perf_counter()
        module(batch.to(device))
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def _pass_seconds(module, images, prepare, batch_size, device, kept: list | None = None) -> float:
    """Seconds of one pass; each batch's seconds appended to `kept` when given."""
    seconds = _batch_seconds(module, images, prepare, batch_size, device)
    if kept is not None:
        kept.append(seconds)
    return sum(seconds)


def timed_rounds(module, images, device, config: dict, prepare, reference=None) -> dict:
    """config['rounds'] timed passes of `module` over `images` (a fixed slice of the test split,
    uint8; `prepare` makes a batch model input, untimed) at config['batch_size']: `images_per_s`
    is their median, `images_per_s_spread` their range (max - min, images/s),
    `batch_latency_ms_p50` the median time of one whole batch (min(batch_size, len(images))
    images; the last, partial one left out) over every round.

    With a `reference` (the FP32 eager model; CPU variants), each round times the reference, then
    `module`, on the same images: `paired_speedup` is the median over rounds of reference
    seconds / module seconds, `paired_speedup_spread` the range of those ratios (max - min),
    `reference_images_per_s` the reference's median rate.
    """
    batch_size = config["batch_size"]
    candidates = [module] if reference is None else [reference, module]
    # Every shape the rounds use, untimed first: a compiled module recompiles for a new shape.
    shapes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
    batches = []
    with torch.inference_mode():
        for candidate in candidates:
            for shape in sorted(shapes, reverse=True):
                for _ in range(config["warmup"]):
                    candidate(prepare(images[:shape]).to(device))
        result = paired_rounds(
            partial(_pass_seconds, module, images, prepare, batch_size, device, batches),
            config["rounds"],
            len(images),
            "images",
            None if reference is None else partial(
                _pass_seconds, reference, images, prepare, batch_size, device
            ),
        )  # fmt: skip
    whole = max(1, len(images) // batch_size)  # the batches of min(batch_size, len) images
    latency = statistics.median([batch * 1e3 for one in batches for batch in one[:whole]])
    return {**result, "batch_latency_ms_p50": latency, "round_images": len(images)}


def batch_curve(module, images, device, config: dict, prepare) -> list[dict]:
    """`module`'s timed rounds (timed_rounds, each shape warmed up first) at each batch size of
    config['batch_sizes'], over the same `images`: one entry per batch size, with its
    `images_per_s` median and spread and `batch_latency_ms_p50`. A batch size larger than
    `images` cannot be timed: its entry says so and carries no number."""
    curve = []
    for size in config["batch_sizes"]:
        if size > len(images):
            reason = f"batch {size} exceeds the {len(images)} test images timed in each round"
            curve.append({"batch_size": size, "status": "skipped", "reason": reason})
            continue
        timed = timed_rounds(module, images, device, {**config, "batch_size": size}, prepare)
        curve.append({"batch_size": size, "status": "ok", "reason": "", **timed})
    return curve
