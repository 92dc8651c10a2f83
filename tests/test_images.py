"""Task images: a folder in ImageFolder layout scanned, hashed, decoded once into a verified
cache, and read back memory-mapped. The folders are built here from CIFAR-10 test images."""

import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from quantpipe import tasks
from quantpipe.tasks.cifar10.files import TEST_BATCH, load_batch
from quantpipe.tasks.images import cache, decode, folder
from quantpipe.tasks.images import spec as images_spec

CLASSES = ("bird", "cat", "ship")  # CIFAR-10 labels 2, 3, 8
SIZE = 32


def write_folder(root: Path, cifar_dir: Path, train: int, test: int, size: int = 48) -> Path:
    """An ImageFolder of CIFAR-10 test images, upscaled to `size` PNGs (one JPEG per class)."""
    data, labels = load_batch(cifar_dir / TEST_BATCH)
    pixels = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for name, label in zip(CLASSES, (2, 3, 8), strict=True):
        chosen = np.flatnonzero(labels == label)[: train + test]
        for index, at in enumerate(chosen):
            split = "train" if index < train else "test"
            target = root / split / name
            target.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[at]).resize((size, size), Image.Resampling.BILINEAR)
            suffix = "jpg" if index == 0 else "png"
            image.save(target / f"{index:04d}.{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path, cifar_dir, monkeypatch) -> Path:
    monkeypatch.setenv("QUANTPIPE_CACHE", str(tmp_path / "cache"))
    return write_folder(tmp_path / "folder", cifar_dir, train=20, test=6)


def config(root: Path, **changes) -> dict:
    return {"root": str(root), "image_size": SIZE, "val_fraction": 0.25, **changes}


def prepare(data: Path, root: Path, **changes) -> dict:
    return tasks.load("images").prepare(str(data), config(root, **changes), log=lambda _: None)


def test_scan_holds_out_validation_by_a_fixed_rule(image_folder):
    scanned = folder.scan(image_folder, 0.25)
    assert scanned["classes"] == list(CLASSES)
    splits = {file.path: file.split for file in scanned["files"]}
    assert {split for path, split in splits.items() if path.startswith("test/")} == {"test"}
    held_out = [path for path, split in splits.items() if split == "val"]
    assert 0 < len(held_out) < 60 and all(path.startswith("train/") for path in held_out)
    shutil.copy(image_folder / "train/cat/0001.png", image_folder / "train/cat/new.png")
    again = {file.path: file.split for file in folder.scan(image_folder, 0.25)["files"]}
    assert {path: again[path] for path in splits} == splits  # an added image moves no other
    assert len(folder.input_files(image_folder)) == len(splits) + 1


def test_an_empty_class_or_a_missing_one_is_refused(image_folder):
    (image_folder / "test" / "dog").mkdir()
    with pytest.raises(folder.ImageFolderError, match="only in test: \\['dog'\\]"):
        folder.scan(image_folder, 0.1)
    (image_folder / "train" / "dog").mkdir()
    (image_folder / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(folder.ImageFolderError, match=r"train/dog: no images"):
        folder.scan(image_folder, 0.1)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"not a png at all", "not a readable PNG or JPEG")],
)
def test_an_unreadable_or_empty_file_is_named(image_folder, tmp_path, content, message):
    bad = image_folder / "train" / "cat" / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(folder.ImageFolderError, match=f"{bad}: {message}"):
        prepare(tmp_path / "data", image_folder)


def test_prepare_decodes_hashes_and_reads_back(image_folder, tmp_path):
    data = tmp_path / "data"
    record = prepare(data, image_folder)
    assert record["classes"] == list(CLASSES) and record["cache"]["source"] == "decode"
    assert sum(record["images"].values()) == 3 * 26 and record["images"]["test"] == 18
    manifest = cache.load_manifest(data)
    for entry in manifest["files"]:  # every file's content hash, as recorded
        assert (
            entry["sha256"]
            == hashlib.sha256((image_folder / entry["path"]).read_bytes()).hexdigest()
        )
    task = tasks.load("images")
    splits = task.splits(str(data), {})
    on_disk, labels = splits["train"]
    images = on_disk[:]
    assert images.dtype == torch.uint8 and on_disk.shape[1:] == (3, SIZE, SIZE)
    first = next(entry for entry in manifest["files"] if entry["split"] == "train")
    expected = decode.to_pixels((image_folder / first["path"]).read_bytes(), SIZE)
    assert torch.equal(images[0], torch.from_numpy(expected)) and labels[0] == first["label"]
    mean, std = task.channel_stats(str(data))
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mean.flatten().double(), pixels.mean(1), atol=1e-6)
    assert torch.allclose(std.flatten().double(), pixels.std(1, correction=0), atol=1e-6)
    calibration = task.calibration_inputs(str(data), {"seed": 0}, 8)
    assert calibration.shape == (8, 3, SIZE, SIZE) and calibration.dtype == torch.float32


def test_an_unchanged_folder_is_never_decoded_twice(image_folder, tmp_path):
    prepare(tmp_path / "data", image_folder)
    # A touched but unchanged folder, prepared into a fresh data folder (as a DAG rerun does):
    # the cache's copy verifies.
    os.utime(image_folder / "train/cat/0001.png")
    again = prepare(tmp_path / "other", image_folder)
    assert again["cache"]["source"] == "existing"
    assert os.path.samefile(
        tmp_path / "data" / "train_images.npy", tmp_path / "other" / "train_images.npy"
    )
    # A changed image is decoded anew, and the cache says what changed.
    shutil.copy(image_folder / "train/ship/0002.png", image_folder / "train/cat/0001.png")
    changed = prepare(tmp_path / "third", image_folder)
    assert changed["cache"]["source"] == "decode"
    assert changed["files_sha256"] != again["files_sha256"]
    assert "1 changed (train/cat/0001.png)" in changed["cache"]["failed_sources"][0]["error"]


def test_a_damaged_cache_is_rebuilt(image_folder, tmp_path):
    prepare(tmp_path / "data", image_folder)
    cached = Path(os.environ["QUANTPIPE_CACHE"]) / "data" / cache.cache_name(image_folder)
    array = cached / "test_images.npy"
    damaged = bytearray(array.read_bytes())
    damaged[-1] ^= 0xFF
    array.unlink()  # not through the data folder's hard link
    array.write_bytes(bytes(damaged))
    record = prepare(tmp_path / "other", image_folder)
    assert record["cache"]["source"] == "decode"


def test_the_check_names_what_cannot_run(image_folder):
    full = {
        "images": config(image_folder), "num_classes": 10, "calibration_sizes": [8],
        "methods": ["pt2e"], "calibration_methods": ["histogram"],
    }  # fmt: skip
    with pytest.raises(
        ValueError, match="holds 3 classes \\(bird, cat, ship\\): set num_classes: 3"
    ):
        images_spec.check(full)
    full["num_classes"] = 3
    images_spec.check(full)
    with pytest.raises(ValueError, match="calibration_sizes \\[500\\] exceed the training split"):
        images_spec.check({**full, "calibration_sizes": [500]})
    with pytest.raises(ValueError, match="needs images.root"):
        images_spec.check({**full, "images": config("")})
    spec = tasks.spec("images")
    assert sorted(spec.input_files(full)) == sorted(folder.input_files(image_folder))
    assert spec.data_settings(full) == config(image_folder)


def test_the_workers_stop_where_the_parent_bypasses_sigterm():
    """A submitit job catches SIGTERM and goes on; its pool's workers would inherit the handler,
    and a pool that ends them with SIGTERM would wait for them forever."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        handlers = decode._parallel(signal.getsignal, [signal.SIGTERM] * 4, 2, "test", print)
        assert list(handlers) == [signal.SIG_DFL] * 4
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_split_is_read_by_batches_never_mapped(tmp_path):
    """Slices, index tensors and single images read what the array holds; the file is not
    mapped into the process (its pages would count in the job's resident memory)."""
    from quantpipe.tasks.images.reader import ImagesOnDisk

    array = np.random.default_rng(0).integers(0, 256, (7, 3, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "train_images.npy", array)
    images = ImagesOnDisk(tmp_path / "train_images.npy")
    assert len(images) == 7 and images.shape == (7, 3, 4, 5)
    assert torch.equal(images[2:5], torch.from_numpy(array[2:5]))
    assert torch.equal(images[:], torch.from_numpy(array)) and images[6:6].shape == (0, 3, 4, 5)
    assert torch.equal(images[torch.tensor([6, 0, 6])], torch.from_numpy(array[[6, 0, 6]]))
    assert torch.equal(images[-1], torch.from_numpy(array[-1]))
    assert str(tmp_path / "train_images.npy") not in Path("/proc/self/maps").read_text()
    with pytest.raises(IndexError, match="image 7 of a split of 7"):
        images[torch.tensor([7])]
    np.save(tmp_path / "float.npy", array.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 array.*run prepare_data again"):
        ImagesOnDisk(tmp_path / "float.npy")
