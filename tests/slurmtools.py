"""Shared by the tests that use the local Slurm (workflow/scripts/local_slurm.sh)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest


def unavailable(reason: str) -> None:
    """Skip, unless the test command demands Slurm (tests/run.sh does): then fail loudly."""
    if os.environ.get("QUANTPIPE_REQUIRE_SLURM") == "1":
        pytest.fail(f"the local Slurm is required but unavailable: {reason}")
    pytest.skip(reason)


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
START_HINT = (
    "start it with `bash workflow/scripts/local_slurm.sh start` and point the tests at it with "
    '`eval "$(bash workflow/scripts/local_slurm.sh env)"` (tests/run.sh does both)'
)


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def message_timeout_s() -> int:
    """slurm.conf's MessageTimeout: how long a client (squeue, sbatch) goes on trying to reach
    slurmctld before it fails with "Unable to contact slurm controller"."""
    shown = run(["scontrol", "show", "config"]).stdout
    found = re.search(r"^MessageTimeout\s*=\s*(\d+)", shown, re.MULTILINE)
    assert found, f"scontrol show config gives no MessageTimeout:\n{shown[:2000]}"
    return int(found[1])


def local_slurm(command: str) -> None:
    """Run `workflow/scripts/local_slurm.sh COMMAND` on the cluster that SLURM_CONF names."""
    state = Path(os.environ["SLURM_CONF"]).parents[1]  # <state dir>/etc/slurm.conf
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "local_slurm.sh"
    env = {**os.environ, "QUANTPIPE_SLURM_DIR": str(state)}
    done = subprocess.run(["bash", str(script), command], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, f"local_slurm.sh {command} failed:\n{done.stdout}{done.stderr}"


def require_cluster() -> dict[str, int]:
    """Skip unless the local quantpipe cluster answers; return its node's CPU and GPU counts."""
    # Only through SLURM_CONF: without it the clients would read the machine's own /etc/slurm.
    if not os.environ.get("SLURM_CONF"):
        unavailable(f"SLURM_CONF is not set ({START_HINT})")
    if shutil.which("sinfo") is None:
        unavailable(f"sinfo is not on PATH: no Slurm client installed ({START_HINT})")
    try:
        # ping first: it fails at once when slurmctld is down (sinfo retries for ~9 s)
        ping = run(["scontrol", "ping"], timeout=15)
        if ping.returncode != 0:
            unavailable(f"the Slurm cluster is not up: {ping.stdout.strip()} ({START_HINT})")
        conf = run(["scontrol", "show", "config"], timeout=15)
        info = run(["sinfo", "-h", "-N", "-o", "%P|%t|%c|%G"], timeout=15)
    except subprocess.TimeoutExpired:
        unavailable(f"Slurm does not answer within 15 s ({START_HINT})")
    if conf.returncode != 0 or info.returncode != 0:
        err = (conf.stderr or info.stderr).strip().splitlines()
        unavailable(f"the Slurm cluster is not up: {err[-1] if err else '?'} ({START_HINT})")
    m = re.search(r"^ClusterName\s*=\s*(\S+)", conf.stdout, re.M)
    if not m or m.group(1) != CLUSTER:
        unavailable(f"sinfo talks to cluster {m and m.group(1)!r}, not the local {CLUSTER!r} one")
    rows = [line.split("|") for line in info.stdout.split()]
    parts = {p.rstrip("*"): (state, int(cpus), gres) for p, state, cpus, gres in rows}
    if not {"cpu", "gpu"} <= parts.keys():
        unavailable(f"partitions cpu and gpu missing (have {sorted(parts)}) ({START_HINT})")
    state, cpus, gres = parts["gpu"]
    if state.rstrip("*~#") not in {"idle", "mix", "alloc", "comp"} or state.endswith("*"):
        unavailable(f"the node is {state!r}, not usable ({START_HINT})")
    g = re.search(r"gpu(?::[^:(,]+)?:(\d+)", gres)
    if not g or int(g.group(1)) < 1:  # the Slurm profile sends training to a GPU node
        unavailable(
            f"the node has no fake GPU (gres {gres!r}; QUANTPIPE_SLURM_GPUS=0?) ({START_HINT})"
        )
    return {"cpus": cpus, "gpus": int(g.group(1))}


def wait_sacct(job: str, need: tuple[str, ...] = (), timeout: float = 30) -> dict[str, str]:
    """Poll sacct until the job's allocation reaches a terminal state and the fields in `need`
    are filled in; return its fields. (Right after a fast job ends, sacct can already say
    COMPLETED while Partition is still empty for a few seconds.)"""
    fields = ["State", "ExitCode", "Partition", "AllocTRES"]
    deadline = time.monotonic() + timeout
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        r = run(["sacct", "-n", "-X", "-P", "-j", job, "-o", ",".join(fields)], timeout=15)
        assert r.returncode == 0, f"sacct failed: {r.stderr}"
        lines = r.stdout.strip().splitlines()
        if lines:
            row = dict(zip(fields, lines[0].split("|"), strict=True))
            if row["State"].split()[0] in TERMINAL and all(row[f] for f in need):
                return row
        time.sleep(0.2)
    queue = run(["squeue", "-j", job, "-o", "%i %P %T %r"]).stdout
    run(["scancel", job])
    pytest.fail(f"job {job} not finished after {timeout} s; sacct: {row}; squeue:\n{queue}")


ACCOUNTED = ["JobID", "JobName", "Partition", "State", "Submit", "End", "AllocTRES", "Constraints",
             "WorkDir"]  # fmt: skip


def accounted(folder: Path, count: int, timeout: float = 120) -> list[dict[str, str]]:
    """sacct's rows (fields ACCOUNTED, one per job) for the jobs submitted from `folder`, once at
    least `count` are there and every one has ended: a terminal state, an end time and its
    partition. Callers assert how many they expect, so a job submitted twice still fails them.
    (sacct fills in the partition a few seconds after a fast job ends, and slurmdbd records a
    job cancelled while pending a moment after the others: reading only the rows already there
    once returned 3 of 5 cancelled jobs.)"""
    rows: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["sacct", "-X", "-P", "-n", "-S", "now-2hours", "-o", ",".join(ACCOUNTED)]).stdout
        rows = [dict(zip(ACCOUNTED, line.split("|"), strict=True)) for line in out.splitlines()]
        rows = [row for row in rows if row["WorkDir"] == str(folder)]
        if len(rows) >= count and all(
            row["State"].split()[0] in TERMINAL and row["End"] not in ("", "Unknown")
            and row["Partition"] for row in rows
        ):  # fmt: skip
            return rows
        time.sleep(0.5)
    pytest.fail(f"sacct does not show {count} ended jobs of {folder}: {rows}")


class Output:
    """A process's stdout as it comes, so that a test can wait for a line while the process runs."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process, self.lines = process, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> str:
        """The whole output once the process has exited."""
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.text()


# Snakemake started as a terminal starts it, with SIGINT at its default whatever this test
# process inherited: a shell without job control starts background commands with SIGINT ignored,
# an ignored signal stays ignored across exec, and Ctrl-C would never reach Snakemake.
AS_FROM_A_TERMINAL = ["env", "--default-signal=INT"]
# A Snakefile's lines that have Snakemake print every thread's stack on SIGUSR1 (stopped()).
STACKS_ON_SIGUSR1 = "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1)\n\n"


def stopped(process: subprocess.Popen, said: Output, timeout: float) -> str:
    """Snakemake's output once it has exited after a stop signal; if it is still there after
    `timeout` s, the test fails with where each of its threads stands (STACKS_ON_SIGUSR1)."""
    try:
        return said.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(2)
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(
            f"Snakemake still running {timeout} s after the signal:\n{said.wait(10)[-12000:]}"
        )
