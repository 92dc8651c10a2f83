"""The benchmark stage for task isbi2012_em: segment the 5 test sections through the tiled volume
path and score the result.

Each variant (`fp32-cpu`: eager and torch.compile; `fp32-gpu`: the same on CUDA, or rows marked
skipped with the reason; `int8-cpu`: a quantize artifact) runs
quantpipe.tiling.predict_volume
over a Zarr copy of the test sections (overlapping tiles, blended, one block per output chunk),
first once on one block untimed (a compiled module compiles on its first tiles), then timed over
the whole volume: voxels/s with the threads recorded. The probability map is then scored
against the labels on the full test volume: pixel error, V_rand and V_info
(quantpipe.tasks.isbi2012_em.metrics).

From the measured rate, `job_hours_per_mm3` is how long ONE such job (this many threads, this
node) would take to segment a cubic millimetre of cortex at 4x4x40 nm, 1.5625e15 voxels:
node-hours per mm^3 when one job uses the whole node, otherwise per job with the threads shown.
"""

import os
import tempfile

import numpy as np
import torch
import zarr

from quantpipe.tasks.isbi2012_em.data import load_split
from quantpipe.tasks.isbi2012_em.metrics import scores
from quantpipe.tasks.isbi2012_em.spec import tiling_geometry
from quantpipe.tiling import (
    create_target,
    job_hours_per_mm3,
    network_rate,
    plan_blocks,
    predict_volume,
)

GEOMETRY_COLUMNS = ("tile", "overlap", "block_sections", "redundancy")


def _quiet(_line: str) -> None:
    pass


def segment(
    module, image: zarr.Array, folder: str, config: dict, log=print
) -> tuple[dict, np.ndarray]:
    """Warm up on the first and the last block (their batch shapes may differ), time the whole
    volume path, then the network alone on the same tiles: (the geometry and both rates, the
    probability)."""
    geometry = tiling_geometry(config)
    arguments = {
        "dims": geometry["dims"],
        "tile": geometry["tile"],
        "overlap": geometry["overlap"],
        "batch_size": config["inference_batch_size"],
    }
    chunks = (geometry["block_sections"], *image.shape[1:])
    warmup = create_target(os.path.join(folder, "warmup.zarr"), image, chunks)
    blocks = plan_blocks(warmup)
    predict_volume(module, image, warmup, blocks=sorted({0, blocks - 1}), log=_quiet, **arguments)
    target = create_target(os.path.join(folder, "probability.zarr"), image, chunks)
    timed = predict_volume(module, image, target, log=log, **arguments)
    alone = network_rate(module, image, target, blocks=list(range(blocks)), **arguments)
    measured = {
        **timed,
        **alone,
        "path_fraction_of_network": timed["voxels_per_s"] / alone["network_voxels_per_s"],
        "tile": "x".join(map(str, geometry["tile"])),
        "overlap": "x".join(map(str, geometry["overlap"])),
        "block_sections": geometry["block_sections"],
    }
    return measured, target[:]


def benchmark(data: str, implementations, base: dict, config: dict, log=print):
    """Each implementation through the tiled volume path over the test sections, then scored:
    (rows, each row's membrane probability as uint8 (probability * 255), {})."""
    variant = base["variant"]
    rows, kept = [], {}
    test_image, test_membrane = load_split(data, "test")
    with tempfile.TemporaryDirectory(prefix="em-benchmark-") as folder:
        image = zarr.create_array(
            store=os.path.join(folder, "image.zarr"),
            shape=test_image.shape,
            chunks=(1, *test_image.shape[1:]),
            dtype="uint8",
        )
        image[:] = test_image
        for label, device, module, size in implementations:
            log(f"benchmark: {variant} {label} on {device}, test volume {test_image.shape}")
            timed, probability = segment(module, image, os.path.join(folder, label), config, log)
            quality = scores(probability, test_membrane, config["threshold"])
            kept[label] = torch.from_numpy(np.rint(probability * 255).astype(np.uint8))
            rows.append(
                {
                    **base,
                    "method": label,
                    "status": "ok",
                    "reason": "",
                    **quality,
                    **{key: timed[key] for key in GEOMETRY_COLUMNS},
                    "voxels": timed["voxels"],
                    "tile_voxels": timed["tile_voxels"],
                    "voxels_per_s": timed["voxels_per_s"],
                    "network_voxels_per_s": timed["network_voxels_per_s"],
                    "path_fraction_of_network": timed["path_fraction_of_network"],
                    "test_set_seconds": timed["seconds"],
                    "job_hours_per_mm3": job_hours_per_mm3(timed["voxels_per_s"]),
                    "size_bytes": size,
                }
            )
            log(
                f"benchmark: {variant} {label}: V_rand {quality['v_rand']:.4f}, V_info "
                f"{quality['v_info']:.4f}, pixel error {quality['pixel_error']:.4f}, "
                f"{timed['voxels_per_s']:,.0f} voxels/s (the network alone "
                f"{timed['network_voxels_per_s']:,.0f}; tiles {timed['tile']}, "
                f"{timed['redundancy']:.2f} voxels computed per voxel written), "
                f"{rows[-1]['job_hours_per_mm3']:,.0f} job-hours per mm^3"
            )
    return rows, kept, {}
