"""Reading CIFAR-10's batch pickles, which are untrusted input, without running their code.

`RestrictedUnpickler` admits only the few numpy globals an array needs and refuses anything else,
so a crafted pickle cannot run code.
"""

from __future__ import annotations

import os
import pickle

import numpy as np


class DataError(ValueError):
    """CIFAR-10 files are missing, unreadable, refused or do not match the expected content."""


class ForbiddenGlobalError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (it would have run foreign code)."""


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
