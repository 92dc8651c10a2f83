"""The machine's data cache, one verified copy of each raw data set fetched once per machine, and
the way any verified copy is put in place.

The prepare_data stage fills its outputs from here, and the tests read the same copies
(tests/conftest.py), so a machine fetches each data set once, whatever runs first.

    $QUANTPIPE_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/quantpipe)/data/NAME/

A task names its data set and gives its sources and its verification (e.g.
quantpipe.tasks.cifar10.sources); `cached` tries, in order, until one verifies:

1. the cache's own copy;
2. `$QUANTPIPE_DATA/NAME`, when QUANTPIPE_DATA names a folder of local copies (a site-wide copy);
3. the config's explicit copy;
4. the task's other sources (downloads, mirrors).

Each source fills a temporary folder beside the target, which is verified and then renamed into
place in one step (`fill`), so a killed job never leaves a half-written data set. An exclusive
lock (fcntl.flock on `data/.NAME.lock`) lets one process fill a data set while the others
(pytest-xdist workers, parallel Snakemake jobs) wait, then find it in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quantpipe.artifacts import replace_directory

CACHE_ENV = "QUANTPIPE_CACHE"
DATA_ENV = "QUANTPIPE_DATA"

# One source: (kind, location, fill). fill(staged, work) writes the data set into the new folder
# `staged`; `work` is a scratch folder (downloads, unpacked archives), removed afterwards.
Source = tuple[str, str, Callable[[Path, Path], None]]
# The error to raise when no source verifies, from the target and the list of sources tried.
Failure = Callable[[Path, str], Exception]


def log(message: str) -> None:
    print(f"[datacache] {message}", flush=True)


def cache_root() -> Path:
    """$QUANTPIPE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/quantpipe."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "quantpipe"


def local_copies(name: str, explicit: str | os.PathLike) -> list[str]:
    """The local copies of data set `name` to try, in order: $QUANTPIPE_DATA/NAME, then the
    config's copy `explicit` (when set)."""
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


def cached(
    name: str,
    copy: str | os.PathLike,
    sources: Callable[[list[str]], list[Source]],
    verify: Callable[[Path], Any],
    failure: Failure,
    log: Callable[[str], None] = log,
) -> dict:
    """The cache's verified copy of data set `name`, filled first if needed.

    `sources(copies)` gives the sources to try, the local copies (`local_copies(name, copy)`)
    first. Returns `path`, `source` ("existing" when it was already there), `location`,
    `failed_sources` and `seconds`; raises `failure(...)` if no source verifies.
    """
    target = cache_root() / "data" / name
    with _locked(target, log):
        record = fill(target, sources(local_copies(name, copy)), verify, failure, log)
    keys = ("source", "location", "failed_sources", "seconds")
    return {"path": str(target), **{key: record[key] for key in keys}}


def fill(
    target: Path,
    sources: list[Source],
    verify: Callable[[Path], Any],
    failure: Failure,
    log: Callable[[str], None] = log,
) -> dict:
    """Put a verified copy at `target`: keep the one there if `verify` passes, else try `sources`
    in order, each staged beside `target`, verified, then renamed onto it.

    `verify(folder)` raises for data that is not right. Returns `source` ("existing" when the
    copy in place verified), `location`, `verified` (what verify returned for it),
    `failed_sources` (each source that failed, with its error) and `seconds`; raises
    `failure(target, tried)` if no source verifies.
    """
    started = time.monotonic()
    target = Path(target)
    attempts: list[dict] = []

    def record(source: str, location: str, verified) -> dict:
        return {
            "source": source,
            "location": location,
            "verified": verified,
            "failed_sources": attempts,
            "seconds": round(time.monotonic() - started, 3),
        }

    target.parent.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(target.parent.glob(f".{target.name}.*.tmp"))
    if leftovers:
        log(
            f"note: {len(leftovers)} leftover temporary dir(s) from interrupted runs in "
            f"{target.parent} (safe to delete when no job is running): {leftovers[0].name} ..."
        )
    if os.path.lexists(target):
        log(f"checking the existing copy at {target}")
        try:
            verified = verify(target)
        except Exception as error:
            log(f"the existing copy is not valid, rebuilding it: {str(error).splitlines()[0]}")
            attempts.append({"source": "existing", "error": str(error)})
        else:
            log(f"the existing copy at {target} verified; nothing to do")
            return record("existing", str(target), verified)

    for source, location, fill_source in sources:
        attempt = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.{source}-", suffix=".tmp", dir=target.parent)
        )
        staged, work = attempt / target.name, attempt / "work"
        work.mkdir()
        log(f"trying source {source!r}: {location} (staging in {attempt})")
        source_started = time.monotonic()
        try:
            fill_source(staged, work)
            log(f"{source}: in place after {time.monotonic() - source_started:.1f} s; verifying")
            verified = verify(staged)
            replace_directory(staged, target)
        except Exception as error:  # try the next source; every failure is reported
            message = f"{type(error).__name__}: {error}"
            log(f"source {source!r} failed, trying the next one: {message.splitlines()[0]}")
            attempts.append({"source": source, "error": f"{location}: {message}"})
        else:
            log(f"{source}: verified; installed at {target} ({time.monotonic() - started:.1f} s)")
            return record(source, location, verified)
        finally:
            shutil.rmtree(attempt, ignore_errors=True)

    tried = "\n".join(f"  - {a['source']}: {a['error']}" for a in attempts) or "  (none enabled)"
    raise failure(target, tried)
