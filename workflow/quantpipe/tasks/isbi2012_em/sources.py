"""Where the ISBI 2012 stack (image/N.png and label/N.png, N = 0..29) comes from: the machine's
data cache (quantpipe.datacache), filled once from a local copy or the 60 PNGs downloaded one by
one, each checked against its pinned pixel hash (quantpipe.tasks.isbi2012_em.data)."""

from __future__ import annotations

import functools
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from quantpipe import datacache
from quantpipe.tasks.isbi2012_em.data import KINDS, SLICES, DataError, read_slice, read_stack

CACHE_NAME = "isbi2012-em"
# The public copy of the ISBI 2012 training stack (MIT licence): image/N.png and label/N.png.
ISBI2012_URL = "https://raw.githubusercontent.com/zhixuhao/unet/master/data/membrane/train"
DOWNLOAD_TIMEOUT_S = 30


def log(message: str) -> None:
    print(f"[isbi2012_em] {message}", flush=True)


def _copy_stack(source: Path, staged: Path, work: Path) -> None:
    if not source.is_dir():
        raise DataError(f"{source} is not a directory")
    for kind in KINDS:
        (staged / kind).mkdir(parents=True)
        for n in range(SLICES):
            shutil.copyfile(source / kind / f"{n}.png", staged / kind / f"{n}.png")


def _download_stack(url: str, staged: Path, work: Path) -> None:
    """Fetch the 60 PNGs, checking each against its pinned pixel hash as it arrives, so a bad file
    is named by its URL and nothing after it is fetched."""
    fix = (
        f"The server at {url} does not serve the ISBI 2012 training stack: point "
        "data.isbi2012_url at a faithful copy (default: the zhixuhao/unet repository's "
        "data/membrane/train)."
    )
    for kind in KINDS:
        (staged / kind).mkdir(parents=True)
        for n in range(SLICES):
            address = f"{url.rstrip('/')}/{kind}/{n}.png"
            path = staged / kind / f"{n}.png"
            try:
                with (
                    urllib.request.urlopen(address, timeout=DOWNLOAD_TIMEOUT_S) as response,
                    open(path, "wb") as out,
                ):
                    shutil.copyfileobj(response, out)
            except (urllib.error.URLError, OSError) as error:
                raise DataError(f"{address} could not be downloaded: {error}") from None
            read_slice(path, kind, n, name=address, fix=fix)


def sources(
    copies: list[str], url: str = ISBI2012_URL, allow_download: bool = True
) -> list[datacache.Source]:
    """The sources to try, in order: the `copies` (folders holding image/ and label/), then the
    PNGs under `url`."""
    found = [("copy", copy, functools.partial(_copy_stack, Path(copy))) for copy in copies]
    if allow_download:
        found.append(("download", url, functools.partial(_download_stack, url)))
    return found


def _failure(target: Path, tried: str) -> DataError:
    return DataError(
        f"could not put a verified ISBI 2012 stack at {target}. Sources tried:\n{tried}\n"
        f"Enable a source that works here: {datacache.DATA_ENV} (a folder holding {CACHE_NAME}/) "
        "or data.isbi2012_copy naming a good copy, or network access to data.isbi2012_url with "
        "data.allow_download."
    )


def cached(
    copy: str | os.PathLike = "",
    url: str = ISBI2012_URL,
    allow_download: bool = True,
    log=log,
) -> dict:
    """The machine cache's verified ISBI 2012 stack (image/N.png, label/N.png), filled first if
    needed (quantpipe.datacache.cached: `source` is "existing", "copy" or "download"); DataError
    if no source verifies."""
    return datacache.cached(
        CACHE_NAME,
        copy,
        functools.partial(sources, url=url, allow_download=allow_download),
        read_stack,
        _failure,
        log,
    )
