"""Stopping: a stopped submitter cancels its jobs, and a stopped Snakemake its submitters.

A job must not outlive the process that waits on it (no orphans on the cluster), and a stopped
Snakemake run must not submit again (the stop marker).
"""

import contextlib
import glob
import os
import signal
import subprocess
import time
from pathlib import Path

import submitit

from quantpipe.submit.console import log

SUBMITTER = "submit_stage.py"  # the rule script (workflow/scripts/) that runs from_snakemake


@contextlib.contextmanager
def cancel_on_signal(*jobs: submitit.Job):
    """If this waiting process is stopped, take its jobs down with it: no orphans on the cluster."""

    def cancel(signum, _frame):
        ids = ", ".join(job.job_id for job in jobs)
        log(f"received {signal.Signals(signum).name}: cancelling job {ids}")
        for job in jobs:
            _cancel(job)
        if stopping := stop_marker():
            with contextlib.suppress(OSError):
                stopping.touch()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cancel(job: submitit.Job) -> None:
    """Cancel `job`; for a local job, make sure its whole process tree is gone. submitit cancels
    one by a SIGINT to its controller, which misses a task it is still starting (that task then
    runs on, orphaned, ignoring SIGTERM as submitit's tasks do)."""
    local = isinstance(job, submitit.LocalJob)
    tree = _descendants(int(job.job_id)) + [int(job.job_id)] if local else []
    with contextlib.suppress(Exception):
        job.cancel(check=False)
    deadline = time.monotonic() + 5
    while tree and time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        time.sleep(0.1)
    for pid in tree:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def cancel_all(jobs: list[submitit.Job]) -> None:
    """Cancel every job in `jobs`: the Slurm ones with one scancel (a stopped run of a thousand
    jobs is one command, not a thousand), the local ones one by one, process trees included."""
    on_slurm = [job.job_id for job in jobs if isinstance(job, submitit.SlurmJob)]
    if on_slurm:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["scancel", *on_slurm], capture_output=True, timeout=120, check=False)
    for job in jobs:
        if not isinstance(job, submitit.SlurmJob):
            _cancel(job)


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _descendants(root: int) -> list[int]:
    """Every live process below `root`, read from /proc (Linux, as Slurm clusters are)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(stat) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def cancel_jobs_on_sigterm(jobs_in_this_process: bool = False) -> None:
    """Make SIGTERM to Snakemake cancel the cluster jobs it is waiting on.

    Snakemake reads SIGTERM as "finish the running jobs, then exit", which for jobs that run for
    hours leaves the cluster busy after the user asked to stop. Called from the Snakefile's
    `onstart`, this passes the signal on to the waiting submitters, which cancel their jobs and
    exit, then lets Snakemake's own handler wind down. With `jobs_in_this_process` (the executor
    plugin `quantpipe`: Snakemake itself holds the jobs) it stops Snakemake as Ctrl-C does, which
    has the plugin cancel every job of the run.
    """
    graceful = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        if jobs_in_this_process:
            raise KeyboardInterrupt
        # Only the submitters: they cancel their jobs. A local job's own processes must not get
        # it first: submitit's local controller dies of SIGTERM without stopping its task, which
        # ignores SIGTERM (Slurm's pre-emption warning) and would run on.
        for pid in _descendants(os.getpid()):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if SUBMITTER.encode() in handle.read():
                        os.kill(pid, signal.SIGTERM)
        if callable(graceful):
            graceful(signum, frame)

    signal.signal(signal.SIGTERM, stop)


def stop_marker() -> Path | None:
    """A file naming the Snakemake run above this process, or None outside Snakemake.

    A stop signal cancels the jobs, so their rules fail; Snakemake may then retry one (`retries`)
    while it winds down, and nothing would cancel that new job. The stopped submitter leaves this
    marker and a retry of the same run refuses to submit."""
    pid = os.getppid()
    while pid > 1:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(Path(arg.decode(errors="replace")).name == "snakemake" for arg in argv[:2]):
                return Path(".snakemake") / f"quantpipe-stopped-{pid}"
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None
