import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar-10-batches-py"


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    if not SHARED_CIFAR.exists():
        pytest.fail(f"CIFAR-10 copy not found at {SHARED_CIFAR} (tests use ../shared/data)")
    return SHARED_CIFAR


@pytest.fixture(autouse=True)
def _two_threads(monkeypatch):
    # Tests run stages in-process: keep them from assuming a Slurm grant from the environment.
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def cluster() -> dict[str, int]:
    """The local Slurm's node (CPUs, GPUs); skips (or fails under tests/run.sh) when it is down."""
    from slurmtools import require_cluster

    return require_cluster()
