"""What every artifact records about where and how it was made."""

import datetime
import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "torchao", "numpy", "pandas", "submitit", "snakemake")
SLURM_VARIABLES = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_partition": "SLURM_JOB_PARTITION",
    "slurm_node": "SLURMD_NODENAME",
    "slurm_cpus_per_task": "SLURM_CPUS_PER_TASK",
}


# A local array task's share of this machine's CPUs (quantpipe.submit.executor.local_shares).
LOCAL_SHARE = "QUANTPIPE_LOCAL_CPUS"


def cpus_available() -> int:
    """CPUs this job may use: Slurm's grant where there is one, else a local array task's share,
    else the process's affinity mask."""
    granted = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get(LOCAL_SHARE)
    return int(granted) if granted else len(os.sched_getaffinity(0))


def set_threads() -> int:
    threads = cpus_available()
    torch.set_num_threads(threads)
    return threads


@functools.cache
def cpu_model() -> dict:
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    int8_flags = sorted(f for f in flags if "vnni" in f or f.startswith("amx"))
    return {"cpu_model": model, "cpu_int8_flags": " ".join(int8_flags) or "none"}


@functools.cache
def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def collect() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "git_commit": git_commit(),
        "versions": versions(),
        **cpu_model(),
        "threads": torch.get_num_threads(),
        "cpus_available": cpus_available(),
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **{key: os.environ.get(variable) for key, variable in SLURM_VARIABLES.items()},
    }
