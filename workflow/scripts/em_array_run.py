"""Segment a volume larger than memory as ONE Slurm job array, the way the segment stage does
(quantpipe.stages.segment.run_as_array), and print what it cost: tasks, each task's peak memory
(its own getrusage and sacct's MaxRSS), the array's aggregate voxels/s and job-hours per mm^3.

    .venv/bin/python workflow/scripts/make_em_volume.py /scratch/big.zarr --shape 120 4096 4096
    .venv/bin/python workflow/scripts/em_array_run.py /scratch/big.zarr /scratch/membrane.zarr \
        [--model results/train/unet2d-w8-s0/model.pt] [--method pt2e] [--tasks 4] \
        [--cpus-per-task 1] [--mem-mb 2000] [--partition cpu]

Without --model it segments with a randomly initialised U-Net of --width (speed and memory do
not depend on the weights; the probabilities mean nothing). --mem-mb is Slurm's limit per task:
a task that needs more is killed, so a finished array proves the bound. Needs a reachable Slurm
(for the local one: `eval "$(bash workflow/scripts/local_slurm.sh env)"`).
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
import zarr
from quantpipe.engine import save_trained
from quantpipe.models.build import build_model, load_trained
from quantpipe.quantize import quantize_and_save
from quantpipe.stages.segment import run_as_array
from quantpipe.tasks.isbi2012_em.spec import tiling_geometry


def random_checkpoint(width: int, folder: Path) -> str:
    torch.manual_seed(0)
    architecture = {"name": "unet2d", "width": width}
    path = folder / "model.pt"
    record = {"stage": "train", "architecture": architecture, "note": "random weights"}
    save_trained(str(path), str(folder / "train.json"), build_model(**architecture), record)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volume")
    parser.add_argument("segmentation")
    parser.add_argument("--model", help="a train-stage checkpoint of unet2d (default: random)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--method", default="pt2e", choices=("fp32", "pt2e"))
    parser.add_argument("--tile", type=int, default=544)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block-tiles", type=int, default=4)
    parser.add_argument("--chunks", type=int, nargs=3, help="output blocks (default: the input's)")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--mem-mb", type=int, default=2000)
    parser.add_argument("--partition", default="cpu")
    parser.add_argument("--runtime", type=int, default=120, help="minutes per task")
    args = parser.parse_args(argv)
    source = zarr.open_array(args.volume, mode="r")
    geometry = tiling_geometry({"model": "unet2d", "tile": args.tile, "overlap": args.overlap,
                                "block_tiles": args.block_tiles})  # fmt: skip
    config = {
        "dims": 2, "tile": list(geometry["tile"]), "overlap": list(geometry["overlap"]),
        "batch_size": args.batch, "block_sections": geometry["block_sections"],
        "chunks": args.chunks or list(source.chunks), "method": args.method, "device": "cpu",
    }  # fmt: skip
    resources = {"slurm_partition": args.partition, "cpus_per_task": args.cpus_per_task,
                 "mem_mb": args.mem_mb, "runtime": args.runtime}  # fmt: skip
    parent = Path(args.segmentation).parent
    with tempfile.TemporaryDirectory(prefix="em-array-", dir=parent) as work:
        work = Path(work)
        model = args.model or random_checkpoint(args.width, work)
        artifact = None
        if args.method == "pt2e":
            net, record = load_trained(model)
            generator = torch.Generator().manual_seed(0)
            calibration = torch.rand(8, 1, *geometry["tile"], generator=generator)
            artifact = str(work / "int8.pt")
            quantize_and_save("pt2e", net, list(calibration.split(4)), calibration[:2],
                              record["architecture"], artifact)  # fmt: skip
        record = run_as_array(
            args.volume, args.segmentation, config, tasks=args.tasks, resources=resources,
            job_name="em-array", folder=str(work / "logs"), model=model, artifact=artifact,
            metrics=str(Path(args.segmentation).with_suffix(".json")),
        )  # fmt: skip
    summary = {key: record[key] for key in ("voxels", "seconds", "voxels_per_s",
                                            "task_voxels_per_s", "job_hours_per_mm3",
                                            "array_hours_per_mm3")}  # fmt: skip
    summary["tasks"] = record["tasks"]
    summary["method"] = args.method
    summary["weights"] = "given" if args.model else "random"
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
