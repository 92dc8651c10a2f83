"""A run's jobs in flight together, none waited on by a process of its own: each is submitted
without waiting, all are watched together (watch.QueueWatch: one squeue per check for the run,
sacct for those that ended), and each is settled once it is over. A job array (`submit_array`)
is one unit: over when every task is, failed (the rest cancelled) as soon as one task fails. The
Snakemake executor plugin `quantpipe` (workflow/executor) drives this;
quantpipe.submit.executor.submit and submit_array are the same for a process that waits.
"""

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import submitit

from quantpipe.submit.console import log, logger_to
from quantpipe.submit.executor import JOB_FAILURES, StageCall, start, start_array
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
    settled: tuple[bool, object] | None = None
    result: object = None


@dataclass
class ArrayInFlight:
    """One submitted job array: a flight per task (in order), and once every task succeeded,
    `results` ({array task id: its result}, in order)."""

    stage: str
    tasks: list[InFlight]
    say: object
    results: dict | None = None


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
        return self._track(job, stage, cluster, resources, job_name, say)

    def submit_array(
        self,
        stage: str,
        calls: list[dict],
        resources: Mapping,
        job_name: str,
        folder: str,
        log_path: Path,
    ) -> ArrayInFlight:
        """Submit `stage` once per kwargs in `calls` as ONE job array (executor.start_array);
        Refused if the cluster will not take it."""
        jobs, cluster, parameters = start_array(stage, calls, resources, job_name, folder)
        say = logger_to(log_path)
        say(f"{stage}: submitted {len(jobs)} array tasks {jobs[0].job_id}..{jobs[-1].job_id} "
            f"to {cluster} with {parameters}")  # fmt: skip
        say(f"{stage}: task stdout {jobs[0].paths.stdout} (and so on)")
        tasks = [self._track(job, stage, cluster, resources, job_name, say) for job in jobs]
        return ArrayInFlight(stage, tasks, say)

    def _track(self, job, stage, cluster, resources, job_name, say) -> InFlight:
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

    def outcome(self, flight: InFlight | ArrayInFlight) -> tuple[bool, str] | None:
        """None while the job (every task of an array) runs, with its progress line now and then;
        once it is over, (True, '') or (False, why), with the job's own error and why it failed
        written to the rule's log (Snakemake's show-failed-logs prints it). An array fails as
        soon as one task fails: the rest are cancelled."""
        if isinstance(flight, ArrayInFlight):
            return self._array_outcome(flight)
        settled = self._settle(flight, "job")
        if settled is None or not settled[0]:
            return settled
        node = flight.watch.nodes if flight.watch else "this machine"
        flight.say(f"{flight.stage}: job {flight.job.job_id} finished on {node or 'its node'}")
        return True, ""

    def _array_outcome(self, array: ArrayInFlight) -> tuple[bool, str] | None:
        running = False
        for task in array.tasks:
            settled = self._settle(task, "array task")
            if settled is None:
                running = True
            elif not settled[0]:
                with self.lock:
                    rest = [other for other in array.tasks if other.job.job_id in self.in_flight]
                    for other in rest:
                        self.in_flight.pop(other.job.job_id, None)
                        if other.watch:
                            self.queue.remove(other.watch)
                if rest:
                    cancel_all([other.job for other in rest])
                    array.say(f"{array.stage}: cancelled the array's other tasks "
                              f"{' '.join(other.job.job_id for other in rest)}")  # fmt: skip
                return False, str(settled[1])
        if running:
            return None
        array.results = {task.job.job_id: task.result for task in array.tasks}
        array.say(f"{array.stage}: all {len(array.tasks)} array tasks finished")
        return True, ""

    def _settle(self, flight: InFlight, what: str) -> tuple[bool, object] | None:
        """None while the job runs; once it is over, (True, its result) or (False, why)."""
        if flight.settled is not None:
            return flight.settled
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
            why = f"{what} {job.job_id}: no node of its partition could start it"
            flight.settled = (False, why)
            return flight.settled
        try:
            flight.result = job.result()
        except JOB_FAILURES as error:
            headline = f"{stage}: {what} {job.job_id} failed (state {job.state})"
            flight.say(f"{headline}:\n{error}")
            why = why_failed(job, error, flight.resources)
            if why:
                flight.say(f"{stage}: {why}")
            flight.settled = (False, f"{headline}. {why}".strip())
            return flight.settled
        flight.settled = (True, flight.result)
        return flight.settled

    def cancel(self) -> list[str]:
        """Cancel every job still in flight (one scancel for the Slurm ones); their ids."""
        with self.lock:
            flights = list(self.in_flight.values())
        cancel_all([flight.job for flight in flights])
        return [flight.job.job_id for flight in flights]
