"""The calibration knob every quantize backend understands: `{observer}[_per_tensor][_range]`.

- observer (how activation ranges are estimated from the calibration images):
  `minmax` (the extremes seen), `moving_average` (per-batch extremes, averaged), `histogram`
  (the range that minimises the quantization error of the observed histogram; the default).
- `_per_tensor`: one scale per weight tensor instead of one per output channel (the default).
- range: the overflow guard for CPUs without VNNI, which the backends implement differently:
  `_reduce_range` turns it on, `_full_range` off, and without either each backend keeps its own
  default (eager: on, the x86 qconfig's 7-bit activations, as the study ran it; pt2e and ONNX
  Runtime: off; OpenVINO: NNCF's guard on the first layer only).

Names use only lower-case letters and underscores, so they fit in output paths and variant names
(`int8-cpu-{method}-{calibration_method}-c{size}`). Each backend records the settings it applied
(`settings(name)`), so a report row is never ambiguous.
"""

import itertools
from dataclasses import asdict, dataclass

OBSERVERS = ("minmax", "moving_average", "histogram")
GRANULARITIES = ("per_channel", "per_tensor")
RANGES = ("default", "reduce_range", "full_range")
DEFAULT = "histogram"


@dataclass(frozen=True)
class Calibration:
    observer: str = "histogram"
    weights: str = "per_channel"  # per_channel | per_tensor
    range: str = "default"  # default | reduce_range | full_range

    @property
    def name(self) -> str:
        parts = [self.observer]
        if self.weights == "per_tensor":
            parts.append("per_tensor")
        if self.range != "default":
            parts.append(self.range)
        return "_".join(parts)

    def reduce_range(self, backend_default: bool) -> bool:
        """Whether the overflow guard is on, given the backend's own default."""
        return {"default": backend_default, "reduce_range": True, "full_range": False}[self.range]

    def as_dict(self) -> dict:
        return asdict(self)


NAMES = tuple(
    Calibration(observer, weights, range_).name
    for observer, weights, range_ in itertools.product(OBSERVERS, GRANULARITIES, RANGES)
)


def parse(name: str | Calibration | None) -> Calibration:
    """'histogram_per_tensor_full_range' -> Calibration('histogram', 'per_tensor', 'full_range')."""
    if isinstance(name, Calibration):
        return name
    name = DEFAULT if name is None else name
    for observer, weights, range_ in itertools.product(OBSERVERS, GRANULARITIES, RANGES):
        found = Calibration(observer, weights, range_)
        if found.name == name:
            return found
    raise ValueError(
        f"unknown calibration method {name!r}: an observer ({', '.join(OBSERVERS)}), optionally "
        "followed by _per_tensor, then optionally by _reduce_range or _full_range, e.g. "
        "'histogram', 'minmax_per_tensor', 'histogram_full_range'"
    )


def observer_settings(
    calibration: Calibration, observers: dict, reduce_range_default: bool
) -> dict:
    """What a torch observer-based backend (eager, pt2e) applies for `calibration`."""
    reduce_range = calibration.reduce_range(reduce_range_default)
    return {
        "activation_observer": observers[calibration.observer].__name__,
        "weights": calibration.weights,
        "reduce_range": reduce_range,
        "activation_range": [0, 127 if reduce_range else 255],
    }
