"""A classifier's speed from several timed rounds, and a CPU variant's speedup from a pair.

One timed pass is one draw of the machine's noise: a neighbour's job, a clock that changed, a
page fault. Rounds give a median and a spread. A speedup divides two such draws; taken from two
jobs (another node, another hour, another neighbour) its noise can exceed the difference it is
meant to show. So each CPU variant also times the FP32 eager reference of the same model in the
same process, on the same threads, round by round with itself: the pair shares the node and
the moment, and its ratio is the speedup the report shows.
"""

import statistics
import time

import torch

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


def _median_and_range(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def timed_rounds(module, images, device, config: dict, prepare, reference=None) -> dict:
    """config['rounds'] timed passes of `module` over `images` (a fixed slice of the test split,
    uint8; `prepare` makes a batch model input, untimed) at config['batch_size']: `images_per_s`
    is their median, `images_per_s_spread` their range (max - min, images/s).

    With a `reference` (the FP32 eager model; CPU variants), each round times the reference, then
    `module`, on the same images: `paired_speedup` is the median over rounds of reference
    seconds / module seconds, `paired_speedup_spread` the range of those ratios (max - min),
    `reference_images_per_s` the reference's median rate.
    """
    batch_size, rounds = config["batch_size"], config["rounds"]
    timed = (
        {"variant": module} if reference is None else {"reference": reference, "variant": module}
    )
    # Every shape the rounds use, untimed first: a compiled module recompiles for a new shape.
    shapes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
    seconds = {name: [] for name in timed}
    with torch.inference_mode():
        for candidate in timed.values():
            for shape in sorted(shapes, reverse=True):
                for _ in range(config["warmup"]):
                    candidate(prepare(images[:shape]).to(device))
        for _ in range(rounds):
            for name, candidate in timed.items():
                seconds[name].append(_seconds(candidate, images, prepare, batch_size, device))
    rate, rate_spread = _median_and_range([len(images) / s for s in seconds["variant"]])
    result = {
        "images_per_s": rate,
        "images_per_s_spread": rate_spread,
        "rounds": rounds,
        "round_images": len(images),
    }
    if reference is None:
        return result
    ratios = [ref / own for ref, own in zip(seconds["reference"], seconds["variant"], strict=True)]
    speedup, speedup_spread = _median_and_range(ratios)
    return {
        **result,
        "paired_speedup": speedup,
        "paired_speedup_spread": speedup_spread,
        "reference_images_per_s": statistics.median(
            [len(images) / s for s in seconds["reference"]]
        ),
    }
