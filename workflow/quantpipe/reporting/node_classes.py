"""Node classes: the kinds of node the CPU benchmarks sweep (config `node_classes`, mapped to
partitions and constraints by the profile). A comparison stays inside one class; only the GPU
rows, measured once on the GPU partition, need a CPU class to compare with."""

from collections.abc import Sequence

# The class of the GPU benchmark rows: they run once, on the GPU partition, whatever CPU classes
# the config sweeps, so no CPU class may take the name.
GPU_CLASS = "gpu"


def baseline_class(node_class: str, node_classes: Sequence[str]) -> str:
    """The class whose FP32 CPU eager a row of `node_class` compares with: its own; for a GPU
    row, the first of the config's `node_classes`."""
    return node_classes[0] if node_class == GPU_CLASS else node_class
