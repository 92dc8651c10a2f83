"""Running a stage as a submitit job: a rule's resources become executor parameters, the job is
submitted (one job, or one job array) and waited on, and a failed job becomes SystemExit(1).

With Slurm resources (`slurm_partition` set, as profiles/slurm does) the job goes to Slurm;
without, to submitit's local executor on this machine.
"""

import contextlib
import glob
import importlib
import math
import os
import re
import sys
import time
from collections.abc import Mapping

import submitit

from quantpipe import inductor_cache, provenance
from quantpipe.submit.console import log
from quantpipe.submit.signals import cancel_on_signal
from quantpipe.submit.watch import wait, why_failed

STAGES = (
    "prepare_data",
    "train",
    "quantize",
    "sensitivity",
    "benchmark",
    "report",
    "summary",
    "segment",
)
# Slurm accepts more, but these survive every shell, log file name and sacct format.
SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESOURCE_KEYS = {
    "slurm_partition": "slurm_partition",
    "slurm_account": "slurm_account",
    "slurm_qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "cpus_per_task": "cpus_per_task",
    "gpus": "gpus_per_node",
    "runtime": "timeout_min",
}


class StageCall(submitit.helpers.Checkpointable):
    """A stage's `run(**kwargs)`, importable by reference in the job.

    As a Checkpointable it is requeued on a time limit or preemption; the stage itself resumes
    from its own checkpoints (training writes one per epoch), so requeueing the same call is right.
    """

    def __init__(self, stage: str, kwargs: dict, cpus: int | None = None) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
        self.stage = stage
        self.kwargs = kwargs
        self.cpus = cpus  # a local array task's share of the machine (local_shares)

    def __call__(self) -> dict:
        if self.cpus:  # the stage sizes its threads by it (quantpipe.provenance.set_threads)
            os.environ[provenance.LOCAL_SHARE] = str(self.cpus)
        # Before torch is imported: Inductor fixes some of its cache paths at import.
        with inductor_cache.private():
            module = importlib.import_module(f"quantpipe.stages.{self.stage}")
            return module.run(**self.kwargs, log=log)


def _check_name(key: str, value: str) -> str:
    if not SLURM_NAME.match(value):
        raise ValueError(
            f"{key} {value!r} is not a valid Slurm name: use letters, digits, '_', '.' or '-' "
            f"(at most 128 characters, starting with a letter or digit)"
        )
    return value


def executor_parameters(resources: Mapping, job_name: str) -> tuple[str, dict]:
    """Map a rule's resources to (submitit cluster, submitit parameters).

    Snakemake's standard `runtime` (minutes) and `mem_mb` become the time limit and memory; the
    Slurm keys (partition, account, QoS, constraint, `exclusive`: 1 for a whole node) come from
    the profile. No partition: local.
    """
    cluster = "slurm" if resources.get("slurm_partition") else "local"
    parameters = {"name": _check_name("job name", job_name)}
    for key, parameter in RESOURCE_KEYS.items():
        value = resources.get(key)
        if value in (None, "", 0) or (cluster == "local" and parameter.startswith("slurm_")):
            continue
        if parameter in ("slurm_partition", "slurm_account", "slurm_qos"):
            value = _check_name(key, str(value))
        parameters[parameter] = value
    if cluster == "slurm":
        if resources.get("exclusive"):  # the node to this job alone (profiles/slurm: benchmarks)
            parameters["slurm_exclusive"] = True
        if resources.get("mem_mb"):
            parameters["slurm_mem"] = f"{int(resources['mem_mb'])}M"
        # Warn the job before its time limit so submitit can requeue it (Checkpointable).
        parameters["slurm_signal_delay_s"] = int(resources.get("signal_delay_s", 60))
    else:
        parameters["gpus_per_node"] = min(int(resources.get("gpus", 0)), _local_gpu_count())
        parameters.setdefault("timeout_min", 7 * 24 * 60)
    if "timeout_min" in parameters:
        parameters["timeout_min"] = math.ceil(float(parameters["timeout_min"]))
    return cluster, parameters


def _local_gpu_count() -> int:
    return len(glob.glob("/dev/nvidia[0-9]*"))


# What submitit raises for a job that ran and failed, or ended without a result.
JOB_FAILURES = (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError)


def report_failure(job, error: Exception, headline: str, stage: str, resources: Mapping) -> None:
    """The headline, the job's own error (its traceback) and, where known, why it failed."""
    log(f"{stage}: {headline}")
    print(str(error), file=sys.stderr, flush=True)
    if why := why_failed(job, error, resources):
        log(f"{stage}: {why}")


# What sbatch says when slurmctld is away (restarting) or too busy to take a job: nothing was
# submitted, so submitting again cannot make a second job. (A timeout after sending is not here:
# the job may have been taken.)
CONTROLLER_AWAY = ("Unable to contact slurm controller", "temporarily unable to accept job")
# Seconds to go on submitting again while slurmctld is away, with backoff from 2 s to 1 minute.
SUBMIT_PATIENCE_S = 900


class Refused(Exception):
    """The cluster refused a job at submission; the message names what to check in the profile."""


def start(work, stage: str, resources: Mapping, job_name: str, folder: str):
    """Submit `work` (a StageCall, or a rule's shell command as a submitit CommandFunction) as
    one submitit job of `stage` and return (job, cluster, parameters) without waiting; Refused
    if the cluster will not take it."""
    executor, cluster, parameters = _executor(resources, job_name, folder)
    job = _patiently(stage, cluster, parameters, lambda: executor.submit(work))
    return job, cluster, parameters


def start_array(stage: str, calls: list[dict], resources: Mapping, job_name: str, folder: str):
    """Submit `stage` once per kwargs in `calls` as ONE job array (one task each, in order) and
    return (jobs, cluster, parameters) without waiting; Refused if the cluster will not take it.
    `resources` as for `start`, plus `array_parallelism` (how many tasks may run at once)."""
    executor, cluster, parameters = _executor(resources, job_name, folder)
    if cluster == "slurm" and resources.get("array_parallelism"):
        parameters["slurm_array_parallelism"] = int(resources["array_parallelism"])
        executor.update_parameters(slurm_array_parallelism=parameters["slurm_array_parallelism"])

    shares = local_shares(len(calls)) if cluster == "local" else [None] * len(calls)

    def submit_all():
        with executor.batch():
            jobs = [executor.submit(StageCall(stage, kwargs, cpus))
                    for kwargs, cpus in zip(calls, shares, strict=True)]  # fmt: skip
        return jobs

    return _patiently(stage, cluster, parameters, submit_all), cluster, parameters


def local_shares(tasks: int) -> list[int]:
    """How many CPUs each of `tasks` array tasks run at once on this machine may use: its CPUs
    split among them, as Slurm gives each task its own (one each where the tasks outnumber them;
    the scheduler shares the cores, as no task is pinned). Each task taking every CPU would run
    threads several times over the cores, and OpenMP threads that spin while they wait make that
    far slower than sharing."""
    per_task, left_over = divmod(len(os.sched_getaffinity(0)), tasks)
    return [max(1, per_task + (task < left_over)) for task in range(tasks)]


def _executor(resources: Mapping, job_name: str, folder: str):
    cluster, parameters = executor_parameters(resources, job_name)
    executor = submitit.AutoExecutor(
        folder=folder, cluster=cluster, slurm_max_num_timeout=int(resources.get("requeues", 3))
    )
    executor.update_parameters(**parameters)
    return executor, cluster, parameters


def _patiently(stage: str, cluster: str, parameters: dict, submit_now):
    """submit_now(), again with backoff while slurmctld is away; Refused if the cluster refuses."""
    deadline, backoff = time.monotonic() + SUBMIT_PATIENCE_S, 0.0
    while True:
        try:
            return submit_now()
        except Exception as error:  # sbatch's refusal arrives as whatever submitit wraps it in
            if not any(away in str(error) for away in CONTROLLER_AWAY):
                raise Refused(_refusal(stage, cluster, parameters, error)) from None
            if time.monotonic() > deadline:
                raise Refused(
                    f"{stage}: slurmctld did not take the job for {SUBMIT_PATIENCE_S} s: {error}"
                ) from None
            backoff = min(60.0, max(2.0, 2 * backoff))
            log(f"{stage}: slurmctld does not answer ({str(error).strip()}); submitting again "
                f"in {backoff:.0f} s")  # fmt: skip
            time.sleep(backoff)


def _refusal(stage: str, cluster: str, parameters: dict, error: Exception) -> str:
    return (
        f"{stage}: {cluster} refused the job {parameters}:\n{error}\n"
        "Check the partition, gpus, cpus_per_task, mem_mb and runtime that your profile "
        "(profiles/slurm/config.yaml) gives this rule against what `sinfo` shows."
    )


def submit(stage: str, kwargs: dict, resources: Mapping, job_name: str, folder: str) -> dict:
    """Run `stage` as a submitit job and wait for it; raise SystemExit(1) if it failed."""
    try:
        job, cluster, parameters = start(
            StageCall(stage, kwargs), stage, resources, job_name, folder
        )
    except Refused as refusal:
        log(str(refusal))
        raise SystemExit(1) from None
    with cancel_on_signal(job):
        log(f"{stage}: submitted job {job.job_id} to {cluster} with {parameters}")
        log(f"{stage}: job stdout {job.paths.stdout}")
        log(f"{stage}: job stderr {job.paths.stderr}")
        try:
            result = wait(job, stage, cluster, resources, job_name)
        except JOB_FAILURES as error:
            report_failure(job, error, f"job {job.job_id} failed (state {job.state}):", stage,
                           resources)  # fmt: skip
            raise SystemExit(1) from None
    # (sacct may still say RUNNING for a moment after the result is written: name no state)
    node = job.get_info().get("NodeList", "this machine") if cluster == "slurm" else "this machine"
    log(f"{stage}: job {job.job_id} finished on {node}")
    return result


def submit_array(
    stage: str, calls: list[dict], resources: Mapping, job_name: str, folder: str
) -> dict[str, object]:
    """Run `stage` once per kwargs in `calls` as ONE job array (one task each, in order); wait
    for every task and return {array task id (`N_i`): its result}, in order. If any task failed,
    log each failed task with its id and its error, then raise SystemExit(1). Stopping this
    process cancels every task. `resources` as for `submit`, plus `array_parallelism` (how many
    tasks may run at once)."""
    try:
        jobs, cluster, parameters = start_array(stage, calls, resources, job_name, folder)
    except Refused as refusal:
        log(str(refusal))
        raise SystemExit(1) from None
    with cancel_on_signal(*jobs):
        log(f"{stage}: submitted {len(jobs)} array tasks {jobs[0].job_id}..{jobs[-1].job_id} "
            f"to {cluster} with {parameters}")  # fmt: skip
        log(f"{stage}: task stdout {jobs[0].paths.stdout} (and so on)")
        results, failed = {}, []
        for job in jobs:
            try:
                results[job.job_id] = wait(job, stage, cluster, resources, job_name)
            except JOB_FAILURES as error:
                report_failure(job, error, f"array task {job.job_id} failed:", stage, resources)
                failed.append(job.job_id)
            except SystemExit:  # a task no node can start (see watch.wait): nor can the rest
                for other in jobs:
                    with contextlib.suppress(Exception):
                        other.cancel(check=False)
                raise
    if failed:
        log(f"{stage}: {len(failed)} of {len(jobs)} array tasks failed: {', '.join(failed)}")
        raise SystemExit(1)
    log(f"{stage}: all {len(jobs)} array tasks finished")
    return results
