"""A user's folder of labelled images in torchvision's ImageFolder layout, listed without reading
a pixel: `ROOT/train/CLASS/...` and `ROOT/test/CLASS/...`, PNG and JPEG files.

Torch-free and cheap (directory listings and a hash of each path), because the Snakefile's check
and the prepare_data rule's inputs call it at every parse.

Validation is held out of train by a fixed rule on each file's path within its class folder (a
hash of "CLASS/NAME", as TensorFlow's retraining example did): adding or removing an image never
moves another one between train and validation, and every seed, stage and machine agrees.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDERS = ("train", "test")  # the folder's
SPLITS = ("train", "val", "test")  # the stages': validation held out of train


class ImageFolderError(ValueError):
    """The folder is not in the layout, has an empty class, or holds a file that does not decode."""


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the root, with "/" separators: "train/cat/001.png"
    split: str  # train, val or test
    label: int  # index of the class in the sorted class names


def holdout_rank(path: str) -> float:
    """A fixed number in [0, 1) for the file at `path` ("train/CLASS/NAME"): held out for
    validation when below val_fraction. Hashes "CLASS/NAME" only, so renaming the root changes
    nothing."""
    within_class = path.split("/", 1)[1]
    return int(hashlib.sha256(within_class.encode()).hexdigest()[:15], 16) / 16**15


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise ImageFolderError(
            f"{split_dir}: missing. The folder must hold train/CLASS/* and test/CLASS/* "
            "(torchvision's ImageFolder layout)"
        )
    return sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _images_in(folder: Path) -> tuple[list[str], int]:
    """Image files under `folder`, sorted, relative to it; and how many other files were
    ignored (hidden files, other extensions), as ImageFolder ignores them."""
    found, ignored = [], 0
    for parent, directories, files in os.walk(folder, followlinks=True):
        directories[:] = sorted(name for name in directories if not name.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                found.append(os.path.relpath(os.path.join(parent, name), folder))
            else:
                ignored += 1
    return sorted(Path(name).as_posix() for name in found), ignored


def scan(root: str | os.PathLike, val_fraction: float) -> dict:
    """The folder's classes and files, each with its split and label: {"classes", "files"
    (train in a fixed shuffled order, then val, then test by class), "ignored"}.

    Raises ImageFolderError for a missing root or split folder, fewer than two classes, class
    folders that differ between train and test, a class without images, or a split left empty
    by the holdout.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"images.root {str(root)!r} is not a directory")
    classes = _class_folders(root / "train")
    test_classes = _class_folders(root / "test")
    if len(classes) < 2:
        raise ImageFolderError(
            f"{root / 'train'}: {len(classes)} class folder(s) {classes}; a classifier needs at "
            "least 2"
        )
    if test_classes != classes:
        raise ImageFolderError(
            f"{root}: train and test must hold the same class folders; only in train: "
            f"{sorted(set(classes) - set(test_classes))}, only in test: "
            f"{sorted(set(test_classes) - set(classes))}"
        )
    files, ignored = {split: [] for split in SPLITS}, 0
    for split in FOLDERS:
        for label, name in enumerate(classes):
            names, skipped = _images_in(root / split / name)
            ignored += skipped
            if not names:
                raise ImageFolderError(
                    f"{root / split / name}: no images (PNG or JPEG: {', '.join(EXTENSIONS)}); "
                    "every class needs some in train and in test"
                )
            for name_in_class in names:
                path = f"{split}/{name}/{name_in_class}"
                held_out = split == "train" and holdout_rank(path) < val_fraction
                assigned = "val" if held_out else split
                files[assigned].append(ImageFile(path, assigned, label))
    for split in ("train", "val"):
        if val_fraction > 0 and not files[split]:
            raise ImageFolderError(
                f"{root / 'train'}: images.val_fraction {val_fraction} leaves the {split} split "
                f"empty of its {len(files['train']) + len(files['val'])} images; change it"
            )
    # A fixed pseudo-random order, so that a prefix of the training split (train.images) holds
    # every class.
    for split in ("train", "val"):
        files[split].sort(key=lambda file: hashlib.sha256(file.path.encode()).digest())
    return {
        "classes": classes,
        "files": files["train"] + files["val"] + files["test"],
        "ignored": ignored,
    }


def input_files(root: str | os.PathLike) -> list[str]:
    """Every image file of the folder (paths under `root`), for the prepare_data rule's inputs:
    a changed, added or removed file reruns it. Empty where the folder is not in the layout
    (the check before any job says why)."""
    root = Path(root)
    found = []
    for split in FOLDERS:
        if (root / split).is_dir():
            found += [str(root / split / name) for name in _images_in(root / split)[0]]
    return found
