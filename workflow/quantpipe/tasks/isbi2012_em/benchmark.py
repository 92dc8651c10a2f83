"""The benchmark stage for task isbi2012_em: time the tiled volume path over the whole stack,
then segment the 5 test sections and score the result.

Each variant (`fp32-cpu`: eager and torch.compile; `fp32-gpu`: the same on CUDA, or rows marked
skipped with the reason; `int8-cpu`: a quantize artifact) runs quantpipe.tiling.predict_volume
(overlapping tiles, blended, one block per output chunk) over a Zarr copy of all 30 sections:
first on the first and last block untimed (a compiled module compiles on its first tiles), then
in `rounds` timed rounds over the whole stack: voxels/s is their median, with their range and
the threads recorded. A CPU variant's round first runs the FP32 eager model of the same weights
over the same volume path, in this process on the same threads (quantpipe.pairing): its speedup
is the median of the rounds' ratios. A round is the whole path, not the network alone, because
the ratio stands for voxels/s and job-hours, and reading, blending and writing are part of both
that INT8 does not speed up. Then as many rounds of the path, each followed by the network alone
on the same tiles, or more until the path has run `share_seconds`, give the path's share of the
network's own rate (`path_fraction_of_network`, over `share_rounds` rounds).
The stack is timed rather than the test sections because a pass's first read and last write
overlap nothing: the test split is 2 blocks in 2D, where they weigh as they never do over a long
volume (its 2D INT8 rows kept 0.79-0.91 of the network's rate), the stack 8. Speed does not
depend on the sections' content; the scores come from one more pass over the test
sections alone, against their labels: pixel error, V_rand and V_info
(quantpipe.tasks.isbi2012_em.metrics).

From the measured rate, `job_hours_per_mm3` is how long ONE such job (this many threads, this
node) would take to segment a cubic millimetre of cortex at 4x4x40 nm, 1.5625e15 voxels:
node-hours per mm^3 when one job uses the whole node, otherwise per job with the threads shown.
"""

import math
import os
import tempfile
import time

import numpy as np
import torch
import zarr

from quantpipe.pairing import paired_rounds
from quantpipe.tasks.isbi2012_em.data import load_split, load_stack
from quantpipe.tasks.isbi2012_em.metrics import scores
from quantpipe.tasks.isbi2012_em.spec import tiling_geometry
from quantpipe.tiling import (
    block_chunks,
    create_target,
    job_hours_per_mm3,
    plan_blocks,
    predict_volume,
    share_of_network,
)

GEOMETRY_COLUMNS = ("tile", "overlap", "block_sections", "redundancy")
# The rates a row carries; the pair's (paired_speedup ...) only where it had a reference (CPU).
RATE_COLUMNS = (
    "voxels", "tile_voxels", "voxels_per_s", "voxels_per_s_spread", "rounds",
    "network_voxels_per_s", "path_fraction_of_network", "share_rounds", "paired_speedup",
    "paired_speedup_spread", "reference_voxels_per_s",
)  # fmt: skip


def _quiet(_line: str) -> None:
    pass


def _volume_pass(module, image, target, arguments: dict, passes: list):
    """One timed pass of the whole volume path (every block of `image` into `target`), its
    record appended to `passes`: a pass for quantpipe.pairing.paired_rounds."""

    def one_pass() -> float:
        started = time.perf_counter()
        passes.append(predict_volume(module, image, target, log=_quiet, **arguments))
        return time.perf_counter() - started

    return one_pass


def tiled_path(config: dict) -> tuple[dict, int]:
    """(quantpipe.tiling.predict_volume's geometry keywords, sections per block) of the run
    `config` (spec.tiling_geometry)."""
    geometry = tiling_geometry(config)
    arguments = {
        "dims": geometry["dims"],
        "tile": geometry["tile"],
        "overlap": geometry["overlap"],
        "batch_size": config["inference_batch_size"],
    }
    return arguments, geometry["block_sections"]


def probability(module, volume, store, config: dict) -> np.ndarray:
    """The membrane probability (float16) of `volume` (uint8 Z, Y, X) through the tiled volume
    path of the run `config`, as the benchmark scores the test sections: the volume alone,
    mirrored at its ends, written to a Zarr array at `store` (a path or a zarr store)."""
    arguments, sections = tiled_path(config)
    target = create_target(store, volume, block_chunks(sections, volume.shape))
    predict_volume(module, volume, target, log=_quiet, **arguments)
    return target[:]


def segment(
    module, stack: zarr.Array, test: zarr.Array, folder: str, config: dict, reference=None
) -> tuple[dict, np.ndarray]:
    """Warm up on the first and the last block of `stack` (their batch shapes may differ), then
    config['rounds'] timed rounds of the whole volume path over it, each with a pass of
    `reference` first when given (paired, quantpipe.pairing), then as many rounds of the path
    and the network alone on the same tiles, then one pass over `test`: (the geometry, the
    rates, the pair and the path's median share of the network's rate, the probability of
    `test`)."""
    arguments, sections = tiled_path(config)
    chunks = block_chunks(sections, stack.shape)
    warmup = create_target(os.path.join(folder, "warmup.zarr"), stack, chunks)
    blocks = plan_blocks(warmup)
    predict_volume(module, stack, warmup, blocks=sorted({0, blocks - 1}), log=_quiet, **arguments)
    paired = None
    if reference is not None:
        # Eager, and every batch has one shape (the last one padded): one batch warms it.
        with torch.inference_mode():
            reference(torch.zeros(arguments["batch_size"], 1, *arguments["tile"]))
        scratch = create_target(os.path.join(folder, "reference.zarr"), stack, chunks)
        paired = _volume_pass(reference, stack, scratch, arguments, [])
    target = create_target(os.path.join(folder, "timed.zarr"), stack, chunks)
    passes = []
    timed = paired_rounds(
        _volume_pass(module, stack, target, arguments, passes),
        config["rounds"], math.prod(stack.shape), "voxels", paired,
    )  # fmt: skip
    measured = {
        **passes[-1],
        **timed,
        **share_of_network(
            module,
            stack,
            target,
            rounds=config["rounds"],
            min_seconds=config["share_seconds"],
            **arguments,
        ),
        "test_set_seconds": math.prod(test.shape) / timed["voxels_per_s"],  # at the median rate
        "tile": "x".join(map(str, arguments["tile"])),
        "overlap": "x".join(map(str, arguments["overlap"])),
        "block_sections": chunks[0],
    }
    return measured, probability(module, test, os.path.join(folder, "probability.zarr"), config)


def _as_zarr(path: str, image: np.ndarray) -> zarr.Array:
    """`image` as a uint8 Zarr array of one chunk per section, as prepare_data stores it."""
    array = zarr.create_array(
        store=path, shape=image.shape, chunks=(1, *image.shape[1:]), dtype="uint8"
    )
    array[:] = image
    return array


def benchmark(data: str, implementations, base: dict, config: dict, reference=None, log=print):
    """Each implementation timed through the tiled volume path over the whole stack, then run
    over the test sections and scored:
    (rows, each row's membrane probability as uint8 (probability * 255), {}). CPU rows are timed
    round by round beside `reference`, the FP32 eager model, in this process."""
    variant = base["variant"]
    rows, kept = [], {}
    test_image, test_membrane = load_split(data, "test")
    with tempfile.TemporaryDirectory(prefix="em-benchmark-") as folder:
        stack = _as_zarr(os.path.join(folder, "stack.zarr"), load_stack(data))
        test = _as_zarr(os.path.join(folder, "test.zarr"), test_image)
        for label, device, module, size in implementations:
            log(f"benchmark: {variant} {label} on {device}, timed over the stack {stack.shape}, "
                f"scored on the test sections {test.shape}")  # fmt: skip
            paired = reference if device.type == "cpu" else None
            timed, probability = segment(
                module, stack, test, os.path.join(folder, label), config, paired
            )
            quality = scores(probability, test_membrane, config["threshold"])
            kept[label] = torch.from_numpy(
                np.rint(probability.astype(np.float32) * 255).astype(np.uint8)
            )
            rows.append(
                {
                    **base,
                    "method": label,
                    "status": "ok",
                    "reason": "",
                    **quality,
                    **{key: timed[key] for key in GEOMETRY_COLUMNS},
                    **{key: timed[key] for key in RATE_COLUMNS if key in timed},
                    "test_set_seconds": timed["test_set_seconds"],
                    "job_hours_per_mm3": job_hours_per_mm3(timed["voxels_per_s"]),
                    "size_bytes": size,
                }
            )
            log(
                f"benchmark: {variant} {label}: V_rand {quality['v_rand']:.4f}, V_info "
                f"{quality['v_info']:.4f}, pixel error {quality['pixel_error']:.4f}, "
                f"{timed['voxels_per_s']:,.0f} voxels/s (median of {timed['rounds']} rounds, "
                f"range {timed['voxels_per_s_spread']:,.0f}; the network alone "
                f"{timed['network_voxels_per_s']:,.0f}, the path's share of it "
                f"{timed['path_fraction_of_network']:.2f} over {timed['share_rounds']} rounds; "
                f"tiles {timed['tile']}, "
                f"{timed['redundancy']:.2f} voxels computed per voxel written), "
                f"{rows[-1]['job_hours_per_mm3']:,.0f} job-hours per mm^3"
            )
            if paired is not None:
                log(
                    f"benchmark: {variant} {label}: {timed['paired_speedup']:.2f}x FP32 eager "
                    f"timed beside it (range {timed['paired_speedup_spread']:.2f})"
                )
    return rows, kept, {}
