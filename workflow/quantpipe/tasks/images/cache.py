"""The folder decoded once into a verified cache on disk, and put where the stages read it.

1. The folder is listed (quantpipe.tasks.images.folder) and every file hashed (SHA-256 of its
   bytes): what the cache must hold.
2. The machine's data cache (quantpipe.datacache) keeps one decoded copy per folder,
   $QUANTPIPE_CACHE/data/images-<hash of the folder's path>: uint8 {split}_images.npy (N, 3,
   SIZE, SIZE), int64 {split}_labels.npy, and manifest.json (classes, settings, every file's
   hash, every array's hash, the training split's channel mean and std). It is kept when its
   manifest lists the same files with the same hashes and settings and its arrays match their
   hashes, else decoded anew (decode.py) and replaced, so a touched but unchanged folder is
   never decoded twice.
3. The data folder (resources/images) gets hard links to the cache's files (a copy across file
   systems), verified the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import partial
from pathlib import Path

from quantpipe import datacache
from quantpipe.artifacts import read_json, write_json
from quantpipe.tasks.images import decode
from quantpipe.tasks.images.folder import SPLITS, ImageFile, ImageFolderError, scan

MANIFEST = "manifest.json"
FORMAT = 1  # of the cached arrays and manifest: a change rebuilds every cache
NAMED = 5  # changed files named when the cache is out of date


def expected(root: str | os.PathLike, image_size: int, val_fraction: float, log=print) -> dict:
    """What a cache of the folder at `root` must hold: settings, classes and every file's split,
    label, size and hash. ImageFolderError names each unreadable or empty file."""
    scanned = scan(root, val_fraction)
    files = scanned["files"]
    log(
        f"images: {len(files)} images in {len(scanned['classes'])} classes under {root} "
        f"({scanned['ignored']} other files ignored); hashing"
    )
    hashes = decode.hash_files(root, [file.path for file in files], decode.workers(), log)
    return {
        "format": FORMAT,
        "root": str(Path(root).resolve()),
        "image_size": image_size,
        "val_fraction": val_fraction,
        "classes": scanned["classes"],
        "files": [
            {"path": file.path, "split": file.split, "label": file.label, **digest}
            for file, digest in zip(files, hashes, strict=True)
        ],
    }


def _changed_files(cached: list[dict], wanted: list[dict]) -> str:
    before = {entry["path"]: entry for entry in cached}
    after = {entry["path"]: entry for entry in wanted}
    changes = {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(path for path in after.keys() & before.keys()
                          if after[path] != before[path]),
    }  # fmt: skip
    return "; ".join(
        f"{len(paths)} {kind} ({', '.join(paths[:NAMED])}{', ...' if len(paths) > NAMED else ''})"
        for kind, paths in changes.items()
        if paths
    )


def verify(folder: str | os.PathLike, wanted: dict) -> dict:
    """The manifest of the decoded copy at `folder`, if it holds what `wanted` (expected())
    says and every array matches its recorded hash; ImageFolderError saying what differs."""
    folder = Path(folder)
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError) as error:
        raise ImageFolderError(f"{folder / MANIFEST}: unreadable ({error})") from error
    for key, value in wanted.items():
        if manifest.get(key) == value:
            continue
        if key == "files":
            detail = _changed_files(manifest.get("files", []), value)
        else:
            detail = f"{manifest.get(key)!r}, the folder's {value!r}"
        raise ImageFolderError(f"{folder}: out of date: {key}: {detail}")
    for name, digest in manifest["arrays"].items():
        if not (folder / name).is_file() or decode.sha256_of(folder / name) != digest:
            raise ImageFolderError(f"{folder / name}: missing, or not its recorded sha256 {digest}")
    return manifest


def _decode_into(root: str, wanted: dict, log, staged: Path, work: Path) -> None:
    files = [ImageFile(entry["path"], entry["split"], entry["label"]) for entry in wanted["files"]]
    decoded = decode.decode_files(root, files, wanted["image_size"], staged, decode.workers(), log)
    # The hashes of the bytes decoded, not the ones listed earlier: verify() then refuses a
    # folder that changed while it was being decoded.
    write_json(staged / MANIFEST, {**wanted, **decoded})


def _link_into(source: Path, staged: Path, work: Path) -> None:
    staged.mkdir(parents=True)
    for item in source.iterdir():
        try:
            os.link(item, staged / item.name)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(item, staged / item.name)


def _failure(root: str):
    def failure(target: Path, tried: str) -> ImageFolderError:
        return ImageFolderError(f"could not put the images of {root} at {target}:\n{tried}")

    return failure


def cache_name(root: str | os.PathLike) -> str:
    """The data cache's folder for the image folder at `root`: one per folder."""
    return "images-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def record(manifest: dict) -> dict:
    """prepare_data's record of a decoded folder: everything but the per-file list, which stays
    in the manifest, summed up by one hash."""
    files = manifest["files"]
    counts = {
        split: [
            sum(1 for entry in files if entry["split"] == split and entry["label"] == label)
            for label in range(len(manifest["classes"]))
        ]
        for split in SPLITS
    }
    listing = json.dumps(files, sort_keys=True).encode()
    return {
        **{key: value for key, value in manifest.items() if key != "files"},
        "images": {split: sum(per_class) for split, per_class in counts.items()},
        "per_class": counts,
        "files_sha256": hashlib.sha256(listing).hexdigest(),
    }


def prepare(data: str, root: str, image_size: int, val_fraction: float, log=print) -> dict:
    """Put the verified decoded folder `root` at `data` (through the machine's data cache) and
    return its record; `cache` says whether the cache's copy was there already."""
    wanted = expected(root, image_size, val_fraction, log)
    check = partial(verify, wanted=wanted)
    decoding = ("decode", str(root), partial(_decode_into, str(root), wanted, log))
    cache = datacache.cached(
        cache_name(root), "", lambda copies: [decoding], check, _failure(root), log
    )
    placed = datacache.fill(
        Path(data),
        [("cache", cache["path"], partial(_link_into, Path(cache["path"])))],
        check,
        _failure(root),
        log,
    )
    return {**record(placed["verified"]), "cache": cache}


def load_manifest(data: str | os.PathLike) -> dict:
    """The manifest of the prepared folder `data` (what the stages read: classes, mean, std)."""
    path = Path(data) / MANIFEST
    if not path.is_file():
        raise ImageFolderError(f"{path}: missing; run prepare_data for the images task first")
    return read_json(path)
