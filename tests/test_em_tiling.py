"""quantpipe.tiling: tiled, blended inference over chunked Zarr volumes matches the untiled
model away from the volume's edges, gives the same bits whatever blocks run where and in what
order, and reads block by block."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from quantpipe.tiling import (
    blend_window,
    block_region,
    create_target,
    plan_blocks,
    predict_volume,
    share_of_network,
    tile_starts,
)

QUIET = {"log": lambda _: None}
SCHEMA = Path(__file__).resolve().parent.parent / "workflow/schemas/config.schema.yaml"


def fixed_conv(dims: int, kernel: int = 3) -> torch.nn.Module:
    """A deterministic convolution (zero padding) standing in for a segmentation network."""
    conv_type = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    conv = conv_type(1, 1, kernel, padding=kernel // 2)
    generator = torch.Generator().manual_seed(dims * 10 + kernel)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        conv.bias.fill_(-0.5)
    return conv.eval()


@pytest.fixture
def volume(tmp_path) -> zarr.Array:
    """A smooth-ish random uint8 volume, 5 x 70 x 90, chunked unlike any target."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 70, 90), dtype=np.uint8)
    source = zarr.create_array(
        store=str(tmp_path / "image.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype="uint8"
    )
    source[:] = data
    return source


def untiled(model, data: np.ndarray, dims: int) -> np.ndarray:
    images = torch.from_numpy(data).float().div(255)
    inputs = images[:, None] if dims == 2 else images[None, None]
    with torch.inference_mode():
        return torch.sigmoid(model(inputs)).reshape(data.shape).numpy()


# Targets hold float16: rounding moves a probability by at most 2**-11 of itself.
AS_STORED = {"rtol": 2**-11, "atol": 1e-6}
SETTINGS = {
    2: {"dims": 2, "tile": (32, 32), "overlap": (8, 8), "batch_size": 4},
    3: {"dims": 3, "tile": (8, 32, 32), "overlap": (4, 8, 8), "batch_size": 2},
}
TARGET_CHUNKS = {2: (1, 40, 40), 3: (2, 40, 40)}


@pytest.mark.parametrize("dims", [2, 3])
def test_tiled_equals_untiled_away_from_the_edges(volume, tmp_path, dims):
    model = fixed_conv(dims)
    target = create_target(str(tmp_path / "out.zarr"), volume, TARGET_CHUNKS[dims])
    result = predict_volume(model, volume, target, **SETTINGS[dims], **QUIET)
    assert result["blocks"] == plan_blocks(target) and result["voxels"] == math.prod(volume.shape)
    # Half precision halves what every block writes; unwritten chunks would read as NaN.
    assert target.dtype == np.float16 and np.isnan(target.fill_value)
    tiled, reference = target[:], untiled(model, volume[:], dims)
    # The volume's own edge differs on purpose (mirrored, not zero padded): compare inside it.
    # Tile borders get no weight over a quarter of the overlap (2 voxels in-plane, 1 across
    # sections), more than this model's reach of 1: inside, tiling changes nothing.
    inner = (slice(None), slice(1, -1), slice(1, -1))
    if dims == 3:
        inner = (slice(1, -1), *inner[1:])
    assert not np.isnan(tiled).any()
    np.testing.assert_allclose(tiled[inner], reference[inner], **AS_STORED)


@pytest.mark.parametrize("dims", [2, 3])
def test_a_pointwise_model_is_reproduced_everywhere(volume, tmp_path, dims):
    # No spatial context: blending identical values must give the value itself, edges included.
    model = fixed_conv(dims, kernel=1)
    target = create_target(str(tmp_path / "out.zarr"), volume, TARGET_CHUNKS[dims])
    predict_volume(model, volume, target, **SETTINGS[dims], **QUIET)
    np.testing.assert_allclose(target[:], untiled(model, volume[:], dims), **AS_STORED)


@pytest.mark.parametrize("dims", [2, 3])
def test_any_partition_and_order_of_blocks_gives_the_same_bits(volume, tmp_path, dims):
    model = fixed_conv(dims)
    whole = create_target(str(tmp_path / "whole.zarr"), volume, TARGET_CHUNKS[dims])
    predict_volume(model, volume, whole, **SETTINGS[dims], **QUIET)
    pieces = create_target(str(tmp_path / "pieces.zarr"), volume, TARGET_CHUNKS[dims])
    blocks = list(range(plan_blocks(pieces)))
    random.Random(dims).shuffle(blocks)
    for group in (blocks[:1], blocks[1:4], blocks[4:]):  # three "workers", shuffled order
        predict_volume(model, volume, pieces, **SETTINGS[dims], blocks=group, **QUIET)
    assert np.array_equal(whole[:], pieces[:])


def test_only_the_given_blocks_are_written(volume, tmp_path):
    target = create_target(str(tmp_path / "out.zarr"), volume, (1, 40, 40))
    result = predict_volume(fixed_conv(2), volume, target, **SETTINGS[2], blocks=[3], **QUIET)
    written = np.zeros(volume.shape, bool)
    written[block_region(target, 3)] = True
    assert not np.isnan(target[:][written]).any() and np.isnan(target[:][~written]).all()
    assert result["voxels"] == written.sum() and result["blocks"] == 1
    # Block 3 is rows 40-69, columns 0-39 of section 0; with its halo of 4, a 38 x 48 region:
    # two 32 x 32 tiles per axis.
    assert result["tile_voxels"] == 4 * 32 * 32


class CountingSource:
    """A source that records the size of every read."""

    def __init__(self, array: zarr.Array) -> None:
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, selection):
        data = self.array[selection]
        self.reads.append(data.size)
        return data


def test_reads_are_bounded_by_a_block_and_its_halo(volume, tmp_path):
    source = CountingSource(volume)
    target = create_target(str(tmp_path / "out.zarr"), volume, (1, 40, 40))
    predict_volume(fixed_conv(2), source, target, **SETTINGS[2], **QUIET)
    block_with_halo = 1 * (40 + 2 * 4) * (40 + 2 * 4)  # halo: half the overlap
    assert len(source.reads) == plan_blocks(target)
    assert max(source.reads) <= block_with_halo < volume.size / 10


def test_a_halo_wider_than_the_volume_is_mirrored(tmp_path):
    source = zarr.create_array(store=str(tmp_path / "thin.zarr"), shape=(2, 20, 20),
                               chunks=(1, 20, 20), dtype="uint8")  # fmt: skip
    source[:] = np.arange(800, dtype=np.uint8).reshape(2, 20, 20)
    target = create_target(str(tmp_path / "out.zarr"), source, (2, 20, 20))
    settings = {"dims": 3, "tile": (8, 16, 16), "overlap": (4, 4, 4), "batch_size": 3}
    predict_volume(fixed_conv(3, kernel=1), source, target, **settings, **QUIET)
    np.testing.assert_allclose(
        target[:], untiled(fixed_conv(3, kernel=1), source[:], 3), **AS_STORED
    )


def test_a_mirrored_read_repeats_the_edge_voxel_with_period_twice_the_extent():
    """read_mirrored against the definition, index by index: inside, past either edge, wider
    than the volume, and wholly outside it."""
    from quantpipe.tiling import read_mirrored

    data = np.random.default_rng(2).integers(0, 256, (3, 5, 7), dtype=np.uint8)

    def mirrored(index, extent):
        folded = index % (2 * extent)
        return folded if folded < extent else 2 * extent - 1 - folded

    rng = random.Random(0)
    for _ in range(300):
        start = [rng.randint(-16, 8) for _ in range(3)]
        stop = [a + rng.randint(1, 24) for a in start]
        expected = np.array(
            [[[data[mirrored(z, 3), mirrored(y, 5), mirrored(x, 7)]
               for x in range(start[2], stop[2])]
              for y in range(start[1], stop[1])]
             for z in range(start[0], stop[0])]
        )  # fmt: skip
        np.testing.assert_array_equal(read_mirrored(data, start, stop), expected)


def test_blocks_are_as_even_as_the_volume_allows_and_never_deeper_than_asked():
    from quantpipe.tiling import block_chunks

    assert block_chunks(4, (5, 64, 80)) == (3, 64, 80)
    depths = [block_chunks(s, (d, 8, 8))[0] for s, d in ((20, 5), (4, 30), (20, 30))]
    assert depths == [5, 4, 15]
    for sections in range(1, 25):
        for depth in range(1, 60):
            chosen = block_chunks(sections, (depth, 8, 8))[0]
            assert chosen <= sections and math.ceil(depth / chosen) == math.ceil(depth / sections)


@pytest.mark.parametrize("dims", [2, 3])
def test_disjoint_tiles_are_copied_as_blending_would_give(volume, tmp_path, monkeypatch, dims):
    """One tile per section in-plane (tile = section + overlap) and tiles that meet in depth, as
    the EM task's default geometry has them: the tiles are copied into the block, not blended,
    and the block is what blending gives, at every edge too."""
    from quantpipe import tiling

    settings = {
        2: {"dims": 2, "tile": (86, 106), "overlap": (16, 16), "batch_size": 2},
        3: {"dims": 3, "tile": (2, 86, 106), "overlap": (0, 16, 16), "batch_size": 2},
    }[dims]
    chunks = (1 if dims == 2 else 4, 70, 90)
    tile3, overlap3, _ = tiling._geometry(dims, settings["tile"], settings["overlap"])
    assert tiling._tiles_are_disjoint((chunks[0], 70 + 16, 90 + 16), tile3, overlap3)
    assert not tiling._tiles_are_disjoint((4, 86, 106), (2, 86, 106), (1, 16, 16))
    model = fixed_conv(dims)
    pasted = []  # tiles copied: none if the path ignored the shortcut and blended
    paste = tiling._paste
    monkeypatch.setattr(tiling, "_paste", lambda *args: pasted.append(paste(*args)))
    copied = create_target(str(tmp_path / "copied.zarr"), volume, chunks)
    predict_volume(model, volume, copied, **settings, **QUIET)
    # 2D: one tile per section. 3D: the 4-section block's two 2-deep tiles; the last block (1
    # section, widened about its centre to 3) has tiles that overlap, so it is blended.
    assert len(pasted) == (5 if dims == 2 else 2)
    monkeypatch.setattr(tiling, "_tiles_are_disjoint", lambda *_: False)
    blended = create_target(str(tmp_path / "blended.zarr"), volume, chunks)
    predict_volume(model, volume, blended, **settings, **QUIET)
    assert not np.isnan(copied[:]).any()
    # Blending's weight-then-divide moves a float32 value by about an ulp, which can carry it
    # across a float16 rounding boundary: one half-precision step apart at most.
    np.testing.assert_allclose(copied[:], blended[:], rtol=2**-10, atol=1e-6)


def test_blending_and_tile_layout():
    window = blend_window(24, 8)
    assert window[:2].tolist() == [0, 0] and window[8:16].tolist() == [1.0] * 8
    assert np.allclose(window, window[::-1]) and np.all(np.diff(window[1:7]) > 0)
    # Neighbours (stride 24 - 8) cross-fade: their weights sum to 1 across the overlap.
    np.testing.assert_allclose(window[-8:] + window[:8], 1.0, rtol=1e-6)
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 8) == [0]


def test_clear_errors(volume, tmp_path):
    target = create_target(str(tmp_path / "out.zarr"), volume, (1, 40, 40))
    with pytest.raises(ValueError, match="tile and overlap with 3 sizes"):
        predict_volume(fixed_conv(3), volume, target, dims=3, tile=(32, 32), overlap=(8, 8),
                       batch_size=1, **QUIET)  # fmt: skip
    with pytest.raises(ValueError, match="smaller than its tile"):
        predict_volume(fixed_conv(2), volume, target, dims=2, tile=(16, 16), overlap=(16, 0),
                       batch_size=1, **QUIET)  # fmt: skip

    def shrinking(inputs):
        return inputs[..., :-1]

    with pytest.raises(ValueError, match="one membrane logit per input voxel"):
        predict_volume(shrinking, volume, target, **SETTINGS[2], **QUIET)


@pytest.mark.parametrize("model", ["unet2d", "unet3d_aniso"])
def test_the_default_geometry_computes_each_voxel_about_once(tmp_path, model):
    """The EM task's default geometry on the ISBI test volume's shape (5 sections of 512 x 512):
    one tile per section plus its in-plane halo (unet2d), one tile as deep as the volume
    (unet3d_aniso: no section overlap, so no halo in depth), at most 1.25 voxels computed per
    voxel written (issue 14); the network alone is measured on the same tiles."""
    from quantpipe.tasks.isbi2012_em.spec import tiling_geometry
    from quantpipe.tiling import network_rate

    em = yaml.safe_load(SCHEMA.read_text())["properties"]["em"]["properties"]
    defaults = {key: em[key]["default"] for key in em}
    geometry = tiling_geometry({"model": model, **defaults})
    dims = geometry["dims"]
    data = np.random.default_rng(1).integers(0, 256, (5, 512, 512), dtype=np.uint8)
    source = zarr.create_array(
        store=str(tmp_path / "image.zarr"), shape=data.shape, chunks=(1, 512, 512), dtype="uint8"
    )
    source[:] = data
    chunks = (geometry["block_sections"], 512, 512)
    target = create_target(str(tmp_path / "out.zarr"), source, chunks)
    settings = {key: geometry[key] for key in ("dims", "tile", "overlap")}
    settings["batch_size"] = defaults["inference_batch_size"]
    result = predict_volume(fixed_conv(dims, kernel=1), source, target, **settings, **QUIET)
    assert result["redundancy"] == pytest.approx((544 / 512) ** 2) and result["redundancy"] <= 1.25
    assert result["tile_voxels"] == 5 * 544 * 544 and 0 < result["model_seconds"]
    alone = network_rate(
        fixed_conv(dims, kernel=1), source, target, blocks=list(range(plan_blocks(target))),
        **settings,
    )  # fmt: skip
    assert alone["network_voxels_per_s"] > 0
    print(f"{model}: path {result['voxels_per_s']:,.0f} voxels/s, network alone "
          f"{alone['network_voxels_per_s']:,.0f}")  # fmt: skip


class ModelClock:
    """A clock that only the model moves, by `step` seconds per forward pass: everything outside
    the model takes no time by it, so rates and shares come out exact."""

    def __init__(self, model: torch.nn.Module, step: float = 0.5) -> None:
        self.model, self.step, self.now, self.passes = model, step, 0.0, 0

    def perf_counter(self) -> float:
        return self.now

    monotonic = perf_counter

    def forward(self, tiles):
        self.now += self.step
        self.passes += 1
        return self.model(tiles)


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_the_share_is_the_path_over_the_network_on_the_same_voxels(volume, tmp_path, monkeypatch,
                                                                   dims):  # fmt: skip
    """With the path's own work free, the path runs at exactly the network's rate: both count
    the voxels written (not the tiles' voxels, 1.3 times as many or more) over the same forward
    passes. A path that ran a tile twice would keep half; a share over the tiles' voxels would
    exceed 1."""
    clock = ModelClock(fixed_conv(dims))
    monkeypatch.setattr("quantpipe.tiling.time", clock)
    target = create_target(str(tmp_path / "out.zarr"), volume, TARGET_CHUNKS[dims])
    rounds = 3
    share = share_of_network(clock.forward, volume, target, rounds=rounds, **SETTINGS[dims])
    passes_per_pass = clock.passes / (2 * rounds)  # the path's and the network's, each round
    rate = volume.size / (clock.step * passes_per_pass)
    assert passes_per_pass == int(passes_per_pass) and passes_per_pass >= 2
    assert share["path_voxels_per_s"] == pytest.approx(rate)
    assert share["network_voxels_per_s"] == pytest.approx(rate)
    assert share["path_fraction_of_network"] == pytest.approx(1.0)
    assert share["redundancy"] > 1.25  # small tiles: their voxels are not the output's
    assert share["share_rounds"] == rounds
    # More rounds until the path's passes add up to min_seconds: a 4th brings them past 3.5 passes.
    pass_seconds = clock.step * passes_per_pass
    longer = share_of_network(clock.forward, volume, target, rounds=rounds,
                              min_seconds=3.5 * pass_seconds, **SETTINGS[dims])  # fmt: skip
    assert longer["share_rounds"] == 4
    assert longer["path_fraction_of_network"] == pytest.approx(1.0)


@pytest.mark.parametrize(("depth", "overlap", "batch"), [(3, 1, 4), (5, 2, 2), (4, 0, 3)])
def test_a_3d_block_is_covered_by_its_tiles_in_depth(depth, overlap, batch):
    """unet3d_aniso: the block and its halo are exactly `block_tiles` tiles deep, so no tile is
    computed for a voxel outside them."""
    from quantpipe.tasks.isbi2012_em.spec import tiling_geometry

    config = {"model": "unet3d_aniso", "tile_sections": depth, "section_overlap": overlap,
              "tile": 64, "overlap": 16, "block_tiles": batch}  # fmt: skip
    block = tiling_geometry(config)["block_sections"]
    halo = math.ceil(overlap / 2)
    padded = block + 2 * halo
    assert len(tile_starts(padded, depth, overlap)) == batch
    assert batch * (depth - overlap) + overlap == padded


@pytest.mark.slow
def test_the_volume_benchmark_script_prints_a_row_per_variant(tmp_path):
    """workflow/scripts/em_volume_benchmark.py as docs/connectomics.md runs it, on a small volume:
    one JSON row per variant, each with the path beside the network alone and the geometry's
    redundancy."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    data = np.random.default_rng(3).integers(0, 256, (3, 112, 112), dtype=np.uint8)
    volume = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=data.shape,
                               chunks=(1, 112, 112), dtype="uint8")  # fmt: skip
    volume[:] = data
    command = [sys.executable, str(REPO / "workflow" / "scripts" / "em_volume_benchmark.py"),
               str(tmp_path / "v.zarr"), "--model", "unet3d_aniso", "--width", "2", "--tile",
               "128", "--overlap", "16", "--tile-sections", "3", "--rounds", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["variant"] for row in rows] == ["fp32 eager", "fp32 compiled", "int8 pt2e",
                                                "int8 eager"]  # fmt: skip
    for row in rows:
        assert row["rounds"] == 2 and row["redundancy"] == round((128 / 112) ** 2, 3)
        assert row["path_voxels_per_s"] > 0 and row["network_voxels_per_s"] > 0
        assert 0 < row["path_fraction_of_network"]
