"""Waiting for a job (a Slurm one watched in squeue and sacct) until it is over, showing its
progress, and saying why one died without a result.

submitit's own wait trusts sacct alone; this asks squeue as well, notices a job that no node can
start, and turns a job's end state and stderr (an OOM kill) into the fix to apply.
"""

import contextlib
import re
import subprocess
import time
from collections.abc import Mapping

import submitit

from quantpipe.submit.console import log
from quantpipe.submit.progress import Progress

# Node states (`sinfo %t`, flags stripped) in which a node starts no new job; a trailing `*`
# (not responding) means the same.
UNUSABLE_NODE_STATES = {"down", "drain", "drng", "fail", "failg", "inval", "maint"}
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
}  # PREEMPTED is left out: a preempted job is requeued
# What slurmstepd writes into a job's stderr when it kills a step for memory: the accounting
# poller (JobAcctGatherParams=OverMemoryKill) or the cgroup OOM killer (TaskPlugin=task/cgroup).
OOM_LINE = re.compile(r"slurmstepd.*(exceeded (?:job |step )?memory limit|oom[-_]kill)", re.I)


def slurm_query(args: list[str]) -> tuple[bool, str]:
    """(answered, output) of a Slurm client command; never raises, never waits more than 60 s."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    if done.returncode != 0:  # its last line says why
        return False, ((done.stderr or done.stdout).strip().splitlines() or ["?"])[-1]
    return True, done.stdout.strip()


def _unusable_nodes(partition: str) -> list[str] | None:
    """'node (state: reason)' for each node of `partition` if none of them can start a job,
    else None (a usable node, or sinfo did not answer)."""
    answered, out = slurm_query(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%t|%E"])
    rows = [line.split("|", 2) for line in out.splitlines() if line.count("|") == 2]
    if not answered or not rows:
        return None
    down = [
        (node, state, reason)
        for node, state, reason in rows
        if state.rstrip("*~#%!$@^-") in UNUSABLE_NODE_STATES or state.endswith("*")
    ]
    if len(down) < len(rows):
        return None
    return [f"{node} ({state}: {reason})" for node, state, reason in dict.fromkeys(down)]


class _QueueWatch:
    """Watches a Slurm job in `squeue` while submitit waits for its result.

    submitit polls `sacct` (slurmdbd) every few seconds at first, then only every 10 minutes, and
    waits for ever on a job that pends on nodes that are down or drained. This asks slurmctld
    (`squeue`, which works while accounting is down) every 2 s at first, then at most every
    minute; a check that fails is retried with exponential backoff (2 s up to 1 minute). It logs
    each change of the job's state (a node set DOWN requeues its running jobs: Slurm's JobRequeue;
    they start again, and training resumes from its last epoch), says when the job waits on a
    partition none of whose nodes can run it, with the fix, and after `node_wait_min` minutes of
    that cancels the job and fails. When the job has ended it asks submitit (sacct) until
    accounting has recorded it, with the same backoff.

    The job is over (`over`) once its result is written, or once squeue no longer lists it as
    pending or running AND sacct's newest record for it is final. submitit alone is not enough:
    after Slurm requeues a job (a node failure), sacct can go on showing the first attempt's
    NODE_FAIL as the newest record for seconds after the job runs again, and submitit's `done()`
    takes that for the end, and keeps it.
    """

    def __init__(self, job: submitit.Job, stage: str, node_wait_min: float) -> None:
        self.job, self.stage, self.node_wait_s = job, stage, node_wait_min * 60
        self.started = self.next_check = time.monotonic()
        self.backoff = 0.0
        self.seen = ("", "", "")
        self.stuck_since: float | None = None
        self.ended = ""
        self.accounted = False

    @property
    def state(self) -> str:
        """The job's state as squeue last showed it (its end state once it has ended)."""
        return self.ended or self.seen[1] or "SUBMITTED"

    def retry_later(self, what: str) -> None:
        self.backoff = min(60.0, max(2.0, 2 * self.backoff))
        log(f"{self.stage}: {what}; checking again in {self.backoff:.0f} s")
        self.next_check = time.monotonic() + self.backoff

    def over(self) -> bool:
        if self.accounted:
            return True
        folder = self.job.paths.folder
        with contextlib.suppress(OSError):  # as submitit does: refreshes an NFS client's view
            folder.chmod(folder.stat().st_mode)
        return self.job.paths.result_pickle.exists()

    def check(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        job_id = self.job.job_id
        if self.ended:  # submitit takes a job's end from sacct (slurmdbd): ask it now
            # submitit never asks again about a job it once saw final (a requeued job's first
            # attempt, perhaps): clear its cache so that it asks sacct for the newest record.
            self.job.watcher.clear()
            if self.job.done(force_check=True):
                self.accounted = True
            else:
                answered, out = slurm_query(["sacct", "-n", "-X", "-j", job_id, "-o", "State"])
                if answered:  # it answers, but has not recorded the end yet
                    self.next_check = now + 2
                else:
                    self.retry_later(
                        f"job {job_id} has ended ({self.ended}) but accounting does not answer "
                        f"({out})"
                    )
            return
        fields = "RestartCnt:|,State:|,Reason:|,Partition:|,NodeList:"
        answered, out = slurm_query(["squeue", "-h", "-t", "all", "-j", job_id, "-O", fields])
        if not answered and "Invalid job id" not in out:
            self.retry_later(f"status check of job {job_id} failed ({out})")
            return
        if self.backoff:
            log(f"{self.stage}: status checks of job {job_id} answer again")
            self.backoff = 0.0
        restarts, state, reason, partition, nodes = (out.split("|") + [""] * 5)[:5]
        self.next_check = now + min(60.0, max(2.0, (now - self.started) / 4))
        if not answered or state in ENDED or not state:
            self.ended = state or "no longer in squeue"
            self.next_check = now
            return
        if (restarts, state, reason) != self.seen:
            said = f"{self.stage}: job {job_id} {state}" + (f" on {nodes}" if nodes else "")
            said += f" ({reason})" if reason not in ("", "None") else ""
            if restarts.isdigit() and self.seen[0].isdigit() and int(restarts) > int(self.seen[0]):
                said += (
                    f", requeued by Slurm (restart {restarts}: a node failure, preemption or "
                    "scontrol requeue): it runs again when a node is free, and training resumes "
                    "from its last epoch"
                )
            log(said)
            self.seen = (restarts, state, reason)
        self.check_nodes(state, reason, partition, now)

    def check_nodes(self, state: str, reason: str, partition: str, now: float) -> None:
        down = _unusable_nodes(partition) if state == "PENDING" else None
        if reason in ("PartitionDown", "PartitionInactive"):
            down = [f"partition {partition} is {reason.removeprefix('Partition').lower()}"]
        if down is None:
            if self.stuck_since is not None:
                log(
                    f"{self.stage}: a node of partition {partition} can run job "
                    f"{self.job.job_id} again"
                )
            self.stuck_since = None
            return
        nodes = ", ".join(down)
        node_names = ",".join(item.split(" ")[0] for item in down)
        fix = (
            f"an administrator returns a node to service with `scontrol update "
            f"nodename={node_names} state=resume`"
        )
        if self.stuck_since is None:
            self.stuck_since = now
            log(
                f"{self.stage}: job {self.job.job_id} is pending ({reason}) and no node of "
                f"partition {partition} can start it: {nodes}. It starts once {fix}; if none "
                f"can within node_wait_min={self.node_wait_s / 60:g} minutes, it is cancelled "
                "and the rule fails."
            )
        elif now - self.stuck_since >= self.node_wait_s:
            log(
                f"{self.stage}: cancelling job {self.job.job_id}: no node of partition "
                f"{partition} could start it for {self.node_wait_s / 60:g} minutes ({nodes}). "
                f"Rerun Snakemake once {fix}, or give the rule another slurm_partition in the "
                "profile (profiles/slurm/config.yaml); finished results are kept."
            )
            with contextlib.suppress(Exception):
                self.job.cancel(check=False)
            raise SystemExit(1)


def wait(job: submitit.Job, stage: str, cluster: str, resources: Mapping, name: str):
    """job.result(), once the job is over (for a Slurm job: once a `_QueueWatch` says so); the
    job `name`'s progress is logged meanwhile (quantpipe.submit.progress)."""
    progress = Progress(job, name)
    if cluster == "slurm":
        watch = _QueueWatch(job, stage, float(resources.get("node_wait_min", 30)))
        while not watch.over():
            progress.report(watch.state)
            time.sleep(1)
            watch.check()
    else:
        while not job.done():
            progress.report(job.state)
            time.sleep(1)
    return job.result()


def why_failed(job: submitit.Job, error: Exception, resources: Mapping) -> str:
    """A sentence that names why a Slurm job died without a result, and the fix; '' if unknown."""
    if not isinstance(error, submitit.core.utils.UncompletedJobError):
        return ""  # the stage raised: its traceback says why
    state = job.state.split()[0] if job.state else ""
    stderr = job.stderr() or ""
    oom = OOM_LINE.search(stderr)
    if state == "OUT_OF_MEMORY" or oom:
        used = re.search(r"exceeded memory limit \((\d+) > (\d+)\)", stderr)
        usage = f", it used more than {int(used.group(1)) // 2**20} MB" if used else ""
        return (
            f"job {job.job_id} ran out of memory (mem_mb={resources.get('mem_mb', '?')} "
            f"given{usage}): the rule is retried with more if `retries` allows; raise mem_mb "
            "in the profile (profiles/slurm/config.yaml)"
        )
    if state == "NODE_FAIL":
        return (
            f"job {job.job_id}'s node failed (NODE_FAIL): the rule is retried if `retries` "
            "allows, and training resumes from its last epoch; `sinfo -R` says why the node is down"
        )
    if state == "CANCELLED":
        return f"job {job.job_id} was cancelled (`scancel` or an administrator): rerun Snakemake"
    return ""


def max_rss_mb(job_ids: list[str], wait_s: float = 60.0) -> dict[str, float | None]:
    """Each finished Slurm job's (or array task's) peak resident memory in MB from sacct's
    MaxRSS, the largest of its steps; None where accounting has no figure. Accounting records a
    step's figures a little after it ends: ask again for up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        peaks = _max_rss_once(job_ids)
        if all(peak is not None for peak in peaks.values()) or time.monotonic() > deadline:
            return peaks
        time.sleep(2)


def _max_rss_once(job_ids: list[str]) -> dict[str, float | None]:
    answered, output = slurm_query(
        ["sacct", "-j", ",".join(job_ids), "--format=JobID,MaxRSS", "--units=M", "--parsable2",
         "--noheader"]
    )  # fmt: skip
    peaks: dict[str, float | None] = dict.fromkeys(job_ids)
    if not answered:
        return peaks
    for line in output.splitlines():
        step, _, rss = line.partition("|")
        job = step.split(".")[0]
        if job in peaks and rss.strip():
            megabytes = float(rss.strip().rstrip("M") or 0)
            peaks[job] = max(peaks[job] or 0.0, megabytes)
    return peaks
