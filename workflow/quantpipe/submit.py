"""The one module that talks to submitit: every stage's work runs as a submitit job.

With Slurm resources (`slurm_partition` set, as profiles/slurm does) the job goes to Slurm;
without, to submitit's local executor on this machine. The submitting process waits for the
job, streams where its logs are, cancels it if it is itself stopped (Ctrl-C, SIGTERM), and turns a
failed job into a non-zero exit that carries the job's own traceback.
"""

import contextlib
import glob
import importlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import submitit

from quantpipe import inductor_cache

STAGES = ("prepare_data", "train", "quantize", "benchmark", "report", "summary", "segment")
# Slurm accepts more, but these survive every shell, log file name and sacct format.
SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SUBMITTER = "submit_stage.py"  # the rule script (workflow/scripts/) that runs from_snakemake
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

    def __init__(self, stage: str, kwargs: dict) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
        self.stage = stage
        self.kwargs = kwargs

    def __call__(self) -> dict:
        # Before torch is imported: Inductor fixes some of its cache paths at import.
        with inductor_cache.private():
            module = importlib.import_module(f"quantpipe.stages.{self.stage}")
            return module.run(**self.kwargs, log=log)


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


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
    Slurm keys (partition, account, QoS, constraint) come from the profile. No partition: local.
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


def _slurm_query(args: list[str]) -> tuple[bool, str]:
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
    answered, out = _slurm_query(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%t|%E"])
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
                answered, out = _slurm_query(["sacct", "-n", "-X", "-j", job_id, "-o", "State"])
                if answered:  # it answers, but has not recorded the end yet
                    self.next_check = now + 2
                else:
                    self.retry_later(
                        f"job {job_id} has ended ({self.ended}) but accounting does not answer "
                        f"({out})"
                    )
            return
        fields = "RestartCnt:|,State:|,Reason:|,Partition:|,NodeList:"
        answered, out = _slurm_query(["squeue", "-h", "-t", "all", "-j", job_id, "-O", fields])
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


def _wait(job: submitit.Job, stage: str, cluster: str, resources: Mapping):
    """job.result(), once a `_QueueWatch` says a Slurm job is over."""
    if cluster == "slurm":
        watch = _QueueWatch(job, stage, float(resources.get("node_wait_min", 30)))
        while not watch.over():
            time.sleep(1)
            watch.check()
    return job.result()


def _why_failed(job: submitit.Job, error: Exception, resources: Mapping) -> str:
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


@contextlib.contextmanager
def _cancel_on_signal(*jobs: submitit.Job):
    """If this waiting process is stopped, take its jobs down with it: no orphans on the cluster."""

    def cancel(signum, _frame):
        ids = ", ".join(job.job_id for job in jobs)
        log(f"received {signal.Signals(signum).name}: cancelling job {ids}")
        for job in jobs:
            _cancel(job)
        if stopping := _stop_marker():
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


def cancel_jobs_on_sigterm() -> None:
    """Make SIGTERM to Snakemake cancel the cluster jobs it is waiting on.

    Snakemake reads SIGTERM as "finish the running jobs, then exit", which for jobs that run for
    hours leaves the cluster busy after the user asked to stop. Called from the Snakefile's
    `onstart`, this passes the signal on to the waiting submitters, which cancel their jobs and
    exit, then lets Snakemake's own handler wind down.
    """
    graceful = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
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


def submit(stage: str, kwargs: dict, resources: Mapping, job_name: str, folder: str) -> dict:
    """Run `stage` as a submitit job and wait for it; raise SystemExit(1) if it failed."""
    cluster, parameters = executor_parameters(resources, job_name)
    executor = submitit.AutoExecutor(
        folder=folder, cluster=cluster, slurm_max_num_timeout=int(resources.get("requeues", 3))
    )
    executor.update_parameters(**parameters)
    try:
        job = executor.submit(StageCall(stage, kwargs))
    except Exception as error:  # sbatch's refusal arrives as whatever submitit wraps it in
        log(
            f"{stage}: {cluster} refused the job {parameters}:\n{error}\n"
            "Check the partition, gpus, cpus_per_task, mem_mb and runtime that your profile "
            "(profiles/slurm/config.yaml) gives this rule against what `sinfo` shows."
        )
        raise SystemExit(1) from None
    with _cancel_on_signal(job):
        log(f"{stage}: submitted job {job.job_id} to {cluster} with {parameters}")
        log(f"{stage}: job stdout {job.paths.stdout}")
        log(f"{stage}: job stderr {job.paths.stderr}")
        try:
            result = _wait(job, stage, cluster, resources)
        except (
            submitit.core.utils.FailedJobError,
            submitit.core.utils.UncompletedJobError,
        ) as error:
            log(f"{stage}: job {job.job_id} failed (state {job.state}):")
            print(str(error), file=sys.stderr, flush=True)
            if why := _why_failed(job, error, resources):
                log(f"{stage}: {why}")
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
    cluster, parameters = executor_parameters(resources, job_name)
    if resources.get("array_parallelism"):
        parameters["slurm_array_parallelism"] = int(resources["array_parallelism"])
    executor = submitit.AutoExecutor(
        folder=folder, cluster=cluster, slurm_max_num_timeout=int(resources.get("requeues", 3))
    )
    executor.update_parameters(**parameters)
    try:
        with executor.batch():
            jobs = [executor.submit(StageCall(stage, kwargs)) for kwargs in calls]
    except Exception as error:  # sbatch's refusal arrives as whatever submitit wraps it in
        log(
            f"{stage}: {cluster} refused the job array {parameters}:\n{error}\n"
            "Check the partition, gpus, cpus_per_task, mem_mb and runtime that your profile "
            "(profiles/slurm/config.yaml) gives this rule against what `sinfo` shows."
        )
        raise SystemExit(1) from None
    with _cancel_on_signal(*jobs):
        log(f"{stage}: submitted {len(jobs)} array tasks {jobs[0].job_id}..{jobs[-1].job_id} "
            f"to {cluster} with {parameters}")  # fmt: skip
        log(f"{stage}: task stdout {jobs[0].paths.stdout} (and so on)")
        results, failed = {}, []
        for job in jobs:
            try:
                results[job.job_id] = _wait(job, stage, cluster, resources)
            except (
                submitit.core.utils.FailedJobError,
                submitit.core.utils.UncompletedJobError,
            ) as error:
                log(f"{stage}: array task {job.job_id} failed:")
                print(str(error), file=sys.stderr, flush=True)
                if why := _why_failed(job, error, resources):
                    log(f"{stage}: {why}")
                failed.append(job.job_id)
            except SystemExit:  # a task no node can start (see _QueueWatch): nor can the rest
                for other in jobs:
                    with contextlib.suppress(Exception):
                        other.cancel(check=False)
                raise
    if failed:
        log(f"{stage}: {len(failed)} of {len(jobs)} array tasks failed: {', '.join(failed)}")
        raise SystemExit(1)
    log(f"{stage}: all {len(jobs)} array tasks finished")
    return results


def _stop_marker() -> Path | None:
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


def from_snakemake(smk) -> None:
    """Entry point of workflow/scripts/submit_stage.py: a rule's files and params become kwargs."""
    stopping = _stop_marker()
    if stopping and stopping.exists():
        log(f"{smk.params.stage}: not submitted: this Snakemake run is being stopped")
        raise SystemExit(1)
    kwargs = {}
    for files in (smk.input, smk.output):
        for name, value in files.items():
            kwargs[name] = str(value) if isinstance(value, str) else [str(v) for v in value]
    if "config" in smk.params.keys():
        kwargs["config"] = dict(smk.params.config)
    stage = smk.params.stage
    name = "-".join([stage, *(str(v) for v in smk.wildcards)])
    log_path = Path(smk.log[0])
    resources, folder = dict(smk.resources.items()), str(log_path.parent / "submitit")
    with open(log_path, "a") as stream, contextlib.redirect_stdout(_Tee(sys.stdout, stream)):
        if stage == "segment":  # one job array over the volume's blocks, not one job
            from quantpipe.stages.segment import run_as_array

            run_as_array(**kwargs, tasks=smk.params.tasks, resources=resources,
                         job_name=name, folder=folder, log=log)  # fmt: skip
        else:
            submit(stage, kwargs, resources, name, folder)


class _Tee:
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> None:
        for stream in self.streams:
            stream.write(text)
            stream.flush()

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()
