"""Atomic outputs: a job killed mid-write never leaves a file that looks complete."""

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _out_of_space(error: Exception) -> bool:
    if isinstance(error, OSError):
        return error.errno in OUT_OF_SPACE
    return any(os.strerror(code) in str(error) for code in OUT_OF_SPACE)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch.save wraps write errors in RuntimeError
        if not _out_of_space(error):
            raise
        raise OSError(
            errno.ENOSPC,
            f"could not write {path}: the file system refused more data ({error}). Free space "
            f"in {path.parent} (or raise the quota) and rerun; no partial file was left",
        ) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


class ArtifactError(ValueError):
    """A file that should be one of ours is truncated, corrupt or something else entirely."""


def load_torch(path: str | os.PathLike, keys: tuple[str, ...], fix: str, **kwargs) -> dict:
    """torch.load with weights_only=True (no code runs), turning any failure into a clear error."""
    import torch

    try:
        loaded = torch.load(path, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist. {fix}") from None
    except Exception as error:  # torch raises many kinds for truncated or foreign files
        raise ArtifactError(
            f"{path} cannot be loaded as a checkpoint (truncated, corrupt or not a safe tensor "
            f"file: {type(error).__name__}: {str(error)[:200]}). {fix}"
        ) from None
    missing = [key for key in keys if not isinstance(loaded, dict) or key not in loaded]
    if missing:
        raise ArtifactError(
            f"{path} is not a quantpipe checkpoint (no {', '.join(missing)}). {fix}"
        )
    return loaded


def replace_directory(staged: Path, destination: Path) -> None:
    """Rename the finished folder `staged` onto `destination` in one step, setting aside (then
    deleting) whatever is there, so that `destination` is never half-written."""
    if not os.path.lexists(destination):
        os.rename(staged, destination)
        return
    aside = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.old-", suffix=".tmp", dir=destination.parent)
    )
    os.replace(destination, aside / destination.name)
    os.rename(staged, destination)
    shutil.rmtree(aside, ignore_errors=True)
