"""The segment stage: a model's membrane probability over a whole Zarr volume, block by block.

`run` segments a uint8 (Z, Y, X) Zarr array (or a group's `image` array) with an FP32 checkpoint
(`model`, from the train stage) or an INT8 artifact (`artifact` with `config['method']`, from the
quantize stage) through quantpipe.tiling, into a float16 Zarr array of membrane probability whose
chunks are the blocks (at most `config['block_sections']` whole sections each, as even as the
volume's depth allows (quantpipe.tiling.block_chunks), unless `config['chunks']` says otherwise).

- Without `config['blocks']` it does the whole volume in this process and installs the output
  atomically (built beside it, then renamed).
- With `config['blocks']` (flat block indices) it writes just those blocks into an output that
  `create_output` made beforehand: the task of a job array.

`run_as_array` is the job-array driver: `prepare_array` creates the output beside the
destination and splits the blocks into `tasks` groups, they are submitted as ONE Slurm job array
(quantpipe.submit.submit_array) and waited for, and `finish_array` installs the output only when
all succeeded (stopped or failed, `discard_array` removes what it staged; a cancelled task still
winding down may leave a `.NAME.*.tmp` directory beside the output, which is safe to delete). The
executor plugin quantpipe runs the same three parts with no process waiting on the array. A
block's result depends on nothing but its block, so the array's output is bit-identical to a
single-process run with the same threads.

Config: dims (2 or 3), tile, overlap ((Y, X) or (Z, Y, X)), batch_size, block_sections; method
('fp32' or a quantize method; the artifact's); device ('cpu', 'cuda' or 'auto'; FP32 only).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from quantpipe import provenance
from quantpipe.artifacts import replace_directory, write_json
from quantpipe.models.build import load_trained
from quantpipe.quantize import load_for_cpu
from quantpipe.submit import max_rss_mb, submit_array
from quantpipe.tiling import (
    block_chunks,
    create_target,
    job_hours_per_mm3,
    plan_blocks,
    predict_volume,
)


def split_blocks(blocks: int, groups: int) -> list[list[int]]:
    """Blocks 0..blocks-1 as at most `groups` contiguous, near-equal, non-empty groups."""
    if blocks < 1 or groups < 1:
        raise ValueError(f"need at least one block and one group, got {blocks} and {groups}")
    return [part.tolist() for part in np.array_split(np.arange(blocks), min(blocks, groups))]


def open_volume(volume: str) -> zarr.Array:
    """The uint8 (Z, Y, X) array at `volume`, or the `image` array of a group there (what
    prepare_data writes for a volume task)."""
    opened = zarr.open(volume, mode="r")
    if isinstance(opened, zarr.Group):
        if "image" not in opened:
            raise ValueError(f"{volume} is a Zarr group without an `image` array to segment")
        return opened["image"]
    return opened


def output_chunks(volume: zarr.Array, config: dict) -> tuple[int, ...]:
    if config.get("chunks"):
        return tuple(config["chunks"])
    return block_chunks(config["block_sections"], volume.shape)


def create_output(volume: str, segmentation: str, config: dict) -> int:
    """Create the (empty, NaN-filled) output array for `run` tasks; return its number of blocks."""
    source = open_volume(volume)
    return plan_blocks(create_target(segmentation, source, output_chunks(source, config)))


@contextlib.contextmanager
def staged_output(segmentation: str):
    """Yield a path beside `segmentation` to build the output at; it replaces `segmentation` only
    if the block succeeds, and is removed either way."""
    destination = Path(segmentation)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    )
    try:
        yield str(staging / destination.name)
        replace_directory(staging / destination.name, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(model: str | None, artifact: str | None, config: dict):
    """(callable model, what it is): the INT8 artifact when given, else the FP32 checkpoint."""
    if artifact:
        return load_for_cpu(config["method"], artifact), f"int8 {config['method']} {artifact}"
    if not model:
        raise ValueError("segment needs a model: an FP32 checkpoint (model) or an INT8 artifact")
    device = config.get("device", "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net, _ = load_trained(model)
    return net.to(device), f"fp32 {model} on {device}"


def run(
    volume: str,
    segmentation: str,
    config: dict,
    model: str | None = None,
    artifact: str | None = None,
    metrics: str | None = None,
    log=print,
) -> dict:
    """Segment `volume` (a uint8 Zarr array) into `segmentation` (float16 membrane probability)."""
    threads = provenance.set_threads()
    module, description = load_model(model, artifact, config)
    source = open_volume(volume)
    blocks = config.get("blocks")
    geometry = {key: config[key] for key in ("dims", "batch_size")}
    geometry.update(tile=tuple(config["tile"]), overlap=tuple(config["overlap"]))
    log(f"segment: {description}, {source.shape} volume {volume}, {threads} threads")
    if blocks is None:
        with staged_output(segmentation) as staged:
            target = create_target(staged, source, output_chunks(source, config))
            timing = predict_volume(module, source, target, **geometry, log=log)
    else:
        try:
            target = zarr.open_array(segmentation, mode="r+")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{segmentation} does not exist: a run with config['blocks'] writes into an output "
                "made beforehand by quantpipe.stages.segment.create_output (run_as_array does that)"
            ) from None
        timing = predict_volume(module, source, target, **geometry, blocks=blocks, log=log)
    result = {
        "stage": "segment",
        "model": description,
        # This process's peak resident memory (Linux reports KB): the block-bounded footprint.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "volume": volume,
        "segmentation": segmentation,
        "config": config,
        "threads": threads,
        **timing,
        "provenance": provenance.collect(),
    }
    if metrics:
        write_json(metrics, result)
    return result


@dataclass
class ArrayPlan:
    """A segment job array made ready on the submit host (`prepare_array`): the output created
    in `staging` beside `segmentation`, and one `run` call per array task."""

    volume: str
    segmentation: str
    config: dict
    staging: Path
    calls: list[dict]
    started: float


def prepare_array(
    volume: str,
    segmentation: str,
    config: dict,
    tasks: int,
    model: str | None = None,
    artifact: str | None = None,
    log=print,
) -> ArrayPlan:
    """Create the output beside `segmentation` (in a staging folder) and split the volume's
    blocks into at most `tasks` groups: one `run` call each. Fast (no block is segmented); the
    caller submits `calls` as one job array, then `finish_array` or `discard_array`."""
    started = time.monotonic()
    destination = Path(segmentation)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    )
    try:
        staged = str(staging / destination.name)
        groups = split_blocks(create_output(volume, staged, config), tasks)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    common = {"volume": volume, "segmentation": staged, "model": model, "artifact": artifact}
    calls = [{**common, "config": {**config, "blocks": group}} for group in groups]
    log(f"segment: {sum(map(len, groups))} blocks in {len(groups)} array tasks")
    return ArrayPlan(volume, segmentation, config, staging, calls, started)


def discard_array(plan: ArrayPlan) -> None:
    """Remove what `prepare_array` staged (a failed or stopped array). A task still winding down
    may leave its files in it again: the `.NAME.*.tmp` directory is safe to delete."""
    shutil.rmtree(plan.staging, ignore_errors=True)


def finish_array(plan: ArrayPlan, results: dict, metrics: str | None = None) -> dict:
    """Once every task has succeeded (`results`: {array task id: its `run` result}, in order):
    install the output at `plan.segmentation`, write the array's record to `metrics`, return it."""
    try:
        replace_directory(plan.staging / Path(plan.segmentation).name, Path(plan.segmentation))
    finally:
        discard_array(plan)
    seconds = time.monotonic() - plan.started
    # Slurm accounting's view of each task's memory (array task ids hold an underscore).
    slurm_ids = [task for task in results if "_" in str(task)]
    accounted = max_rss_mb(slurm_ids) if slurm_ids else {}
    voxels = sum(result["voxels"] for result in results.values())
    record = {
        "stage": "segment",
        "model": next(iter(results.values()))["model"],
        "volume": plan.volume,
        "segmentation": plan.segmentation,
        "config": plan.config,
        "tasks": [
            {
                key: result[key]
                for key in (
                    "voxels",
                    "seconds",
                    "voxels_per_s",
                    "blocks",
                    "tile_voxels",
                    "redundancy",
                    "peak_rss_mb",
                )
            }
            | {
                "array_task": task,
                "node": result["provenance"]["slurm_node"],
                "threads": result["threads"],
                "sacct_max_rss_mb": accounted.get(task),
            }
            for task, result in results.items()
        ],
        "voxels": voxels,
        "seconds": round(seconds, 3),  # wall time, queueing included
        "voxels_per_s": voxels / seconds,
        "task_voxels_per_s": sum(result["voxels_per_s"] for result in results.values()),
        # One task is one job: its hours per mm^3 at the tasks' mean rate; the array's at its
        # aggregate rate over the wall time.
        "job_hours_per_mm3": job_hours_per_mm3(
            sum(result["voxels_per_s"] for result in results.values()) / len(results)
        ),
        "array_hours_per_mm3": job_hours_per_mm3(voxels / seconds),
        "provenance": provenance.collect(),
    }
    if metrics:
        write_json(metrics, record)
    return record


def run_as_array(
    volume: str,
    segmentation: str,
    config: dict,
    tasks: int,
    resources: dict,
    job_name: str,
    folder: str,
    model: str | None = None,
    artifact: str | None = None,
    metrics: str | None = None,
    log=print,
) -> dict:
    """Segment `volume` as ONE job array of `tasks` tasks (each a contiguous group of blocks)
    writing into one output, installed at `segmentation` once every task has succeeded; this
    process waits for the array (the executor plugin quantpipe instead submits `prepare_array`'s
    calls and runs `finish_array` itself)."""
    plan = prepare_array(volume, segmentation, config, tasks, model, artifact, log=log)
    try:
        results = submit_array("segment", plan.calls, resources, job_name, folder)
    except BaseException:
        discard_array(plan)
        raise
    return finish_array(plan, results, metrics)
