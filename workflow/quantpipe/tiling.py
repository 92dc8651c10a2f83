"""Tiled, overlapped, blended inference over a chunked Zarr volume larger than memory.

The unit of work is a block: one chunk of the target array. A block reads its region of the
source plus a halo (half the tile overlap on each side, mirrored where it passes the volume's
edge: a block's border voxels then have as much context as the voxels of a seam between tiles),
covers that with overlapping tiles, runs them through the model in batches, blends the
tiles' membrane probabilities with smooth weights (`blend_window`: tile borders, where a
zero-padded network errs, get none; neighbours cross-fade with a raised cosine, so seams vanish)
and writes exactly its own target chunk. Nothing outside the block enters its computation, and a
block's batches are always the same (its tiles in order, the last batch padded), so its
output is the same bits whichever process computes it, in whatever order, beside whatever other
blocks: workers of a job array can each take a set of blocks and write into one target, and the
result equals a single-process run. Memory is bounded by two blocks plus their halos (the next
one is read while one computes) and two blocks' output (one is written while the next fills).
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import zarr

flushed_print = functools.partial(print, flush=True)
VOXELS_PER_MM3 = 1.5625e15  # cortex at 4x4x40 nm: 1 mm / 4 nm * 1 mm / 4 nm * 1 mm / 40 nm


def job_hours_per_mm3(voxels_per_s: float) -> float:
    """Hours one job at `voxels_per_s` needs for a cubic millimetre at 4x4x40 nm."""
    return VOXELS_PER_MM3 / voxels_per_s / 3600


def create_target(path: str, like: zarr.Array, chunks: tuple[int, ...]) -> zarr.Array:
    """A float16 Zarr v3 array shaped like `like`, chunked by `chunks` (one chunk = one block).

    Half precision: a probability needs no more than its 11 significant bits (steps of at most
    0.0005 in [0, 1]), and it halves what every block writes, twice what the uint8 volume takes
    rather than four times. Unwritten chunks read as NaN, so a block that was never computed
    cannot pass for a result. Chunks are stored uncompressed: a probability's low mantissa bits
    are noise, so Zarr's default zstd saves little, and writing a 4x512x512 float32 block with it
    took 37 ms against 6.7 ms uncompressed (one timing on a 2-core Xeon), on a core the model
    needs.
    """
    if len(chunks) != len(like.shape):
        raise ValueError(f"chunks {tuple(chunks)} must have one size per axis of {like.shape}")
    return zarr.create_array(
        store=path,
        shape=like.shape,
        chunks=tuple(int(size) for size in chunks),
        dtype="float16",
        fill_value=np.nan,
        compressors=None,
        # A block is never all NaN, so Zarr's check for empty chunks is a wasted pass per write.
        config={"write_empty_chunks": True},
        attributes={"axes": "zyx", "content": "membrane probability"},
        overwrite=True,
    )


def block_chunks(sections: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Target chunks (one per block) for a (Z, Y, X) volume of `shape`: whole sections, at most
    `sections` deep, as even as the volume's depth allows. Zarr stores every chunk whole, so a last
    block of 1 section in 4-section chunks writes 4 (and 5 sections in 20-section chunks took 27 ms
    to write against 5.8 ms)."""
    depth = shape[0]
    return (math.ceil(depth / math.ceil(depth / sections)), *shape[1:])


def plan_blocks(target: zarr.Array) -> int:
    """How many blocks (target chunks) the volume has; blocks are numbered 0..n-1 in C order."""
    return math.prod(target.cdata_shape)


def block_region(target: zarr.Array, block: int) -> tuple[slice, ...]:
    """The target region of a flat block index."""
    position = np.unravel_index(block, target.cdata_shape)
    return tuple(
        slice(index * size, min((index + 1) * size, extent))
        for index, size, extent in zip(position, target.chunks, target.shape, strict=True)
    )


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """Per-axis tile weights. Across an overlap, the outer quarter gets weight 0 (where a
    zero-padded network is least right), the middle half a raised-cosine ramp, the rest 1; two
    neighbouring tiles' weights then sum to 1 across their overlap, so seams vanish."""
    margin = overlap // 4
    ramp_length = overlap - 2 * margin
    ramp = np.ones(overlap, np.float64)
    ramp[:margin] = 0.0
    steps = np.arange(1, ramp_length + 1)
    ramp[margin : overlap - margin] = np.sin(np.pi * steps / (2 * (ramp_length + 1))) ** 2
    window = np.ones(tile, np.float64)
    if overlap:
        window[:overlap] = np.minimum(window[:overlap], ramp)
        window[tile - overlap :] = np.minimum(window[tile - overlap :], ramp[::-1])
    return window.astype(np.float32)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, length) with at least `overlap` shared voxels; the last tile
    ends at `length` (length >= tile)."""
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def _mirror(indices: np.ndarray, extent: int) -> np.ndarray:
    """Map coordinates outside [0, extent) back inside by mirroring at the edges (edge voxel
    repeated, period 2 * extent), so any halo works, even one wider than the volume."""
    folded = np.mod(indices, 2 * extent)
    return np.where(folded < extent, folded, 2 * extent - 1 - folded)


def read_mirrored(source, start: tuple[int, ...], stop: tuple[int, ...]) -> np.ndarray:
    """source[start:stop] for a region that may reach past the volume, mirrored there (`_mirror`).
    Reads one bounding box from the source (for a region that overlaps the volume, no larger than
    the region clipped to it) and mirrors it with np.pad, whose 'symmetric' mode about a box edge
    that is the volume's edge is `_mirror`, and cheaper than indexing every voxel (4.0 ms against
    9.7 ms per 4 x 544 x 544 region, on a core the model needs)."""
    box, pads, offsets = [], [], []
    for a, b, extent in zip(start, stop, source.shape, strict=True):
        mirrored = _mirror(np.arange(a, b), extent)
        # Where the region passes an edge, the box reaches that edge (padding mirrors about it);
        # padding wider than the box would mirror about its other side too: read the whole axis.
        low = 0 if a < 0 else int(mirrored.min())
        high = extent if b > extent else int(mirrored.max()) + 1
        if max(-a, b - extent) > high - low:
            low, high = 0, extent
        box.append(slice(low, high))
        pads.append((max(0, low - a), max(0, b - high)))
        offsets.append(slice(a - min(a, low), a - min(a, low) + b - a))
    data = np.asarray(source[tuple(box)])
    if any(before or after for before, after in pads):
        data = np.pad(data, pads, mode="symmetric")
    return data[tuple(offsets)]


def _model_device(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def _tile_origins(shape: tuple[int, ...], tile, overlap) -> list[tuple[int, int, int]]:
    return [
        (z, y, x)
        for z in tile_starts(shape[0], tile[0], overlap[0])
        for y in tile_starts(shape[1], tile[1], overlap[1])
        for x in tile_starts(shape[2], tile[2], overlap[2])
    ]


def _batches(image: np.ndarray, origins, tile, batch_size: int):
    """The tiles of `image` at `origins` as uint8 batches of `batch_size`, the last one padded
    with copies of its last tile: a compiled or exported model may fix its batch size (Inductor
    recompiles for a second batch size, and its INT8 convolutions fail to at 544 x 544), and one
    shape means the same kernels everywhere. A block's batches depend on the block alone."""
    for first in range(0, len(origins), batch_size):
        batch = origins[first : first + batch_size]
        tiles = np.stack(
            [image[z : z + tile[0], y : y + tile[1], x : x + tile[2]] for z, y, x in batch]
        )
        yield batch, np.concatenate([tiles, np.repeat(tiles[-1:], batch_size - len(batch), 0)])


def _forward(model, tiles: np.ndarray, dims: int, device) -> torch.Tensor:
    """Membrane probability (float32, on the CPU) of uint8 `tiles` (N, Z, Y, X), the same shape."""
    inputs = torch.from_numpy(tiles).to(device=device, dtype=torch.float32).div_(255.0)
    inputs = inputs[:, None] if dims == 3 else inputs  # (N, 1, Z, Y, X) or (N, 1, Y, X)
    with torch.inference_mode():
        logits = model(inputs)
    if tuple(logits.shape) != tuple(inputs.shape):
        raise ValueError(
            f"the model turned tiles of shape {tuple(inputs.shape)} into "
            f"{tuple(logits.shape)}: it must return one membrane logit per input voxel "
            "(N, 1, ...); pick a tile size the model accepts (a U-Net needs sizes "
            "divisible by 2 per pooling level)"
        )
    return torch.sigmoid(logits.float()).reshape(tiles.shape).cpu()


@functools.lru_cache(maxsize=8)
def _blending(shape: tuple[int, ...], tile, overlap, inner) -> tuple[torch.Tensor, torch.Tensor]:
    """(one tile's weights, 1 / the sum of every tile's weights over the `inner` part, (start,
    stop) per axis, of a region of `shape`): the same for every block of one shape, so computed
    once, not beside the model for each block. Only the region's outer margin (inside the halo)
    can lack weight; `inner` never does."""
    window = functools.reduce(
        np.multiply.outer, [blend_window(t, o) for t, o in zip(tile, overlap, strict=True)]
    )
    weights = np.zeros(shape, np.float32)
    for z, y, x in _tile_origins(shape, tile, overlap):
        weights[z : z + tile[0], y : y + tile[1], x : x + tile[2]] += window
    inner_weights = weights[tuple(slice(start, stop) for start, stop in inner)]
    return torch.from_numpy(window), torch.from_numpy(1.0 / inner_weights)


def _tiles_are_disjoint(shape: tuple[int, ...], tile, overlap) -> bool:
    """Whether the tiles covering a region of `shape` share no voxel: the default geometry's
    (one tile per section in-plane, tiles that meet in depth), where blending is the identity."""
    return all(
        b - a >= size
        for length, size, shared in zip(shape, tile, overlap, strict=True)
        for a, b in itertools.pairwise(tile_starts(length, size, shared))
    )


def _paste(output: torch.Tensor, probability: torch.Tensor, origin, tile, inner) -> None:
    """Copy the part of one tile's `probability` (at `origin` in the padded region) that falls in
    the `inner` slices into `output` (shaped like `inner`), casting to its dtype."""
    into, out_of = [], []
    for start, size, piece in zip(origin, tile, inner, strict=True):
        low, high = max(start, piece.start), min(start + size, piece.stop)
        if low >= high:
            return
        into.append(slice(low - piece.start, high - piece.start))
        out_of.append(slice(low - start, high - start))
    output[tuple(into)] = probability[tuple(out_of)]


def _reused(buffers: dict, shape: tuple[int, ...], dtype: torch.dtype, slot: int = 0):
    """A tensor kept in `buffers` from block to block: a fresh one per block costs its pages
    zeroed anew by the kernel (about 2 ms for a 2D block's output on a 2-core Xeon)."""
    key = (tuple(shape), dtype, slot)
    if key not in buffers:
        buffers[key] = torch.empty(shape, dtype=dtype)
    return buffers[key]


def _predict_region(model, image: np.ndarray, inner, geometry, output, buffers: dict, device):
    """(voxels the model computed, seconds inside the model) for one padded region (uint8 Z, Y,
    X), its blended membrane probability over the `inner` part written into `output` (a tensor
    shaped like `inner`, of the target's dtype). `geometry`: (dims, tile, overlap, batch size);
    `buffers`: tensors reused from block to block (`_reused`).

    Blending runs in torch on the model's threads, between its batches, into a reused buffer:
    on a node whose cores all run the model, every millisecond outside it is a millisecond the
    model waits, and NumPy's blending on one thread (multiply, add, divide) and fresh buffers
    per block cost several of them per block. Where the tiles share no voxel
    (`_tiles_are_disjoint`), each voxel has one tile and blending would return its value (times
    its weight, over that weight): the tiles are copied straight into the output, which saves
    zeroing, weighting and dividing a buffer larger than the block (about 4 ms of a 2D INT8
    block's 100-150 ms on a 2-core Xeon)."""
    dims, tile, overlap, batch_size = geometry
    origins = _tile_origins(image.shape, tile, overlap)
    disjoint = _tiles_are_disjoint(image.shape, tile, overlap)
    if not disjoint:
        bounds = tuple((piece.start, piece.stop) for piece in inner)  # slices are not hashable
        window, inverse_weights = _blending(image.shape, tile, overlap, bounds)
        blended = _reused(buffers, image.shape, torch.float32).zero_()
    model_seconds = 0.0
    for batch, tiles in _batches(image, origins, tile, batch_size):
        tick = time.perf_counter()
        probabilities = _forward(model, tiles, dims, device)
        model_seconds += time.perf_counter() - tick
        for (z, y, x), probability in zip(batch, probabilities, strict=False):
            if disjoint:
                _paste(output, probability, (z, y, x), tile, inner)
            else:
                region = blended[z : z + tile[0], y : y + tile[1], x : x + tile[2]]
                region.addcmul_(probability, window)
    computed = math.ceil(len(origins) / batch_size) * batch_size * math.prod(tile)
    if not disjoint:
        torch.mul(blended[inner], inverse_weights, out=output)  # NumPy's casts are slower
    return computed, model_seconds


def _padded_region(target: zarr.Array, block: int, tile3, halo):
    """(target region of `block`, start and stop of the block plus its halo, widened about its
    centre to at least one tile, and the block's part of that padded region)."""
    region = block_region(target, block)
    start, stop = [], []
    for axis, piece in enumerate(region):
        extra = max(halo[axis], math.ceil((tile3[axis] - (piece.stop - piece.start)) / 2))
        start.append(piece.start - extra)
        stop.append(max(piece.stop + extra, piece.start - extra + tile3[axis]))
    inner = tuple(
        slice(piece.start - a, piece.stop - a) for piece, a in zip(region, start, strict=True)
    )
    return region, tuple(start), tuple(stop), inner


def _geometry(dims, tile, overlap) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(tile, overlap, halo) as (Z, Y, X); the halo is deeper than blend_window's zero margin."""
    tile3 = (1, *tile) if dims == 2 else tuple(tile)
    overlap3 = (0, *overlap) if dims == 2 else tuple(overlap)
    return tile3, overlap3, tuple(math.ceil(o / 2) for o in overlap3)


def predict_volume(
    model,
    source: zarr.Array,
    target: zarr.Array,
    *,
    dims: int,
    tile: tuple[int, ...],
    overlap: tuple[int, ...],
    batch_size: int,
    blocks: list[int] | None = None,
    log=flushed_print,
) -> dict:
    """Write the membrane probability of `blocks` (flat target-chunk indices; None = all) of
    `source` (uint8, Z, Y, X) into `target` (floating point, same shape, its own chunks).

    `model` maps float32 images in [0, 1] (uint8 / 255), shaped (N, 1, Y, X) when dims == 2 (tiles
    of single slices) or (N, 1, Z, Y, X) when dims == 3, to membrane logits of the same shape.
    `tile` and `overlap` are (Y, X) for dims == 2 and (Z, Y, X) for dims == 3.

    I/O runs beside the model: while a block computes, a thread reads (decodes) the next block's
    region and another writes the previous block's result.
    """
    if source.shape != target.shape or len(source.shape) != 3:
        raise ValueError(f"source {source.shape} and target {target.shape} must be one Z, Y, X")
    if dims not in (2, 3) or len(tile) != dims or len(overlap) != dims:
        raise ValueError(f"dims {dims}: give tile and overlap with {dims} sizes each (got "
                         f"{tuple(tile)}, {tuple(overlap)})")  # fmt: skip
    if any(not 0 <= o < t for t, o in zip(tile, overlap, strict=True)):
        raise ValueError(f"each overlap must be >= 0 and smaller than its tile ({tile}, {overlap})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tile3, overlap3, halo = _geometry(dims, tile, overlap)
    todo = list(range(plan_blocks(target))) if blocks is None else list(blocks)
    device = _model_device(model)
    dtype = torch.from_numpy(np.empty(0, target.dtype)).dtype
    regions = [_padded_region(target, block, tile3, halo) for block in todo]
    started = time.monotonic()
    voxels = tile_voxels = 0
    model_seconds = 0.0
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        reads = [reader.submit(read_mirrored, source, *regions[0][1:3])] if todo else []
        writes, buffers = [], {}
        for done, (block, (region, _, _, inner)) in enumerate(zip(todo, regions, strict=True), 1):
            image = reads.pop().result()
            if done < len(todo):  # the next block's region, read while this one computes
                reads.append(reader.submit(read_mirrored, source, *regions[done][1:3]))
            if len(writes) >= 2:  # the write of the block two back frees its output buffer
                writes[-2].result()
            shape = [piece.stop - piece.start for piece in inner]
            output = _reused(buffers, shape, dtype, slot=done % 2)
            seen, seconds = _predict_region(
                model, image, inner, (dims, tile3, overlap3, batch_size), output, buffers, device
            )
            writes.append(writer.submit(target.__setitem__, region, output.numpy()))
            tile_voxels += seen
            model_seconds += seconds
            voxels += math.prod(int(piece.stop - piece.start) for piece in region)
            elapsed = time.monotonic() - started
            eta = elapsed / done * (len(todo) - done)
            log(
                f"segment: block {block} ({done}/{len(todo)}) {voxels / elapsed:,.0f} voxels/s, "
                f"{elapsed:.1f} s elapsed, ETA {eta:.1f} s"
            )
        for write in writes:
            write.result()
    seconds = time.monotonic() - started
    return {
        "voxels": voxels,
        "seconds": round(seconds, 3),
        "voxels_per_s": float(voxels / seconds) if seconds > 0 else float("nan"),
        "blocks": len(todo),
        # Voxels the model computed (tiles overlap, blocks carry halos, padding tiles fill the
        # last batch of a block): tile_voxels / voxels is the geometry's redundancy, the
        # network's work per voxel written.
        "tile_voxels": tile_voxels,
        "redundancy": tile_voxels / voxels if voxels else float("nan"),
        "model_seconds": round(model_seconds, 3),
    }


def network_rate(
    model, source: zarr.Array, target: zarr.Array, *, dims, tile, overlap, batch_size, blocks
) -> dict:
    """The network alone on the tiles of `blocks`, read into memory first: output voxels per
    second of model time, the rate the volume path would reach with free I/O and blending."""
    tile3, overlap3, halo = _geometry(dims, tile, overlap)
    device = _model_device(model)
    voxels, batches = 0, []
    for block in blocks:
        region, start, stop, _ = _padded_region(target, block, tile3, halo)
        image = read_mirrored(source, start, stop)
        origins = _tile_origins(image.shape, tile3, overlap3)
        batches += [tiles for _, tiles in _batches(image, origins, tile3, batch_size)]
        voxels += math.prod(int(piece.stop - piece.start) for piece in region)
    tick = time.perf_counter()
    for tiles in batches:
        _forward(model, tiles, dims, device)
    seconds = time.perf_counter() - tick
    return {"network_voxels_per_s": voxels / seconds, "network_seconds": round(seconds, 3)}


def share_of_network(
    model,
    source: zarr.Array,
    target: zarr.Array,
    *,
    rounds,
    dims,
    tile,
    overlap,
    batch_size,
    min_seconds: float = 0.0,
) -> dict:
    """The path's share of the network's own rate: rounds of one pass of the whole path over
    every block, each followed by the network alone on the same tiles, with no other model
    between them (a pass just after another model's runs cold: the path kept 0.79 of the 2D
    INT8 network at width 8 when the FP32 model ran before each pass, 0.87 without, 8 rounds
    each). At least `rounds` rounds, and more until the path's passes add up to `min_seconds`:
    a pass of a fast model is short enough that one slow moment of a shared machine moves its
    ratio by 0.1. Medians of the rounds' path rates, network rates and ratios (so a slower
    minute of the machine slows both sides of a ratio), how many rounds ran, and the geometry's
    redundancy."""  # fmt: skip
    geometry = {"dims": dims, "tile": tile, "overlap": overlap, "batch_size": batch_size}
    blocks = list(range(plan_blocks(target)))
    path, network, shares = [], [], []
    path_seconds = 0.0
    while len(shares) < rounds or path_seconds < min_seconds:
        started = time.perf_counter()
        record = predict_volume(model, source, target, log=lambda _line: None, **geometry)
        seconds = time.perf_counter() - started
        path_seconds += seconds
        alone = network_rate(model, source, target, blocks=blocks, **geometry)
        path.append(record["voxels"] / seconds)
        network.append(alone["network_voxels_per_s"])
        shares.append(path[-1] / network[-1])
    return {
        "path_voxels_per_s": statistics.median(path),
        "network_voxels_per_s": statistics.median(network),
        "path_fraction_of_network": statistics.median(shares),
        "share_rounds": len(shares),
        "redundancy": record["redundancy"],
    }
