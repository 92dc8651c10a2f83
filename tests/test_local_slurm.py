"""The local Slurm that workflow/scripts/local_slurm.sh starts: jobs run, accounting sees them,
fake GPUs are allocated, and impossible requests are refused at submit time (not left pending).

Start the cluster first:  workflow/scripts/local_slurm.sh start
Each test takes about a second; none submits to a cluster other than ClusterName=quantpipe.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from slurmtools import run as _run
from slurmtools import wait_sacct as _wait_sacct

pytestmark = pytest.mark.slurm


def _sbatch(*opts: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(["sbatch", "--parsable", "--time=1", f"--chdir={cwd}", *opts], timeout=15)


def _submit(*opts: str, cwd: Path) -> str:
    r = _sbatch(*opts, cwd=cwd)
    assert r.returncode == 0, f"sbatch {' '.join(opts)} failed: {r.stderr}"
    return r.stdout.strip().split(";")[0]


def test_cpu_job_completes_and_is_accounted(cluster, tmp_path):
    script = "echo ran on $SLURM_JOB_PARTITION"
    job = _submit("-p", "cpu", "-o", "out.txt", "--wrap", script, cwd=tmp_path)
    row = _wait_sacct(job)
    assert row["State"] == "COMPLETED", row
    assert row["ExitCode"] == "0:0", row
    assert (tmp_path / "out.txt").read_text().strip() == "ran on cpu"


@pytest.mark.parametrize("gpu_opt", ["--gres=gpu:1", "--gpus-per-node=1"])
def test_gpu_job_gets_a_fake_gpu(cluster, tmp_path, gpu_opt):
    if cluster["gpus"] < 1:
        pytest.skip("the node has no gres/gpu")
    script = "echo CVD=$CUDA_VISIBLE_DEVICES"
    job = _submit("-p", "gpu", gpu_opt, "-o", "out.txt", "--wrap", script, cwd=tmp_path)
    row = _wait_sacct(job, need=("AllocTRES",))
    assert row["State"] == "COMPLETED", row
    assert "gres/gpu=1" in row["AllocTRES"].split(","), row
    out = (tmp_path / "out.txt").read_text().strip()
    assert re.fullmatch(r"CVD=\d+", out), f"CUDA_VISIBLE_DEVICES not set to one device: {out!r}"


def test_unknown_partition_is_refused_at_submit(cluster, tmp_path):
    t0 = time.monotonic()
    r = _sbatch("-p", "no_such_partition", "--wrap", "true", cwd=tmp_path)
    assert r.returncode != 0, f"accepted as job {r.stdout.strip()}"
    assert "invalid partition" in r.stderr.lower(), r.stderr
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("form", ["--gres=gpu:{n}", "--gpus-per-node={n}", "--gpus={n}"])
def test_too_many_gpus_is_refused_at_submit(cluster, tmp_path, form):
    opt = form.format(n=cluster["gpus"] + 1)
    r = _sbatch("-p", "gpu", opt, "--wrap", "true", cwd=tmp_path)
    if r.returncode == 0:  # would pend forever: clean up, then fail
        _run(["scancel", r.stdout.strip().split(";")[0]])
    assert r.returncode != 0, f"sbatch {opt} was accepted (it could never start)"
    assert "requested node configuration is not available" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("opt", ["--cpus-per-task={cpus1}", "--time=30-00:00:00"])
def test_beyond_partition_limits_is_refused_at_submit(cluster, tmp_path, opt):
    """EnforcePartLimits=ALL: without it these jobs pend forever (Reason=PartitionConfig)."""
    opt = opt.format(cpus1=cluster["cpus"] + 1)
    r = _run(["sbatch", "--parsable", "-p", "cpu", f"--chdir={tmp_path}", opt, "--wrap", "true"])
    if r.returncode == 0:
        _run(["scancel", r.stdout.strip().split(";")[0]])
    assert r.returncode != 0, f"sbatch {opt} was accepted (it could never start)"
