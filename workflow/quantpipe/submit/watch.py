"""Waiting for a job (a Slurm one watched in squeue and sacct) until it is over, showing its
progress, and saying why one died without a result.

submitit's own wait trusts sacct alone; this asks squeue as well, notices a job that no node can
start, and turns a job's end state and stderr (an OOM kill) into the fix to apply.
"""

import contextlib
import math
import pickle
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

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
# Seconds between `sinfo` checks of the partitions that jobs pend on: a node's state matters on
# the scale of node_wait_min (minutes), and sinfo is two slurmctld calls.
NODE_CHECK_S = 30
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


class JobWatch:
    """What is known of one Slurm job while it is waited on: its state as squeue last showed it,
    whether it has ended and accounting has recorded that, and whether it was given up on.

    A `QueueWatch` feeds it (`observe`): it logs, through `say`, each change of the job's state
    (a node set DOWN requeues its running jobs: Slurm's JobRequeue; they start again, and
    training resumes from its last epoch), says when the job waits on a partition none of whose
    nodes can run it, with the fix, and after `node_wait_min` minutes of that cancels the job and
    gives up on it (`gave_up`).

    The job is over (`over`) once its result is written, or once squeue no longer lists it as
    pending or running AND sacct's newest record for it is final. submitit alone is not enough:
    after Slurm requeues a job (a node failure), sacct can go on showing the first attempt's
    NODE_FAIL as the newest record for seconds after the job runs again, and submitit's `done()`
    takes that for the end, and keeps it.
    """

    def __init__(self, job: submitit.Job, stage: str, node_wait_min: float, say=log) -> None:
        self.job, self.stage, self.node_wait_s, self.say = job, stage, node_wait_min * 60, say
        self.seen = ("", "", "")
        self.nodes = ""
        self.stuck_since: float | None = None
        self.ended = ""
        self.accounted = False
        self.gave_up = False

    @property
    def state(self) -> str:
        """The job's state as squeue last showed it (its end state once it has ended)."""
        return self.ended or self.seen[1] or "SUBMITTED"

    def over(self) -> bool:
        if self.accounted or self.gave_up:
            return True
        folder = self.job.paths.folder
        with contextlib.suppress(OSError):  # as submitit does: refreshes an NFS client's view
            folder.chmod(folder.stat().st_mode)
        if not self.job.paths.result_pickle.exists():
            return False
        # An error result may be an attempt's that Slurm killed to requeue the job (a node set
        # DOWN stops a shell command with SIGTERM): it counts once squeue shows the job ended.
        return bool(self.ended) or _succeeded(self.job.paths.result_pickle)

    def observe(self, row: str, now: float, unusable_nodes) -> bool:
        """Take in squeue's row for this job ('' when squeue no longer lists it); True when it
        showed something new. `unusable_nodes(partition)` is `_unusable_nodes`, or a cached one."""
        restarts, state, reason, partition, nodes = (row.split("|") + [""] * 5)[:5]
        if state in ENDED or not state:
            self.ended = state or "no longer in squeue"
            return True
        self.nodes = nodes or self.nodes
        changed = (restarts, state, reason) != self.seen
        if changed:
            job_id = self.job.job_id
            said = f"{self.stage}: job {job_id} {state}" + (f" on {nodes}" if nodes else "")
            said += f" ({reason})" if reason not in ("", "None") else ""
            if restarts.isdigit() and self.seen[0].isdigit() and int(restarts) > int(self.seen[0]):
                said += (
                    f", requeued by Slurm (restart {restarts}: a node failure, preemption or "
                    "scontrol requeue): it runs again when a node is free, and training resumes "
                    "from its last epoch"
                )
            self.say(said)
            self.seen = (restarts, state, reason)
        down = unusable_nodes(partition) if state == "PENDING" else None
        if reason in ("PartitionDown", "PartitionInactive"):
            down = [f"partition {partition} is {reason.removeprefix('Partition').lower()}"]
        self.check_nodes(down, reason, partition, now)
        return changed

    def check_nodes(self, down: list[str] | None, reason: str, partition: str, now: float) -> None:
        if down is None:
            if self.stuck_since is not None:
                self.say(
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
            self.say(
                f"{self.stage}: job {self.job.job_id} is pending ({reason}) and no node of "
                f"partition {partition} can start it: {nodes}. It starts once {fix}; if none "
                f"can within node_wait_min={self.node_wait_s / 60:g} minutes, it is cancelled "
                "and the rule fails."
            )
        elif now - self.stuck_since >= self.node_wait_s:
            self.say(
                f"{self.stage}: cancelling job {self.job.job_id}: no node of partition "
                f"{partition} could start it for {self.node_wait_s / 60:g} minutes ({nodes}). "
                f"Rerun Snakemake once {fix}, or give the rule another slurm_partition in the "
                "profile (profiles/slurm/config.yaml); finished results are kept."
            )
            with contextlib.suppress(Exception):
                self.job.cancel(check=False)
            self.gave_up = True


class QueueWatch:
    """Every Slurm job of a run, asked about together: one `squeue` per check for the states of
    those still live, one `sacct` (submitit's own watcher, which batches every job it knows) for
    the final record of those that ended, and `sinfo` (at most every NODE_CHECK_S) while a job
    pends.

    submitit polls `sacct` (slurmdbd) every few seconds at first, then only every 10 minutes, and
    waits for ever on a job that pends on nodes that are down or drained. This asks slurmctld
    (`squeue`, which works while accounting is down) every 2 s while anything changes, then less
    often, at most every minute; a check that fails is retried with exponential backoff (2 s up
    to 1 minute), and so is sacct while accounting does not answer.
    """

    def __init__(self, say=log) -> None:
        self.watches: dict[str, JobWatch] = {}
        self.say = say
        self.changed = self.next_check = time.monotonic()
        self.backoff = 0.0
        self.nodes_checked = -math.inf
        self.node_cache: dict[str, list[str] | None] = {}

    def add(self, watch: JobWatch) -> None:
        self.watches[watch.job.job_id] = watch
        self.changed = self.next_check = time.monotonic()

    def remove(self, watch: JobWatch) -> None:
        self.watches.pop(watch.job.job_id, None)

    def retry_later(self, what: str) -> None:
        self.backoff = min(60.0, max(2.0, 2 * self.backoff))
        self.say(f"{what}; checking again in {self.backoff:.0f} s")
        self.next_check = time.monotonic() + self.backoff

    def check(self) -> None:
        """Ask Slurm about the jobs, if it is time to."""
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + min(60.0, max(2.0, (now - self.changed) / 4))
        live = [watch for watch in self.watches.values() if not watch.ended]
        if live and not self.ask_squeue(live, now):
            return
        ending = [watch for watch in self.watches.values() if watch.ended and not watch.over()]
        if ending:
            self.ask_sacct(ending)

    def ask_squeue(self, live: list[JobWatch], now: float) -> bool:
        ids = ",".join(watch.job.job_id for watch in live)
        fields = "JobArrayID:|,RestartCnt:|,State:|,Reason:|,Partition:|,NodeList:"
        # -r: a pending array task on a line of its own (by default squeue folds them into one
        # line, `123_[1-2]`, and the task would look gone).
        answered, out = slurm_query(["squeue", "-h", "-r", "-t", "all", "-j", ids, "-O", fields])
        if not answered and "Invalid job id" not in out:
            self.retry_later(f"status check of {_jobs(live)} failed ({out})")
            return False
        if self.backoff:
            self.say(f"status checks of {_jobs(live)} answer again")
            self.backoff = 0.0
        rows = {}
        for line in out.splitlines() if answered else []:
            job_id, _, row = line.partition("|")
            rows[job_id.strip()] = row
        if now - self.nodes_checked >= NODE_CHECK_S:
            self.nodes_checked, self.node_cache = now, {}
        for watch in live:
            if watch.observe(rows.get(watch.job.job_id, ""), now, self.unusable_nodes):
                self.changed = now
        return True

    def unusable_nodes(self, partition: str) -> list[str] | None:
        if partition not in self.node_cache:
            self.node_cache[partition] = _unusable_nodes(partition)
        return self.node_cache[partition]

    def ask_sacct(self, ending: list[JobWatch]) -> None:
        # submitit never asks again about a job it once saw final (a requeued job's first
        # attempt, perhaps): clear its cache so that it asks sacct for the newest records.
        watcher = ending[0].job.watcher  # one for every Slurm job of this process
        watcher.clear()
        watcher.update()
        waiting = []
        for watch in ending:
            if watcher.is_done(watch.job.job_id, mode="cache"):
                watch.accounted = True
            else:
                waiting.append(watch)
        if not waiting:
            return
        ids = ",".join(watch.job.job_id for watch in waiting)
        answered, out = slurm_query(["sacct", "-n", "-X", "-j", ids, "-o", "State"])
        if answered:  # it answers, but has not recorded the end yet
            self.next_check = min(self.next_check, time.monotonic() + 2)
        else:
            ended = ", ".join(f"{watch.job.job_id} ({watch.ended})" for watch in waiting)
            self.retry_later(
                f"{waiting[0].stage if len(waiting) == 1 else 'jobs'}: job {ended} has ended "
                f"but accounting does not answer ({out})"
            )


def _succeeded(result: Path) -> bool:
    """Whether a submitit result file holds a result, not an error (False while unreadable)."""
    try:
        return submitit.core.utils.pickle_load(result)[0] == "success"
    except (OSError, EOFError, pickle.UnpicklingError):  # still being written
        return False


def _jobs(watches: list[JobWatch]) -> str:
    """'train: job 12' for one job, 'jobs 12, 13, ... (40 in all)' for many."""
    if len(watches) == 1:
        return f"{watches[0].stage}: job {watches[0].job.job_id}"
    ids = [watch.job.job_id for watch in watches]
    shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
    return f"jobs {shown}"


def wait(job: submitit.Job, stage: str, cluster: str, resources: Mapping, name: str):
    """job.result(), once the job is over (for a Slurm job: once its `QueueWatch` says so); the
    job `name`'s progress is logged meanwhile (quantpipe.submit.progress). SystemExit(1) if the
    job was given up on (no node can start it)."""
    progress = Progress(job, name)
    if cluster == "slurm":
        watch, queue = JobWatch(job, stage, float(resources.get("node_wait_min", 30))), QueueWatch()
        queue.add(watch)
        while not watch.over():
            progress.report(watch.state)
            time.sleep(1)
            queue.check()
        if watch.gave_up:
            raise SystemExit(1)
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
