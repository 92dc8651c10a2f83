"""A run's jobs in flight together, none waited on by a process of its own: each is submitted
without waiting, all are watched together (watch.QueueWatch: one squeue per check for the run,
sacct for those that ended), and each is settled once it is over. The Snakemake executor plugin
`quantpipe` (workflow/executor) drives this; quantpipe.submit.executor.submit is the same for one
job that a process waits on.
"""

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import submitit

from quantpipe.submit.console import log, logger_to
from quantpipe.submit.executor import JOB_FAILURES, StageCall, start
from quantpipe.submit.progress import Progress
from quantpipe.submit.signals import cancel_all
from quantpipe.submit.watch import JobWatch, QueueWatch, why_failed

# Seconds a job that ended without a result file is given for the file to show up (a shared
# filesystem can lag), as submitit's own wait gives it; here without holding up other jobs' checks.
RESULT_GRACE_S = 15


@dataclass
class InFlight:
    """One submitted job: the submitit job, its watch (None for a local job), its progress
    lines, and `say`, which writes to the terminal and the rule's log."""

    job: submitit.Job
    stage: str
    resources: Mapping
    watch: JobWatch | None
    progress: Progress
    say: object
    over_since: float | None = None


class Sweep:
    """Submit with `submit`; call `check()` now and then, then `outcome(job)` for each job. The
    methods may be called from different threads (Snakemake submits from one and checks from
    another); a submission waiting for slurmctld holds up no check."""

    def __init__(self, say=log) -> None:
        self.queue = QueueWatch(say)
        self.in_flight: dict[str, InFlight] = {}
        self.lock = threading.Lock()

    def submit(
        self,
        work: StageCall | submitit.helpers.CommandFunction,
        stage: str,
        resources: Mapping,
        job_name: str,
        folder: str,
        log_path: Path,
    ) -> InFlight:
        """Submit `work` (a stage, or a rule's shell command) as one job; Refused if the cluster
        will not take it."""
        job, cluster, parameters = start(work, stage, resources, job_name, folder)
        say = logger_to(log_path)
        say(f"{stage}: submitted job {job.job_id} to {cluster} with {parameters}")
        say(f"{stage}: job stdout {job.paths.stdout}, stderr {job.paths.stderr}")
        watch = None
        if cluster == "slurm":
            watch = JobWatch(job, stage, float(resources.get("node_wait_min", 30)), say)
        flight = InFlight(job, stage, resources, watch, Progress(job, job_name, say=say), say)
        with self.lock:
            if watch:
                self.queue.add(watch)
            self.in_flight[job.job_id] = flight
        return flight

    def check(self) -> None:
        """Ask Slurm about every job, if it is time to (QueueWatch.check)."""
        with self.lock:
            self.queue.check()

    def outcome(self, flight: InFlight) -> tuple[bool, str] | None:
        """None while the job runs (its progress line now and then); once it is over, (True, '')
        or (False, why), with the job's own error and why it failed written to the rule's log
        (Snakemake's show-failed-logs prints it)."""
        over = flight.watch.over() if flight.watch else flight.job.done()
        state = flight.watch.state if flight.watch else flight.job.state
        if not over:
            flight.progress.report(state)
            return None
        job, stage = flight.job, flight.stage
        gave_up = flight.watch is not None and flight.watch.gave_up
        flight.over_since = flight.over_since or time.monotonic()
        if not gave_up and not job.paths.result_pickle.exists():
            if time.monotonic() - flight.over_since < RESULT_GRACE_S:
                return None
            job._results_timeout_s = 0  # waited above, without blocking the other jobs' checks
        with self.lock:
            self.in_flight.pop(job.job_id, None)
            if flight.watch:
                self.queue.remove(flight.watch)
        if gave_up:
            return False, f"job {job.job_id}: no node of its partition could start it"
        try:
            job.result()
        except JOB_FAILURES as error:
            headline = f"{stage}: job {job.job_id} failed (state {job.state})"
            flight.say(f"{headline}:\n{error}")
            why = why_failed(job, error, flight.resources)
            if why:
                flight.say(f"{stage}: {why}")
            return False, f"{headline}. {why}".strip()
        node = flight.watch.nodes if flight.watch else "this machine"
        flight.say(f"{stage}: job {job.job_id} finished on {node or 'its node'}")
        return True, ""

    def cancel(self) -> list[str]:
        """Cancel every job still in flight (one scancel for the Slurm ones); their ids."""
        with self.lock:
            flights = list(self.in_flight.values())
        cancel_all([flight.job for flight in flights])
        return [flight.job.job_id for flight in flights]
