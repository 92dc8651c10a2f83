"""A uint8 EM volume of any size from the 30 ISBI 2012 sections, to rehearse a lab's own scale:
sections repeat in depth as a mirrored sequence (0..29, 29..0, ...) and tile each plane with
mirrored copies (flipped on every other tile), so no seam is a jump in the image. Written slab by
slab as a Zarr array chunked for the segment stage's blocks: memory stays one slab.

    .venv/bin/python workflow/scripts/make_em_volume.py OUT.zarr --shape 120 4096 4096
        [--chunks 4 2048 2048] [--stack resources/isbi2012_em.zarr]

--stack: the verified stack prepare_data wrote for isbi2012_em (a group with `image`), or the
cache's folder of PNG sections ($QUANTPIPE_CACHE/data/isbi2012-em).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import zarr
from quantpipe.tasks.isbi2012_em.data import read_stack


def sections(stack: str) -> np.ndarray:
    """The 30 uint8 sections (30, 512, 512) of a prepared Zarr stack or a folder of PNGs."""
    if Path(stack, "zarr.json").exists():
        return np.asarray(zarr.open_group(stack, mode="r")["image"][:])
    return read_stack(stack)[0]


def mirrored(index: np.ndarray, extent: int) -> np.ndarray:
    """0..extent-1, then back down, and so on: a seamless repeat."""
    folded = np.mod(index, 2 * extent)
    return np.where(folded < extent, folded, 2 * extent - 1 - folded)


def plane(section: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = mirrored(np.arange(height), section.shape[0])
    columns = mirrored(np.arange(width), section.shape[1])
    return section[np.ix_(rows, columns)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--shape", type=int, nargs=3, default=(120, 4096, 4096))
    parser.add_argument("--chunks", type=int, nargs=3, default=(4, 2048, 2048))
    parser.add_argument("--stack", default="resources/isbi2012_em.zarr")
    args = parser.parse_args(argv)
    depth, height, width = args.shape
    source = sections(args.stack)
    volume = zarr.create_array(
        store=args.out,
        shape=tuple(args.shape),
        chunks=tuple(args.chunks),
        dtype="uint8",
        attributes={"axes": "zyx", "made_from": "ISBI 2012 sections, mirrored and tiled"},
        overwrite=True,
    )
    started = time.monotonic()
    slab = args.chunks[0]
    for first in range(0, depth, slab):
        last = min(first + slab, depth)
        picks = mirrored(np.arange(first, last), len(source))
        volume[first:last] = np.stack([plane(source[z], height, width) for z in picks])
        print(f"make_em_volume: sections {last}/{depth}, "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    voxels = depth * height * width
    print(json.dumps({"out": args.out, "shape": [depth, height, width], "voxels": voxels,
                      "chunks": list(args.chunks),
                      "seconds": round(time.monotonic() - started, 1)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
