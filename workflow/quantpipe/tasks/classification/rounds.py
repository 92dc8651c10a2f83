"""A classifier's speed from several timed rounds, a CPU variant's speedup from a pair, and its
speed at each batch size of benchmark.batch_sizes (the batch-size curve).

One timed pass is one draw of the machine's noise: a neighbour's job, a clock that changed, a
page fault. Rounds give a median and a spread. A speedup divides two such draws; taken from two
jobs (another node, another hour, another neighbour) its noise can exceed the difference it is
meant to show. So each CPU variant also times the FP32 eager reference of the same model in the
same process, on the same threads, round by round with itself: the pair shares the node and
the moment, and its ratio is the speedup the report shows. The curve repeats the rounds at each
batch size on the same images, unpaired: it shows how speed grows with the batch, not a speedup.
"""

import statistics
import time

import torch

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


def _median_and_range(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


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
    batch_size, rounds = config["batch_size"], config["rounds"]
    timed = (
        {"variant": module} if reference is None else {"reference": reference, "variant": module}
    )
    # Every shape the rounds use, untimed first: a compiled module recompiles for a new shape.
    shapes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
    batches = {name: [] for name in timed}
    with torch.inference_mode():
        for candidate in timed.values():
            for shape in sorted(shapes, reverse=True):
                for _ in range(config["warmup"]):
                    candidate(prepare(images[:shape]).to(device))
        for _ in range(rounds):
            for name, candidate in timed.items():
                batches[name].append(_batch_seconds(candidate, images, prepare, batch_size, device))
    seconds = {name: [sum(one_pass) for one_pass in passes] for name, passes in batches.items()}
    whole = max(1, len(images) // batch_size)  # the batches of min(batch_size, len) images
    rate, rate_spread = _median_and_range([len(images) / s for s in seconds["variant"]])
    result = {
        "images_per_s": rate,
        "images_per_s_spread": rate_spread,
        "batch_latency_ms_p50": statistics.median(
            [batch * 1e3 for one_pass in batches["variant"] for batch in one_pass[:whole]]
        ),
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
