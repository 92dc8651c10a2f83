"""Speed from several timed rounds, and a speedup from a pair timed round by round in one process.

One timed pass is one draw of the machine's noise: a neighbour's job, a clock that changed, a
page fault. Rounds give a median and a spread. A speedup divides two such draws; taken from two
jobs (another node, another hour, another neighbour) its noise can exceed the difference it is
meant to show. So a CPU variant's job also times the FP32 eager reference of the same model in
the same process, on the same threads, round by round with itself over the same work: the pair
shares the node and the moment, and its ratio is the speedup the report shows. What a pass
covers is the task's (images for classifiers, the tiled volume path for the EM task).
"""

import statistics
from collections.abc import Callable


def _median_and_range(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def paired_rounds(
    variant: Callable[[], float],
    rounds: int,
    work: float,
    unit: str,
    reference: Callable[[], float] | None = None,
) -> dict:
    """`rounds` rounds, each running one pass of `reference` (when given), then one of
    `variant`; a pass does `work` `unit`s (images, voxels) and returns its seconds.

    `{unit}_per_s` is the median of the variant's rates, `{unit}_per_s_spread` their range
    (max - min). With a `reference`: `paired_speedup` is the median over rounds of reference
    seconds / variant seconds, `paired_speedup_spread` the range of those ratios,
    `reference_{unit}_per_s` the reference's median rate.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    passes = {"variant": variant} if reference is None else {"reference": reference,
                                                              "variant": variant}  # fmt: skip
    seconds = {name: [] for name in passes}
    for _ in range(rounds):
        for name, one_pass in passes.items():
            seconds[name].append(one_pass())
    rate, rate_spread = _median_and_range([work / s for s in seconds["variant"]])
    result = {f"{unit}_per_s": rate, f"{unit}_per_s_spread": rate_spread, "rounds": rounds}
    if reference is None:
        return result
    ratios = [ref / own for ref, own in zip(seconds["reference"], seconds["variant"], strict=True)]
    speedup, speedup_spread = _median_and_range(ratios)
    return {
        **result,
        "paired_speedup": speedup,
        "paired_speedup_spread": speedup_spread,
        f"reference_{unit}_per_s": statistics.median([work / s for s in seconds["reference"]]),
    }
