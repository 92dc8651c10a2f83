"""The EM volume path at the network's own speed: voxels/s of a membrane U-Net through the whole
path (read, tile, run, blend, write) beside the network alone on the same tiles, per variant,
for a chosen geometry. The benchmark stage measures the same way; this script runs it by hand on
any uint8 Zarr volume, at any width, with randomly initialised weights (speed does not depend on
them), so geometries and widths compare without training.

    .venv/bin/python workflow/scripts/em_volume_benchmark.py VOLUME.zarr [--model unet2d]
        [--width 8] [--tile 544] [--overlap 32] [--batch 1] [--block-tiles 4] [--block-sections N]
        [--rounds 3] [--share-seconds 0]

VOLUME.zarr: a uint8 (Z, Y, X) array, or a group with an `image` array (what prepare_data writes
for isbi2012_em: resources/isbi2012_em.zarr). One JSON line per variant.
"""

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from quantpipe import provenance
from quantpipe.models.build import build_model
from quantpipe.quantize import load_for_cpu, quantize_and_save
from quantpipe.stages.segment import open_volume
from quantpipe.tasks.isbi2012_em.spec import tiling_geometry
from quantpipe.tiling import (
    block_chunks,
    create_target,
    plan_blocks,
    predict_volume,
    share_of_network,
)


def variants(net, example, architecture: dict, folder: Path):
    """FP32 eager and compiled, then INT8 by each method (calibrated on copies of `example`)."""
    net = net.eval()
    yield "fp32 eager", net
    yield "fp32 compiled", torch.compile(net)
    calibration = [example.expand(4, *example.shape[1:]).clone() for _ in range(2)]
    for method in ("pt2e", "eager"):
        artifact = folder / f"int8-{method}.pt"
        quantize_and_save(
            method, net, calibration, calibration[0][:2], architecture, artifact, log=print
        )
        yield f"int8 {method}", load_for_cpu(method, str(artifact))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volume")
    parser.add_argument("--model", default="unet2d", choices=("unet2d", "unet3d_aniso"))
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--tile", type=int, default=544)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--tile-sections", type=int, default=5, help="unet3d_aniso: tile depth")
    parser.add_argument("--section-overlap", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="path + network-alone rounds")
    parser.add_argument(
        "--share-seconds", type=float, default=0.0,
        help="more rounds until the path's passes add up to this (benchmark.share_seconds)",
    )  # fmt: skip
    parser.add_argument("--block-tiles", type=int, default=4)
    parser.add_argument(
        "--block-sections", type=int, help="sections per block (default: the task's geometry)"
    )
    args = parser.parse_args(argv)
    geometry = tiling_geometry(
        {"model": args.model, "tile_sections": args.tile_sections, "tile": args.tile,
         "overlap": args.overlap, "section_overlap": args.section_overlap,
         "block_tiles": args.block_tiles}
    )  # fmt: skip
    threads = provenance.set_threads()
    source = open_volume(args.volume)
    chunks = block_chunks(args.block_sections or geometry["block_sections"], source.shape)
    settings = {key: geometry[key] for key in ("dims", "tile", "overlap")}
    settings["batch_size"] = args.batch
    torch.manual_seed(0)
    net = build_model(args.model, width=args.width)
    example = torch.rand(1, 1, *geometry["tile"])
    with tempfile.TemporaryDirectory(prefix="em-volume-") as folder:
        folder = Path(folder)
        architecture = {"name": args.model, "width": args.width}
        for label, module in variants(net, example, architecture, folder):
            target = create_target(str(folder / "out.zarr"), source, chunks)
            blocks = plan_blocks(target)
            predict_volume(module, source, target, blocks=sorted({0, blocks - 1}), **settings,
                           log=lambda _line: None)  # fmt: skip
            share = share_of_network(
                module, source, target, rounds=args.rounds, min_seconds=args.share_seconds,
                **settings,
            )  # fmt: skip
            row = {
                "variant": label, "model": args.model, "width": args.width, "threads": threads,
                "volume": list(source.shape), "tile": list(geometry["tile"]),
                "overlap": list(geometry["overlap"]), "block_sections": chunks[0],
                "batch_size": args.batch, "rounds": share["share_rounds"],
                "redundancy": round(share["redundancy"], 3),
                "path_voxels_per_s": round(share["path_voxels_per_s"]),
                "network_voxels_per_s": round(share["network_voxels_per_s"]),
                "path_fraction_of_network": round(share["path_fraction_of_network"], 3),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0 if math.isfinite(share["path_voxels_per_s"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
