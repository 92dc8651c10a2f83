"""Reading the folder's files in parallel workers: each file's content hash, and its pixels
decoded to uint8 (3, SIZE, SIZE) arrays written straight to .npy files on disk.

Each worker reads a file once, hashes the bytes it decodes, and returns one image; the parent
writes the images in order, one split's .npy after another, so no process ever holds more than
a few images. An image is brought to SIZE the way torchvision's Resize(SIZE) + CenterCrop(SIZE)
does: its shorter side scaled to SIZE, then the centre cut out; grey and palette images become
RGB.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from quantpipe.tasks.images.folder import SPLITS, ImageFile, ImageFolderError

CHUNK = 16  # images per task handed to a worker
PROGRESS_S = 10.0  # seconds between progress lines
MAX_NAMED = 20  # bad files named in one error


def workers() -> int:
    """The CPUs this process may use (a Slurm job's allocation, not the node's)."""
    return len(os.sched_getaffinity(0))


def to_pixels(content: bytes, size: int) -> np.ndarray:
    """Decode PNG or JPEG bytes to uint8 (3, size, size): shorter side to `size`, centre crop."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        width, height = (max(size, round(side * scale)) for side in image.size)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _read(root: Path, path: str) -> bytes:
    try:
        content = (root / path).read_bytes()
    except OSError as error:
        raise ImageFolderError(f"{root / path}: unreadable ({error.strerror or error})") from error
    if not content:
        raise ImageFolderError(f"{root / path}: empty file (0 bytes)")
    return content


def _hash_one(root: Path, path: str) -> tuple[int, str] | str:
    try:
        content = _read(root, path)
    except ImageFolderError as error:
        return str(error)
    return len(content), hashlib.sha256(content).hexdigest()


def _decode_one(root: Path, size: int, path: str) -> tuple[int, str, np.ndarray] | str:
    try:
        content = _read(root, path)
        try:
            pixels = to_pixels(content, size)
        except Exception as error:  # untrusted bytes: anything that goes wrong is "not an image"
            raise ImageFolderError(
                f"{root / path}: not a readable PNG or JPEG ({type(error).__name__}: {error})"
            ) from error
    except ImageFolderError as error:
        return str(error)
    return len(content), hashlib.sha256(content).hexdigest(), pixels


def _default_signals() -> None:
    # The parent may bypass SIGTERM (submitit's job does); a worker inheriting that would never
    # stop when the pool ends it, and the pool would wait for it forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _parallel(function: Callable, paths: list[str], count: int, what: str, log) -> Iterator:
    """function(path) for each path, in order, in `count` worker processes; a progress line
    every PROGRESS_S seconds."""
    # fork: the workers need nothing but this module, and the parent may be a script that
    # spawn would re-run.
    context = multiprocessing.get_context("fork")
    started = last = time.monotonic()
    processes = max(1, min(count, len(paths) // CHUNK + 1))
    with context.Pool(processes, initializer=_default_signals) as pool:
        for done, result in enumerate(pool.imap(function, paths, chunksize=CHUNK), 1):
            now = time.monotonic()
            if now - last >= PROGRESS_S or done == len(paths):
                last, rate = now, done / max(now - started, 1e-9)
                log(
                    f"{what}: {done}/{len(paths)} images, {rate:.0f} images/s, "
                    f"ETA {(len(paths) - done) / rate:.0f} s"
                )
            yield result
        pool.close()  # the workers stop at the end of the queue; terminate() is for errors
        pool.join()


def _raise_named(problems: list[str]) -> None:
    if problems:
        more = len(problems) - MAX_NAMED
        raise ImageFolderError(
            "\n".join(problems[:MAX_NAMED] + ([f"... and {more} more"] if more > 0 else []))
        )


def hash_files(root: str | os.PathLike, paths: list[str], count: int, log=print) -> list[dict]:
    """{"bytes", "sha256"} of each file under `root`; ImageFolderError naming every file that is
    unreadable or empty."""
    results = list(_parallel(partial(_hash_one, Path(root)), paths, count, "hash", log))
    _raise_named([result for result in results if isinstance(result, str)])
    return [{"bytes": size, "sha256": digest} for size, digest in results]


class _ArrayWriter:
    """One uint8 .npy written image by image, the file hashed as it is written."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.handle = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.sha256 = hashlib.sha256()
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        self._put(header.getvalue())

    def _put(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)

    def write(self, pixels: np.ndarray) -> None:
        self._put(pixels.tobytes())

    def close(self) -> str:
        self.handle.close()
        return self.sha256.hexdigest()


def decode_files(
    root: str | os.PathLike,
    files: list[ImageFile],
    size: int,
    into: str | os.PathLike,
    count: int,
    log=print,
) -> dict:
    """Decode `files` (grouped by split, in order) into `into`/{split}_images.npy, uint8 (N, 3,
    size, size), and {split}_labels.npy, int64, for each split (an empty one too).

    Returns {"files": [{"path", "split", "label", "bytes", "sha256"}], "arrays": {file name:
    sha256 of the file}, "mean", "std" (per channel, of the train split, in [0, 1])}; raises
    ImageFolderError naming every file that does not decode.
    """
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    sizes = {split: sum(file.split == split for file in files) for split in SPLITS}
    writers = {
        split: _ArrayWriter(into / f"{split}_images.npy", (sizes[split], 3, size, size))
        for split in SPLITS
    }
    sums, squares, pixels_seen = np.zeros(3), np.zeros(3), 0
    records, problems = [], []
    decoded = _parallel(
        partial(_decode_one, Path(root), size), [file.path for file in files], count, "decode", log
    )
    try:
        for file, result in zip(files, decoded, strict=True):
            if isinstance(result, str):
                problems.append(result)
                continue
            content_bytes, digest, pixels = result
            if not problems:  # after the first bad file, only look for the others
                writers[file.split].write(pixels)
            if file.split == "train":
                values = pixels.reshape(3, -1).astype(np.float64) / 255
                sums += values.sum(1)
                squares += (values**2).sum(1)
                pixels_seen += values.shape[1]
            records.append(
                {"path": file.path, "split": file.split, "label": file.label,
                 "bytes": content_bytes, "sha256": digest}
            )  # fmt: skip
    finally:
        arrays = {f"{split}_images.npy": writer.close() for split, writer in writers.items()}
    _raise_named(problems)
    for split in SPLITS:
        labels = np.array([file.label for file in files if file.split == split], dtype=np.int64)
        np.save(into / f"{split}_labels.npy", labels)
        arrays[f"{split}_labels.npy"] = sha256_of(into / f"{split}_labels.npy")
    mean = sums / max(pixels_seen, 1)
    std = np.sqrt(np.maximum(squares / max(pixels_seen, 1) - mean**2, 1e-12))
    return {"files": records, "arrays": arrays, "mean": mean.tolist(), "std": std.tolist()}


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file's bytes, read in chunks (a cached array can be far larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
