"""quantpipe.tasks.isbi2012_em.data on the real ISBI 2012 stack: verification, the Zarr volume,
splits, and
refusal of altered or incomplete copies; a failed write leaves nothing behind."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from quantpipe.tasks.isbi2012_em import data
from quantpipe.tasks.isbi2012_em.data import (
    IMAGE_SHA256,
    SPLITS,
    DataError,
    load_split,
    load_stack,
    prepare,
)

QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def volume(tmp_path_factory, isbi_dir) -> tuple[Path, dict]:
    destination = tmp_path_factory.mktemp("em") / "isbi2012.zarr"
    return destination, prepare(str(isbi_dir), str(destination), **QUIET)


@pytest.fixture
def source_copy(tmp_path, isbi_dir) -> Path:
    copy = tmp_path / "isbi2012-em"
    shutil.copytree(isbi_dir, copy)
    return copy


def test_the_volume_holds_the_verified_stack(volume, isbi_dir):
    destination, record = volume
    group = zarr.open_group(destination, mode="r")
    assert group.metadata.zarr_format == 3
    for name in ("image", "membrane"):
        assert group[name].shape == (30, 512, 512) and group[name].dtype == np.uint8
        assert group[name].chunks == (1, 512, 512)
    label = np.asarray(Image.open(isbi_dir / "label" / "12.png"))
    assert np.array_equal(group["membrane"][12], (label == 0).astype(np.uint8))
    assert np.array_equal(group["image"][3], np.asarray(Image.open(isbi_dir / "image" / "3.png")))
    assert record["voxel_size_nm"] == {"z": 50, "y": 4, "x": 4}
    assert record["sha256"]["image"][0] == IMAGE_SHA256[0]
    assert dict(group.attrs)["membrane_fraction"] == record["membrane_fraction"]
    assert 0.1 < record["membrane_fraction"]["test"] < 0.4  # membranes are the minority class


def test_splits_partition_the_stack_by_slice(volume):
    destination, _ = volume
    whole = zarr.open_group(destination, mode="r")["image"][:]
    images = []
    for split, (start, stop) in SPLITS.items():
        image, membrane = load_split(str(destination), split)
        assert image.shape == membrane.shape == (stop - start, 512, 512)
        assert set(np.unique(membrane)) == {0, 1}
        images.append(image)
    assert np.array_equal(np.concatenate(images), whole)
    assert np.array_equal(load_stack(str(destination)), whole)  # what the benchmark times
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_split(str(destination), "validation")


def test_an_altered_slice_is_refused_naming_the_file_and_its_hash(source_copy, tmp_path):
    path = source_copy / "image" / "7.png"
    pixels = np.asarray(Image.open(path)).copy()
    pixels[100, 100] ^= 1
    Image.fromarray(pixels).save(path)
    with pytest.raises(DataError) as error:
        prepare(str(source_copy), str(tmp_path / "out.zarr"), **QUIET)
    assert str(path) in str(error.value)
    assert IMAGE_SHA256[7] in str(error.value) and data.pixel_sha256(pixels) in str(error.value)
    assert not (tmp_path / "out.zarr").exists()


def test_a_missing_file_is_named(source_copy, tmp_path):
    (source_copy / "label" / "29.png").unlink()
    with pytest.raises(DataError, match=r"lacks 1 of the 60 PNG files: label/29\.png"):
        prepare(str(source_copy), str(tmp_path / "out.zarr"), **QUIET)


def test_a_wrong_shape_is_named(source_copy, tmp_path):
    Image.new("L", (256, 512)).save(source_copy / "label" / "4.png")
    with pytest.raises(DataError, match=r"4\.png holds uint8 pixels of shape \(512, 256\)"):
        prepare(str(source_copy), str(tmp_path / "out.zarr"), **QUIET)


def test_a_failed_write_keeps_the_previous_volume_and_leaves_no_temporary(
    volume, isbi_dir, tmp_path, monkeypatch
):
    destination = tmp_path / "isbi2012.zarr"
    shutil.copytree(volume[0], destination)
    before = sorted(p.relative_to(destination) for p in destination.rglob("*"))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr.Group, "create_array", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare(str(isbi_dir), str(destination), **QUIET)
    assert sorted(p.relative_to(destination) for p in destination.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["isbi2012.zarr"]


def test_a_rerun_replaces_the_volume(volume, isbi_dir, tmp_path):
    destination = tmp_path / "isbi2012.zarr"
    shutil.copytree(volume[0], destination)
    (destination / "stale-file").write_text("from an older run")
    prepare(str(isbi_dir), str(destination), **QUIET)
    assert not (destination / "stale-file").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["isbi2012.zarr"]
    assert load_split(str(destination), "val")[0].shape == (5, 512, 512)


def test_loading_something_else_says_how_to_make_the_volume(tmp_path):
    with pytest.raises(DataError, match="Run prepare"):
        load_split(str(tmp_path / "nothing.zarr"), "test")
    zarr.open_group(tmp_path / "no_membrane.zarr", mode="w").create_array(
        "image", shape=(1, 4, 4), dtype="uint8"
    )
    with pytest.raises(DataError, match="Run prepare"):
        load_stack(str(tmp_path / "no_membrane.zarr"))
