"""The statistics of the summaries: Student t intervals over seeds, McNemar's paired test, whether
two speedups differ by less than their timing noise, the Pareto front, and the hash that ties
every output to its config. Pure functions."""

import hashlib
import json
import math
import statistics

import pandas as pd

CONFIDENCE = 0.95
ALPHA = 0.05
# Below this many discordant images the chi-square approximation is poor: use the exact test.
EXACT_BELOW = 25


def _t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    total = 0.0
    if df % 2:
        term = math.cos(theta)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = 1.0
    for j in range(1, df // 2 + 1):
        total += term
        term *= cos2 * (2 * j - 1) / (2 * j)
    return math.sin(theta) * total


def t_critical(confidence: float, df: int) -> float:
    """The two-sided Student t quantile: P(|T| < t) = confidence (e.g. 4.303 for 0.95, df 2)."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"need df >= 1 and 0 < confidence < 1, got df {df}, {confidence}")
    low, high = 0.0, 1.0
    while _t_within(high, df) < confidence:
        high *= 2
    for _ in range(200):  # bisection: the distribution function is monotone in t
        middle = (low + high) / 2
        low, high = (middle, high) if _t_within(middle, df) < confidence else (low, middle)
    return (low + high) / 2


def mean_interval(values, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample sd, n and the Student t confidence interval of the mean; NaN where undefined."""
    values = [float(value) for value in values if not pd.isna(value)]
    n = len(values)
    if n == 0:
        return {
            "mean": math.nan,
            "sd": math.nan,
            "n": 0,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
        }
    mean = statistics.fmean(values)
    if n == 1:  # one seed: a value, but no spread to build an interval from
        return {"mean": mean, "sd": math.nan, "n": 1, "ci95_low": math.nan, "ci95_high": math.nan}
    sd = statistics.stdev(values)
    half = t_critical(confidence, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci95_low": mean - half, "ci95_high": mean + half}


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """Exact two-sided p of `successes` in `trials` fair coin flips (twice the smaller tail)."""
    if trials == 0:
        return 1.0
    tail = min(successes, trials - successes)
    # Python integers are exact, so the tail sum neither overflows nor loses precision.
    return min(1.0, 2 * sum(math.comb(trials, k) for k in range(tail + 1)) / 2**trials)


def mcnemar(baseline_only: int, variant_only: int) -> tuple[float, str]:
    """McNemar's p from the discordant images, and which test gave it ("exact" or "chi2-cc").

    `baseline_only`: images only the baseline gets right; `variant_only`: only the variant.
    """
    discordant = baseline_only + variant_only
    if discordant < EXACT_BELOW:
        return binomial_two_sided_p(variant_only, discordant), "exact"
    statistic = (abs(baseline_only - variant_only) - 1) ** 2 / discordant
    return math.erfc(math.sqrt(statistic / 2)), "chi2-cc"  # chi-square, 1 df, survival


def verdict(baseline_only: int, variant_only: int, p: float, alpha: float = ALPHA) -> str:
    # Not significant means the test cannot tell the variant from the baseline, which is all
    # "no significant loss" claims; it never proves the accuracies equal.
    if p >= alpha:
        return "no significant loss"
    return "significant loss" if baseline_only > variant_only else "significant gain"


def within_noise(first, second) -> bool:
    """Whether two configurations' speedups over FP32 CPU eager differ by less than the larger
    of their timing noise: the range of their paired rounds (paired_speedup_spread, mean over
    seeds; rows of summary.csv). False where neither has rounds (noise unknown)."""
    noise = max(first["paired_speedup_spread_mean"], second["paired_speedup_spread_mean"])
    gap = abs(first["speedup_vs_fp32_cpu_eager_mean"] - second["speedup_vs_fp32_cpu_eager_mean"])
    return bool(gap < noise)  # NaN noise compares False


def pareto_front(xs, ys) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x."""
    order = sorted(range(len(xs)), key=lambda i: (-xs[i], -ys[i]))
    front, best_y = [], -math.inf
    for i in order:
        if ys[i] > best_y:
            front.append(i)
            best_y = ys[i]
    return sorted(front, key=lambda i: xs[i])


def config_hash(config: dict) -> str:
    """The SHA-256 of the config as sorted JSON: the same experiment, the same hash."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
