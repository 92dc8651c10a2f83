import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


# The tests read the data where the pipeline does: the machine's verified cache (filled once, from
# $QUANTPIPE_DATA when set, else by download; quantpipe.datacache, each task's sources). The first
# worker to ask fills it; the others wait on its lock.
@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """CIFAR-10 in torchvision's cifar-10-batches-py layout."""
    from quantpipe.tasks.cifar10.sources import cached

    return Path(cached()["path"])


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The ISBI 2012 stack: image/N.png and label/N.png, N = 0..29."""
    from quantpipe.tasks.isbi2012_em.sources import cached

    return Path(cached()["path"])


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


# Tiers (tests/run.sh): `fast` deselects slurm, workflow, slow and gpu. Every test has a time limit
# (pytest-timeout; pyproject.toml sets the default), so a hung Snakemake or Slurm job fails the test
# in minutes; whole-DAG and Slurm tests get a longer one.
LONG_TIMEOUT_S = 1800


def cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


NO_GPU = "no usable CUDA device: torch.cuda.is_available() is False on this machine"


def pytest_itemcollected(item):
    # pytest-xdist workers take whole groups (marked here: its own collection hook reads them
    # before ours would run). One local Slurm: its tests (node DOWN, accounting stopped, ...) run
    # one at a time, on one worker. Every other module is one group, so that its module-scoped
    # fixtures (a whole DAG run, a trained model) are built once, not once per worker.
    slurm = item.get_closest_marker("slurm") is not None
    item.add_marker(pytest.mark.xdist_group("slurm" if slurm else item.module.__name__))


# The modules whose whole-DAG run takes longest (their module fixture's setup, in the full tier:
# tests/run.sh --durations), longest first.
LONGEST_MODULES = ("test_workflow", "test_em_workflow", "test_user_model_workflow",
                   "test_weights_workflow", "test_images_workflow")  # fmt: skip


def start_order(item) -> tuple[bool, int]:
    """Where `item`'s group starts: the Slurm group first, then the longest DAG modules."""
    name = item.module.__name__
    longest = LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)
    return item.get_closest_marker("slurm") is None, longest


def pytest_collection_modifyitems(config, items):
    # pytest-xdist hands out groups in this order (tests/run.sh turns off its own reordering by
    # group size, which started the two longest DAG modules last, together, past their time
    # limit): the longest groups start first, so that no worker is left with one at the end.
    items.sort(key=start_order)
    for item in items:
        slurm = item.get_closest_marker("slurm") is not None
        if item.get_closest_marker("gpu") is not None and not cuda_usable():
            # The other tiers skip the GPU tests, saying why; `bash tests/run.sh gpu` demands CUDA.
            if os.environ.get("QUANTPIPE_REQUIRE_GPU") == "1":
                raise pytest.UsageError(f"the GPU tier needs a GPU: {NO_GPU}")
            item.add_marker(pytest.mark.skip(reason=f"GPU tier: {NO_GPU}"))
        long = slurm or item.get_closest_marker("workflow") is not None
        if long and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S))


@pytest.fixture
def stub_benchmark(monkeypatch):
    """The benchmark stage on a given model without files: `stub(net, label, slower)` makes it
    load `net` and measure two implementations, `net` itself as "eager" and `slower` as `label`,
    outside Slurm."""
    from quantpipe.stages import benchmark

    def stub(net, label, slower):
        monkeypatch.delenv("SLURMD_NODENAME", raising=False)
        monkeypatch.setattr(benchmark, "load_trained", lambda path: (net, {}))

        def implementations(variant, model, artifact, method, example, budgeted=False):
            size = benchmark.state_dict_bytes(model)
            yield "eager", torch.device("cpu"), model, size
            yield label, torch.device("cpu"), slower, size

        monkeypatch.setattr(benchmark, "implementations", implementations)

    return stub
