"""A classifier's speed from several timed rounds over a fixed slice of the test images, and a
CPU variant's speedup from rounds paired with the FP32 eager reference (quantpipe.pairing says
why pairs)."""

import time
from functools import partial

import torch

from quantpipe.pairing import paired_rounds
from quantpipe.tasks.classification.measure import synchronize


def _seconds(module, images, prepare, batch_size: int, device: torch.device) -> float:
    """Seconds of one pass of `module` over `images` at `batch_size`: each batch's forward pass
    and transfer, timed after `prepare` made it model input (as the test pass times it)."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = prepare(images[start : start + batch_size])
        synchronize(device)
        started = time.perf_counter()
        module(batch.to(device))
        synchronize(device)
        total += time.perf_counter() - started
    return total


def timed_rounds(module, images, device, config: dict, prepare, reference=None) -> dict:
    """config['rounds'] timed passes of `module` over `images` (a fixed slice of the test split,
    uint8; `prepare` makes a batch model input, untimed) at config['batch_size']: `images_per_s`
    is their median, `images_per_s_spread` their range (max - min, images/s).

    With a `reference` (the FP32 eager model; CPU variants), each round times the reference, then
    `module`, on the same images: `paired_speedup` is the median over rounds of reference
    seconds / module seconds, `paired_speedup_spread` the range of those ratios (max - min),
    `reference_images_per_s` the reference's median rate.
    """
    batch_size = config["batch_size"]
    candidates = [module] if reference is None else [reference, module]
    # Every shape the rounds use, untimed first: a compiled module recompiles for a new shape.
    shapes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
    with torch.inference_mode():
        for candidate in candidates:
            for shape in sorted(shapes, reverse=True):
                for _ in range(config["warmup"]):
                    candidate(prepare(images[:shape]).to(device))
        result = paired_rounds(
            partial(_seconds, module, images, prepare, batch_size, device),
            config["rounds"],
            len(images),
            "images",
            None if reference is None else partial(
                _seconds, reference, images, prepare, batch_size, device
            ),
        )  # fmt: skip
    return {**result, "round_images": len(images)}
