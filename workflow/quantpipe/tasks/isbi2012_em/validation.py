"""Scoring models on the validation sections for accuracy control (the sensitivity stage and
accuracy_budget): through the tiled volume path, as the benchmark scores the test sections.

A whole section is not what an INT8 graph takes: PT2E fixes a tile's shape at export
(train.calibration_patches), so the sections are cut into the run's tiles, batched, blended and
written as the benchmark and the segment stage do (benchmark.probability), and FP32 and every
INT8 model are scored on the same footing. The score is the benchmark's pixel error at
probability 0.5 (metrics.pixel_error), named as the train record's: `val_pixel_error`. The train
record's own comes from whole sections in one pass (train.pixel_error), whose borders see zeros
where tiles see mirrored context, so the two differ a little; accuracy control compares this
validator's scores only with each other.
"""

import numpy as np
from zarr.storage import MemoryStore

from quantpipe.tasks.isbi2012_em.benchmark import probability
from quantpipe.tasks.isbi2012_em.data import load_split
from quantpipe.tasks.isbi2012_em.metrics import pixel_error

THRESHOLD = 0.5  # the train record's (a logit of 0)


def validator(data: str, config: dict, limit: int | None = None):
    """quantpipe.tasks.base.Task.validator for the run `config` (its model and em tiling keys):
    items are the validation sections, `limit` the first `limit` of them. The model runs on the
    device its weights are on (quantpipe.tiling)."""
    image, membrane = (part[:limit] for part in load_split(data, "val"))

    def validate(net, items=None) -> dict:
        # The whole volume, then the chosen sections: a 3D tile's sections see their
        # neighbours, so a section's score does not depend on which others are scored.
        predicted = probability(net, image, MemoryStore(), config)
        chosen = slice(None) if items is None else np.asarray(items, dtype=np.int64)
        return {"val_pixel_error": pixel_error(predicted[chosen], membrane[chosen], THRESHOLD)}

    validate.items = len(image)
    return validate
