"""The local Slurm that workflow/scripts/local_slurm.sh starts: jobs run, accounting sees them,
fake GPUs are allocated, impossible requests are refused at submit time (not left pending), and a
second cluster cannot start on the ports of the first.

Start the cluster first (tests/run.sh does):
  bash workflow/scripts/local_slurm.sh start && eval "$(bash workflow/scripts/local_slurm.sh env)"
Each test takes about a second; none submits to a cluster other than ClusterName=quantpipe.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO
from slurmtools import run as _run
from slurmtools import wait_sacct as _wait_sacct
from workflowtools import processes_under

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
    script = "echo CVD=$CUDA_VISIBLE_DEVICES"
    job = _submit("-p", "gpu", gpu_opt, "-o", "out.txt", "--wrap", script, cwd=tmp_path)
    row = _wait_sacct(job, need=("AllocTRES",))
    assert row["State"] == "COMPLETED", row
    assert "gres/gpu=1" in row["AllocTRES"].split(","), row
    out = (tmp_path / "out.txt").read_text().strip()
    assert re.fullmatch(r"CVD=\d+", out), f"CUDA_VISIBLE_DEVICES not set to one device: {out!r}"


def test_unknown_partition_is_refused_at_submit(cluster, tmp_path):
    # Refused by sbatch itself: no job id, the reason on stderr (no clock: a shared machine).
    r = _sbatch("-p", "no_such_partition", "--wrap", "true", cwd=tmp_path)
    assert r.returncode != 0, f"accepted as job {r.stdout.strip()}"
    assert "invalid partition" in r.stderr.lower(), r.stderr
    assert not re.search(r"Submitted batch job \d+", r.stdout), r.stdout


@pytest.mark.parametrize("form", ["--gres=gpu:{n}", "--gpus-per-node={n}", "--gpus={n}"])
def test_too_many_gpus_is_refused_at_submit(cluster, tmp_path, form):
    opt = form.format(n=cluster["gpus"] + 1)
    r = _sbatch("-p", "gpu", opt, "--wrap", "true", cwd=tmp_path)
    if r.returncode == 0:  # would pend forever: clean up, then fail
        _run(["scancel", r.stdout.strip().split(";")[0]])
    assert r.returncode != 0, f"sbatch {opt} was accepted (it could never start)"
    assert "requested node configuration is not available" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize(
    "opt,reason",
    [("--cpus-per-task={cpus1}", "more processors requested than permitted"),
     ("--time=30-00:00:00", "requested time limit is invalid")],
)  # fmt: skip
def test_beyond_partition_limits_is_refused_at_submit(cluster, tmp_path, opt, reason):
    """EnforcePartLimits=ALL: without it these jobs pend forever (Reason=PartitionConfig)."""
    opt = opt.format(cpus1=cluster["cpus"] + 1)
    r = _run(["sbatch", "--parsable", "-p", "cpu", f"--chdir={tmp_path}", opt, "--wrap", "true"])
    if r.returncode == 0:
        _run(["scancel", r.stdout.strip().split(";")[0]])
    assert r.returncode != 0, f"sbatch {opt} was accepted (it could never start)"
    assert reason in r.stderr.lower(), r.stderr


@pytest.fixture
def second_state():
    """A state directory for a second cluster; tmp_path will not do: its parents are closed to the
    munge and mysql users."""
    if os.geteuid() != 0:
        pytest.skip("local_slurm.sh start runs as root")
    state = Path(tempfile.mkdtemp(prefix="quantpipe-second-slurm-"))
    state.chmod(0o755)
    yield state
    if not processes_under(state):  # else keep it for whoever looks into what runs there
        shutil.rmtree(state, ignore_errors=True)


def test_a_second_cluster_on_the_same_ports_is_refused_before_it_starts(cluster, second_state):
    """A start whose ports are taken names the port, its holder and the fix, and starts nothing."""
    config = _run(["scontrol", "show", "config"]).stdout
    ports = {key: re.search(rf"^{key}\s*=\s*(\d+)", config, re.M).group(1)
             for key in ("AccountingStoragePort", "SlurmctldPort", "SlurmdPort")}  # fmt: skip
    env = {**os.environ, "QUANTPIPE_SLURM_DIR": str(second_state),
           "QUANTPIPE_SLURM_DBD_PORT": ports["AccountingStoragePort"],
           "QUANTPIPE_SLURM_CTLD_PORT": ports["SlurmctldPort"],
           "QUANTPIPE_SLURM_SLURMD_PORT": ports["SlurmdPort"]}  # fmt: skip
    script = REPO / "workflow" / "scripts" / "local_slurm.sh"
    done = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    running = Path(os.environ["SLURM_CONF"]).parents[1]  # <state dir>/etc/slurm.conf
    said = " ".join(done.stderr.split())
    port = ports["AccountingStoragePort"]
    assert f"TCP port {port}, which slurmdbd needs, is already in use by slurmdbd (pid " in said
    assert f"the local Slurm of {running}" in said and f"QUANTPIPE_SLURM_DIR={running}" in said
    assert "QUANTPIPE_SLURM_DBD_PORT=<free port>" in said
    assert not processes_under(second_state), "a daemon of the refused cluster was started"


def free_ports(count: int) -> list[str]:
    """Ports nothing listens on now (the kernel's choice of ephemeral ports)."""
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [str(each.getsockname()[1]) for each in sockets]
    for each in sockets:
        each.close()
    return ports


def test_a_second_cluster_on_its_own_ports_runs_and_its_stop_leaves_nothing(
    cluster, tmp_path, second_state
):
    """Beside the first, on ports of its own: it starts, `env` names its configuration, it runs a
    job that ignores SIGTERM, and `stop` ends every process it started, the job's too, without
    touching the machine's Slurm, munge or MariaDB paths."""
    state = second_state
    ctld, slurmd, dbd = free_ports(3)
    env = {**os.environ, "QUANTPIPE_SLURM_DIR": str(state), "QUANTPIPE_SLURM_CTLD_PORT": ctld,
           "QUANTPIPE_SLURM_SLURMD_PORT": slurmd, "QUANTPIPE_SLURM_DBD_PORT": dbd}  # fmt: skip
    script = str(REPO / "workflow" / "scripts" / "local_slurm.sh")
    machine = [Path(p) for p in ("/etc/slurm", "/etc/munge", "/run/munge", "/run/mysqld")]

    def snapshot() -> dict:
        return {path: path.exists() and path.stat().st_mtime_ns for path in machine}

    def local_slurm(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script, command], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    before = snapshot()
    try:
        started = local_slurm("start")
        assert started.returncode == 0, started.stdout + started.stderr
        conf = state / "etc" / "slurm.conf"
        assert local_slurm("env").stdout == f"export SLURM_CONF={conf}\n"
        client = {**os.environ, "SLURM_CONF": str(conf)}
        # It says when it ignores SIGTERM: a scancel that lands while Python is still starting
        # kills it, and `stop` would then find nothing left to kill.
        stubborn = (
            "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            'pathlib.Path("ignoring").touch(); time.sleep(300)'
        )
        job = subprocess.run(
            ["sbatch", "--parsable", "-o", "/dev/null", f"--chdir={tmp_path}",
             "--wrap", f"{sys.executable} -c '{stubborn}' {state}"],
            env=client, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
        deadline = time.monotonic() + 60
        while not (tmp_path / "ignoring").exists() or not any(
            sys.executable in line and "SIG_IGN" in line for line in processes_under(state)
        ):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
    finally:
        stopped = local_slurm("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "killing what the jobs left running" in stopped.stdout  # the job outlived scancel
    running = processes_under(state)
    assert not running, f"stop left processes of the second cluster running: {running}"
    assert snapshot() == before


@pytest.mark.parametrize("home_mode", [0o750, 0o755])
def test_the_state_goes_where_the_daemons_users_can_reach_it(home_mode):
    """A checkout under a home folder others cannot enter (mode 750, Ubuntu's default): munge and
    mysql could not reach its .slurm, so the state goes to a place of its own under /var/tmp;
    under an open home it stays in the checkout. (`env` only prints: nothing is created.)"""
    with tempfile.TemporaryDirectory() as top:  # /tmp: open to all, unlike pytest's tmp_path
        home = Path(top) / "home"
        script = home / "checkout" / "workflow" / "scripts" / "local_slurm.sh"
        script.parent.mkdir(parents=True)
        shutil.copy(REPO / "workflow" / "scripts" / "local_slurm.sh", script)
        for folder in script.parents:
            if folder.is_relative_to(top):
                folder.chmod(0o755)
        home.chmod(home_mode)
        env = {k: v for k, v in os.environ.items() if k != "QUANTPIPE_SLURM_DIR"}
        done = subprocess.run(["bash", str(script), "env"], capture_output=True, text=True,
                              env=env, check=True)  # fmt: skip
        conf = done.stdout.strip().removeprefix("export SLURM_CONF=")
        if home_mode == 0o750:
            assert re.fullmatch(r"/var/tmp/quantpipe-slurm-\d+/etc/slurm\.conf", conf), conf
        else:
            assert conf == str(home / "checkout" / ".slurm" / "etc" / "slurm.conf")
