"""Paired timed rounds (quantpipe.pairing), the part both tasks share: the order of the passes, the
median and range of rates and of the pair's ratios. A slower pass sleeps, so that it is slower by
at least what it sleeps whatever the machine does."""

import time

import pytest
from quantpipe.pairing import paired_rounds


def clock(seconds: list[float], calls: list[str], name: str):
    """A pass that takes the next of `seconds` and records that it ran."""
    remaining = iter(seconds)

    def one_pass() -> float:
        calls.append(name)
        return next(remaining)

    return one_pass


def test_rounds_interleave_the_pair_and_give_medians_and_ranges():
    calls = []
    result = paired_rounds(
        clock([1.0, 2.0, 4.0], calls, "variant"), 3, 8, "voxels",
        clock([2.0, 2.0, 6.0], calls, "reference"),
    )  # fmt: skip
    assert calls == ["reference", "variant"] * 3
    assert result == {
        "voxels_per_s": 4.0, "voxels_per_s_spread": 6.0, "rounds": 3,
        "paired_speedup": 1.5, "paired_speedup_spread": 1.0, "reference_voxels_per_s": 4.0,
    }  # fmt: skip


def test_alone_there_is_no_pair():
    calls = []
    result = paired_rounds(clock([2.0, 4.0], calls, "variant"), 2, 8, "images")
    assert calls == ["variant", "variant"]
    assert result == {"images_per_s": 3.0, "images_per_s_spread": 2.0, "rounds": 2}


def test_a_slower_variant_has_a_paired_speedup_below_one():
    def sleeping(seconds: float):
        def one_pass() -> float:
            started = time.perf_counter()
            time.sleep(seconds)
            return time.perf_counter() - started

        return one_pass

    result = paired_rounds(sleeping(0.1), 3, 100, "images", sleeping(0.001))
    assert result["rounds"] == 3 and 0 < result["paired_speedup"] < 1
    assert result["paired_speedup_spread"] >= 0 and result["images_per_s_spread"] >= 0
    assert result["reference_images_per_s"] > result["images_per_s"] > 0


def test_no_rounds_is_a_clear_error():
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        paired_rounds(lambda: 1.0, 0, 1, "images")
