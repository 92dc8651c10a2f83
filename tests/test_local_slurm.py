"""The local Slurm that workflow/scripts/local_slurm.sh starts: jobs run, accounting sees them,
fake GPUs are allocated, and impossible requests are refused at submit time (not left pending).

Start the cluster first:  workflow/scripts/local_slurm.sh start
Each test takes about a second; none submits to a cluster other than ClusterName=quantpipe.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

CLUSTER = "quantpipe"
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}
START_HINT = "start it with: workflow/scripts/local_slurm.sh start"


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster() -> dict[str, int]:
    """Skip unless the local quantpipe cluster answers; return its node's CPU and GPU counts."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"sinfo is not on PATH: no Slurm client installed ({START_HINT})")
    try:
        # ping first: it fails at once when slurmctld is down (sinfo retries for ~9 s)
        ping = _run(["scontrol", "ping"], timeout=15)
        if ping.returncode != 0:
            pytest.skip(f"the Slurm cluster is not up: {ping.stdout.strip()} ({START_HINT})")
        conf = _run(["scontrol", "show", "config"], timeout=15)
        info = _run(["sinfo", "-h", "-N", "-o", "%P|%t|%c|%G"], timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip(f"Slurm does not answer within 15 s ({START_HINT})")
    if conf.returncode != 0 or info.returncode != 0:
        err = (conf.stderr or info.stderr).strip().splitlines()
        pytest.skip(f"the Slurm cluster is not up: {err[-1] if err else '?'} ({START_HINT})")
    m = re.search(r"^ClusterName\s*=\s*(\S+)", conf.stdout, re.M)
    if not m or m.group(1) != CLUSTER:
        pytest.skip(f"sinfo talks to cluster {m and m.group(1)!r}, not the local {CLUSTER!r} one")
    rows = [line.split("|") for line in info.stdout.split()]
    parts = {p.rstrip("*"): (state, int(cpus), gres) for p, state, cpus, gres in rows}
    if not {"cpu", "gpu"} <= parts.keys():
        pytest.skip(f"partitions cpu and gpu missing (have {sorted(parts)}) ({START_HINT})")
    state, cpus, gres = parts["gpu"]
    if state.rstrip("*~#") not in {"idle", "mix", "alloc", "comp"} or state.endswith("*"):
        pytest.skip(f"the node is {state!r}, not usable ({START_HINT})")
    g = re.search(r"gpu(?::[^:(,]+)?:(\d+)", gres)
    return {"cpus": cpus, "gpus": int(g.group(1)) if g else 0}


def _sbatch(*opts: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(["sbatch", "--parsable", "--time=1", f"--chdir={cwd}", *opts], timeout=15)


def _submit(*opts: str, cwd: Path) -> str:
    r = _sbatch(*opts, cwd=cwd)
    assert r.returncode == 0, f"sbatch {' '.join(opts)} failed: {r.stderr}"
    return r.stdout.strip().split(";")[0]


def _wait_sacct(job: str, need: tuple[str, ...] = (), timeout: float = 30) -> dict[str, str]:
    """Poll sacct until the job's allocation reaches a terminal state and the fields in `need`
    are filled in; return its fields. (Right after a fast job ends, sacct can already say
    COMPLETED while Partition is still empty for a few seconds.)"""
    fields = ["State", "ExitCode", "Partition", "AllocTRES"]
    deadline = time.monotonic() + timeout
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        r = _run(["sacct", "-n", "-X", "-P", "-j", job, "-o", ",".join(fields)], timeout=15)
        assert r.returncode == 0, f"sacct failed: {r.stderr}"
        lines = r.stdout.strip().splitlines()
        if lines:
            row = dict(zip(fields, lines[0].split("|"), strict=True))
            if row["State"].split()[0] in TERMINAL and all(row[f] for f in need):
                return row
        time.sleep(0.2)
    queue = _run(["squeue", "-j", job, "-o", "%i %P %T %r"]).stdout
    _run(["scancel", job])
    pytest.fail(f"job {job} not finished after {timeout} s; sacct: {row}; squeue:\n{queue}")


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
