"""A private Inductor cache for each job.

Inductor keeps compiled kernels in one folder per user (/tmp/torchinductor_$USER) and writes them
there without a lock. Two jobs on one node that compile the same graph at once can load each
other's half-written library ("invalid ELF header", seen in CI), and a job killed mid-compile
leaves a broken one behind that fails every later compile of that graph on the node. So each job
compiles into a folder of its own, removed at its end. A TORCHINDUCTOR_CACHE_DIR the user set is
left alone.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

VARIABLE = "TORCHINDUCTOR_CACHE_DIR"  # read by Inductor at each compile


@contextlib.contextmanager
def private() -> Iterator[str]:
    """Compile into a fresh folder (yielded) for the duration; the user's own setting wins."""
    if os.environ.get(VARIABLE):
        yield os.environ[VARIABLE]
        return
    folder = tempfile.mkdtemp(prefix="quantpipe-inductor-")
    os.environ[VARIABLE] = folder
    try:
        yield folder
    finally:
        os.environ.pop(VARIABLE, None)
        shutil.rmtree(folder, ignore_errors=True)
