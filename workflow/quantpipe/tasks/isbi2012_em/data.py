"""The ISBI 2012 EM stack as one verified Zarr volume, split by slice.

Source: `image/N.png` and `label/N.png`, N = 0..29 (the zhixuhao/unet repository's copy of the
challenge's training stack, data/membrane/train/; quantpipe.tasks.isbi2012_em.sources fetches
it): 512x512 8-bit ssTEM slices, labels 255 inside cells and 0 on membranes. Every PNG is
decoded and checked against the SHA-256 of its pixels (the 512x512 uint8 array's bytes in C
order, so any lossless re-encoding of the same pixels passes) before anything is written.

Destination: a Zarr v3 group with `image` (30, 512, 512) uint8 and `membrane` (30, 512, 512) uint8,
1 on membranes (label 0) and 0 inside cells, one chunk per slice, axes (z, y, x). It is built in a
temporary directory beside the destination and renamed into place, so a killed job never leaves a
half-written volume. The group's attributes hold the same record `prepare` returns.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from quantpipe.artifacts import replace_directory

SLICES = 30
KINDS = ("image", "label")  # the stack's two folders, each holding N.png for N = 0..SLICES-1
SLICE_SHAPE = (512, 512)
SPLITS = {"train": (0, 20), "val": (20, 25), "test": (25, 30)}
VOXEL_SIZE_NM = {"z": 50, "y": 4, "x": 4}  # ~4x4 nm pixels, 50 nm sections (the data's README)
FIX = (
    "Restore the ISBI 2012 stack from its source (the zhixuhao/unet repository, "
    "data/membrane/train/, which prepare_data downloads from data.isbi2012_url) and rerun."
)

# SHA-256 of each decoded slice (512x512 uint8, C order), index = slice number.
IMAGE_SHA256 = (
    "e235f967447919aab272b85e9ab400b726ba7fdd91cca9f649224c7023d4149d",
    "d555e1494bd1dd95c08363997c4f4f7181a0e3ce749dcc53d167ed94cae60679",
    "a7df6a4d2eb47d18bfb8a42a79b1c093d6f51903016f0db5e5dc648133b1a12f",
    "c2ab6a6142011f90e593a4f9ccc3d22e8ba258a4c3d0e05d90320f8afc92e3de",
    "a14e585a72c74f03c59de80d75f989f73405e09fa0ed728354e62817fef351f5",
    "bda1e6c8b13abe294cd6aaa7d44f27d7de17cb1fc60deeeb6f30978209d89f74",
    "348c5f717ce8fd07c3448cfb9bf1d0ab2e94822112d6b7adb71b7390232c467e",
    "6cc44fac7b7c8abf92f3ed1e5a8318667fea3c1509976eb4c8124d60b6e8c1b6",
    "60a539e9ae5441436a89496fec924c0e8423c70de849f705bb080d61f2d44449",
    "2813dcf790b5abe136a5dd1b00c1e1391ec93e725143ca9757a860c5dceacc28",
    "5f488f7e11cad210f32f6e81496aa0d23b1cefac43d26cd6c6def477e083cc9d",
    "d8296c04f02230b9f0281a0758fa17e96259ac15a0cbf7a72e37ed7e9cfe42d6",
    "45150651d46b8d903aa74b11ae7b857cf54079c8125110f00412575a701f3312",
    "3f6d7332c8a4d4180999109ddbf9ef7d71f9e930bc5d27febbe9219133172cac",
    "64c72b75e35eaa267ca87a3f28bce0e90f21b7ecfab48cac42cf05b25204cd46",
    "697e6542ab58fd52f07f89e83792d1a1fe70ffb9a9a63cdbd75bd9b093106ffb",
    "a9cc355ddeb20144e03ceef6db4488e1305f4495a9ce98f1d097354ffa0408c4",
    "2ef981d0324442d944647344de8798fad37aef1d7a9661e51473debf2c0284e3",
    "ba8939696a7e31e1aad96229ed39094cebacdd3150480244d713257645cbc220",
    "02c701220f4599e36ae91498a65ea2704cbebe13d418b9bbeff43e7ba3f6bead",
    "9b6b0273e27f3f8e34b62f6d0e3f167c2bbbd4a922577af838c3429a1e2e1c9b",
    "4501aed07c1ba965b06e6de71e853b157c4d0db34a1f926c0bc3255e469814fd",
    "6a9a6d35c413030658dc2d43525be43b54ac330111f2e5cb62de4b51f7415b7f",
    "bdcb92f8f6417e942a2b6f1a4d6cc4d3f3ea07658d21da75c45adee4a473321a",
    "67544e02f4f69c40eb0987988a81e5218d3765a3045e80b28f0bc499d3cb650f",
    "ef3513913f07049ae6f927072153f57802ca899a395acf96388b9c32e32709a9",
    "78457f8c8c220af0710e08eca3da80d7e7035db5d4c5f08a81e82921b45d6fc3",
    "0da76c31bf7216a12c6c3136e1d107c920123ea5541ce6881b73804b83634753",
    "e4fc52d63bf1f11ecc6ef21a0ce1f18fc92144b84024d1f5e00634303154f44b",
    "0ca1dce6222eae36956b6dc27a3fa3217fd703d22ea37bdcca31357a284e17c1",
)
LABEL_SHA256 = (
    "8de677a890c9bfc08f5bee70f8b0bcb4cbd7392bcd0aaa06443322eca2a3aa60",
    "877f0209e3842b0bf751ea14c8d3cdf3d21c0b99396193b340137ed4da8b2686",
    "bc751dd39651b82424fc3fb1fcf0b36db28046a4a9be72173884c6ec206ff412",
    "51f76825393bc0ca6255ba9a9536315a8919bd6ff04e29e3dd1023feb218b174",
    "8b478b5e19677c8f7e1abb40231b8dd34acd1823bf59d5427d651c3deafb4852",
    "db188c1d67e48c0c5de1e51c994ed0ac3def81a37a2b7b03db023f0f2ac65c8a",
    "cf1286315b0be9b33721280deebdff5e4c90bbf31fda7f0c7bdc228a641623c3",
    "4042734499c8319f0398cdb8b45b7e1d831409cfe0aef34cc340dbb30258844a",
    "f69c3a7908ad53f8ab832be8f120554251cba92cd6000d5ca61b5106bab3fc2d",
    "9ad99838377cd812a6a609934ab164bef2438c2020b5f4d4b203a159b0621435",
    "7121c3b41ed6dc08385d37f55d436a00831f62e4ae1a5617d7f905ae22bef3dc",
    "96db15851cc345758c2ca5ab687058b5554e34f98d38000063dbec71027d7f7a",
    "b10f1ed85f8e6edf37580e11c39125322b9f4f90909465766bc29c842d235117",
    "3819e3064010a70f07eb867baa299589849c33b7b944bff1621ad010ffe7815c",
    "8d0a3fd02f4989b19e74c408851d0f7b7aaed71214c5b6bb4d8162872037ad0e",
    "2e9e28c2282eb31bf871da5841d12b0e1206e7e2470ae41c22814af4fe7d7d01",
    "1c3f220c260a05b6256fb815d6042577813e9f825596a29b20968c2ce6962582",
    "964752eb393e06c6a91d42f9ccce6d3daf4773733874f5dca5b2a6c4fe3be8c3",
    "be888bac7a89d6a8a014bb591ad786ba53e93d411f02b09a16a130a6a9203744",
    "3b5e7f90540e480959970a567c2256d927918dadad9d362d474408bc423c0f8e",
    "92bebd22d1a16d764a4bfb1d40ed121b00d772794b56e9db50be3ad4c29fad54",
    "1a89eb7dd608a29b68ec21135d680ebb7fb8bc4e4e4e9f4a28afabda55e3b67e",
    "86454777e88d34c0a732f703435e075b40018c45ea58bd9db0fe1fe92f083b71",
    "7c8a4a0ef281dc197ff75d85cbb50feedc738f812e1ece84b1c726e0c9baf593",
    "44302d1ced5f01be60f42ffb76a514db7ebb1b0c85d1eec980dab91999fc530f",
    "aa1f7f9ec43a7da722b048ee496b63dfb60db5ec6e0df5da5a9e163218d8d060",
    "ad3d7c259ac0976de0882b96fedb2e2b4fa4466d8ebc2962da5f0618e04a2a40",
    "658d0bb60cfbd7c85ffcbc964aaed1d2239f89dd4a7d49535a396f028c3bc931",
    "df063c9f830cbb1582c859b60dba51139a3b47c52483b2630efd0100708746e3",
    "4e876c4cf877d9ece4c00d0881b29ab8c07403ad784af13353ebaaea954aac1a",
)


class DataError(ValueError):
    """The source stack is missing, altered or not what this module expects."""


def pixel_sha256(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def read_slice(
    path: str | os.PathLike, kind: str, index: int, name: str | None = None, fix: str = FIX
) -> np.ndarray:
    """Slice `index` of `kind` ("image" or "label") read from `path` and checked against its
    pinned pixel hash; DataError naming `name` (default: `path`, e.g. the URL it came from) and
    saying `fix` otherwise."""
    name = str(path) if name is None else name
    expected = {"image": IMAGE_SHA256, "label": LABEL_SHA256}[kind][index]
    try:
        with Image.open(path) as png:
            pixels = np.asarray(png)
    except OSError as error:
        raise DataError(f"{name} cannot be read as a PNG ({error}). {fix}") from None
    if pixels.shape != SLICE_SHAPE or pixels.dtype != np.uint8:
        raise DataError(
            f"{name} holds {pixels.dtype} pixels of shape {pixels.shape}, expected uint8 of shape "
            f"{SLICE_SHAPE}. {fix}"
        )
    actual = pixel_sha256(pixels)
    if actual != expected:
        raise DataError(
            f"{name}: its pixels have SHA-256 {actual}, expected {expected}: the file "
            f"was altered or is from another stack. {fix}"
        )
    return pixels


def read_stack(source: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) as (30, 512, 512) uint8 arrays, every slice verified; DataError otherwise."""
    root = Path(source)
    missing = [
        f"{kind}/{n}.png"
        for kind in KINDS
        for n in range(SLICES)
        if not (root / kind / f"{n}.png").is_file()
    ]
    if missing:
        raise DataError(
            f"{root} lacks {len(missing)} of the {2 * SLICES} PNG files: "
            f"{', '.join(missing)}. {FIX}"
        )
    stacks = {
        kind: np.stack([read_slice(root / kind / f"{n}.png", kind, n) for n in range(SLICES)])
        for kind in KINDS
    }
    # The hashes pin the values too; this says what is wrong if someone updates the hashes alone.
    values = set(np.unique(stacks["label"]).tolist())
    if values != {0, 255}:
        raise DataError(f"{root}/label holds values {sorted(values)}, expected only 0 and 255")
    return stacks["image"], stacks["label"]


def prepare(source: str, destination: str, log=print) -> dict:
    """Verify the stack at `source` and write it to `destination` as a Zarr v3 group.

    Returns (and stores as the group's attributes) a JSON-able record: source, destination, shape,
    voxel size, splits, membrane fraction per split and the pinned SHA-256 of every slice.
    """
    started = time.monotonic()
    log(f"verifying {2 * SLICES} PNG slices in {source}")
    image, label = read_stack(source)
    membrane = (label == 0).astype(np.uint8)
    record = {
        "source": str(Path(source).resolve()),
        "destination": str(Path(destination).resolve()),
        "shape": list(image.shape),
        "axes": "zyx",
        "voxel_size_nm": VOXEL_SIZE_NM,
        "splits": {name: list(bounds) for name, bounds in SPLITS.items()},
        "membrane_fraction": {
            name: round(float(membrane[start:stop].mean()), 6)
            for name, (start, stop) in SPLITS.items()
        },
        "sha256": {"image": list(IMAGE_SHA256), "label": list(LABEL_SHA256)},
    }
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        group = zarr.open_group(staging, mode="w", zarr_format=3, attributes=record)
        for name, volume in (("image", image), ("membrane", membrane)):
            array = group.create_array(
                name, shape=volume.shape, dtype=np.uint8, chunks=(1, *SLICE_SHAPE)
            )
            array.attrs["axes"] = "zyx"
            array[:] = volume
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; results are meant to be shared
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {target} {image.shape} in {time.monotonic() - started:.1f} s")
    return {**record, "seconds": round(time.monotonic() - started, 3)}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _arrays(data_dir: str) -> tuple[zarr.Array, zarr.Array]:
    """The volume's image and membrane arrays (read lazily), or an error that names the fix."""
    try:
        group = zarr.open_group(data_dir, mode="r")
        return group["image"], group["membrane"]
    except (FileNotFoundError, KeyError) as error:
        raise DataError(
            f"{data_dir} is not an EM volume written by "
            f"quantpipe.tasks.isbi2012_em.data.prepare ({error!r}). "
            "Run prepare(source, destination) first."
        ) from None


def load_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(image, membrane) of one split, each uint8 (Z, Y, X); membrane is 1 on membranes."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    start, stop = SPLITS[split]
    image, membrane = _arrays(data_dir)
    return image[start:stop], membrane[start:stop]


def load_stack(data_dir: str) -> np.ndarray:
    """The image of every section, uint8 (Z, Y, X): the whole stack, for timing (its content
    does not change the speed, and more blocks than the test split's measure the path as a
    long volume runs it)."""
    image, _ = _arrays(data_dir)
    return image[:]
