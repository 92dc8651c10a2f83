"""CIFAR-10's files in torchvision's `cifar-10-batches-py` layout: reading, verifying, writing.

Every batch is checked against the SHA-256 of its decoded content (pixels in C order, labels one
byte each; EXPECTED_SHA256), so any faithful copy passes whatever its pickle protocol. Pickles are
read with quantpipe.tasks.cifar10.pickles' restricted unpickler.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from quantpipe.artifacts import atomic_path
from quantpipe.tasks.cifar10.pickles import DataError, restricted_load

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

# Pickle protocol for batches we write. Protocols 2-4 encode an ndarray with exactly the globals the
# restricted unpickler admits (protocol 2 under Python 3 would add `_codecs.encode` for the bytes,
# protocol 5 uses `numpy._core.numeric._frombuffer`), and torchvision reads any of them.
WRITE_PROTOCOL = 4


def _fix_hint(root: str | os.PathLike) -> str:
    return (
        f"To fix: delete {root} and rerun (prepare_data rebuilds it), "
        "or point the config at a good copy (prepare_data's copy_from)."
    )


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
    import torch  # here, so that fetching and verifying (the CLI, the cache) never load torch

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


def official_batch_label(name: str) -> str:
    """The `batch_label` entry of batch `name` in the official files."""
    if name == TEST_BATCH:
        return "testing batch 1 of 1"
    return f"training batch {TRAIN_BATCHES.index(name) + 1} of {len(TRAIN_BATCHES)}"
