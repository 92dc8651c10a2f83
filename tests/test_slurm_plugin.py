"""The executor plugin `quantpipe` on the real local Slurm: one Snakemake process submits every
job through submitit and asks about all of them together. Small generated workflows of shell
jobs; the quantpipe DAG through the plugin is in test_slurm_workflow.py."""

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO
from slurmtools import (
    AS_FROM_A_TERMINAL,
    STACKS_ON_SIGUSR1,
    Output,
    accounted,
    local_slurm,
    message_timeout_s,
    run,
    stopped,
    unavailable,
)
from test_faults import node_of, restore, set_node
from test_slurm_submit import wait_for
from workflowtools import SNAKEMAKE, user_env

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
PLUGIN = ["--executor", "quantpipe", "--jobs", "300", "--show-failed-logs"]
IN_FLIGHT = 200


def scale_benchmark():
    spec = importlib.util.spec_from_file_location(
        "scale_benchmark", REPO / "workflow" / "scripts" / "scale_benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_rule(folder: Path, shell: str, resources: str, jobs: int = 1, retries: int = 0) -> None:
    """A Snakefile of `jobs` jobs of one rule `work` that runs `shell`, with a log each."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Snakefile").write_text(
        f'rule all:\n    input: expand("out/{{i}}.txt", i=range({jobs}))\n\n'
        f'rule work:\n    output: "out/{{i}}.txt"\n    log: "logs/work/{{i}}.log"\n'
        f"    retries: {retries}\n    resources: {resources}\n    shell: {shell!r}\n"
    )


def plugin_run(folder: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *PLUGIN, *args], cwd=folder,
                          env={**user_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=1200)  # fmt: skip


def rpc_counts() -> dict[str, int]:
    return scale_benchmark().rpc_counts(["sdiag"])


def test_200_jobs_in_flight_from_one_snakemake_with_status_calls_bounded_by_time(cluster, tmp_path):
    """The jobs wait for a file the test writes once all 200 are submitted (so all are in flight
    together, however slowly a small machine starts them); all complete, the Snakemake process
    starts no waiting process per job, and slurmctld's job-info calls (squeue) stay within one
    per 2 s of the run and, over the whole run, fewer than one round of per-job queries. The test
    itself asks Slurm nothing meanwhile."""
    if cluster["cpus"] < IN_FLIGHT:
        unavailable(
            f"the local Slurm's node has {cluster['cpus']} CPUs, fewer than {IN_FLIGHT} jobs: "
            "restart it with QUANTPIPE_SLURM_CPUS=256 (tests/run.sh does)"
        )
    one_rule(tmp_path, "until test -e release; do sleep 2; done; hostname > {output}",
             "slurm_partition='cpu', mem_mb=100, runtime=30, cpus_per_task=1",
             jobs=IN_FLIGHT)  # fmt: skip
    before = rpc_counts()
    started = time.monotonic()
    process = subprocess.Popen([SNAKEMAKE, *PLUGIN], cwd=tmp_path, env=user_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    output, most_children, released = Output(process), 0, False
    with cleaned_up(process, tmp_path):
        while process.poll() is None:
            most_children = max(most_children, len(_children(process.pid)))
            if not released and _submitted(tmp_path) == IN_FLIGHT:
                (tmp_path / "release").touch()
                released = True
            time.sleep(0.5)
        text = output.wait(timeout=60)
    wall = time.monotonic() - started
    after = rpc_counts()
    assert released and process.returncode == 0, text[-4000:]
    assert len(list((tmp_path / "out").glob("*.txt"))) == IN_FLIGHT
    rows = accounted(tmp_path, IN_FLIGHT)
    assert len(rows) == IN_FLIGHT and all(row["State"] == "COMPLETED" for row in rows)
    # squeue, sbatch and sinfo come and go; nothing waits per job
    assert most_children <= 3, most_children
    calls = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert calls["REQUEST_SUBMIT_BATCH_JOB"] == IN_FLIGHT
    assert calls.get("REQUEST_JOB_INFO", 0) <= wall / 2 + 2, (calls, wall)
    # A status check per job would make IN_FLIGHT calls in a single round (a loaded machine starts
    # the jobs slowly, so the run's length, not a fixed count, bounds the batched checks).
    assert calls.get("REQUEST_JOB_INFO", 0) < IN_FLIGHT, calls


@contextlib.contextmanager
def cleaned_up(process: subprocess.Popen, folder: Path):
    """However the test ends (a failed assertion, its time limit), the run stops and none of its
    jobs stays in the queue, where it would hold the node's CPUs for the next tests: Snakemake is
    interrupted as Ctrl-C would (the plugin cancels its jobs), and what is left is cancelled."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        if left := _queued(folder):
            run(["scancel", *left])


def _submitted(folder: Path) -> int:
    """Jobs whose rule log says they were submitted (the plugin writes it)."""
    logs = (folder / "logs" / "work").glob("*.log")
    return sum(1 for log in logs if "submitted job" in log.read_text())


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_slurmctld_restarted_mid_run_loses_no_job_and_submits_none_twice(cluster, tmp_path):
    """slurmctld stops while jobs run and others wait to be submitted: status checks back off,
    submissions are retried, and once it is back every job completes, each submitted once."""
    jobs = 12
    one_rule(tmp_path, "echo started; sleep 8; hostname > {output}",
             "slurm_partition='cpu', mem_mb=100, runtime=5", jobs=jobs)  # fmt: skip
    process = subprocess.Popen([SNAKEMAKE, *PLUGIN[:2], "--jobs", "4"], cwd=tmp_path,
                               env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    said = Output(process)
    with cleaned_up(process, tmp_path):
        try:
            # their commands run (past srun, which needs slurmctld), so they end while it is away
            wait_for(lambda: _started(tmp_path) == 4, 300, "the first 4 jobs' commands to start")
            # With slurmctld away each client call tries for MessageTimeout before it fails: a
            # status check under way, then the first sbatch, come before the retry is logged.
            patience = 2 * message_timeout_s() + 60
            local_slurm("stop-ctld")
            # the running jobs end meanwhile; their successors cannot be submitted
            wait_for(lambda: "submitting again in" in said.text(), patience, "a submission retried")
            assert "checking again in" in said.text()
        finally:
            local_slurm("start-ctld")
        text = said.wait(timeout=600)
    assert process.returncode == 0, text[-4000:]
    assert len(list((tmp_path / "out").glob("*.txt"))) == jobs
    rows = accounted(tmp_path, jobs)
    assert len(rows) == jobs and all(row["State"] == "COMPLETED" for row in rows), rows


def _started(folder: Path) -> int:
    outputs = (folder / "logs" / "work" / "submitit").glob("*_log.out")
    return sum(1 for out in outputs if "started" in out.read_text())


def _queued(folder: Path) -> list[str]:
    out = run(["squeue", "-h", "-o", "%i|%Z"]).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.endswith(f"|{folder}")]


@pytest.mark.parametrize(
    "resources,reason",
    [("slurm_partition='nosuch'", "invalid partition"),
     ("slurm_partition='gpu', gpus=64", "not available")],
    ids=["unknown-partition", "too-many-gpus"],
)  # fmt: skip
def test_a_request_the_cluster_refuses_fails_at_once_naming_the_profile(
    cluster, tmp_path, resources, reason
):
    one_rule(tmp_path, "hostname > {output}", resources)
    done = plugin_run(tmp_path)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert reason in text.lower() and "profiles/slurm/config.yaml" in text
    assert not _queued(tmp_path)


def test_a_failed_jobs_own_error_is_in_the_snakemake_output_with_its_job(cluster, tmp_path):
    one_rule(tmp_path, "echo the-job-said-this >&2; exit 3",
             "slurm_partition='cpu', mem_mb=100, runtime=5")  # fmt: skip
    done = plugin_run(tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode != 0
    (job,) = [row["JobID"] for row in accounted(tmp_path, 1)]
    assert f"job {job} failed" in text and "the-job-said-this" in text, text[-4000:]


def test_running_jobs_show_their_progress_in_the_snakemake_output(cluster, tmp_path):
    one_rule(tmp_path, "for i in 1 2 3 4 5 6 7 8; do echo step $i of 8; sleep 1; done; "
             "hostname > {output}", "slurm_partition='cpu', mem_mb=100, runtime=5")  # fmt: skip
    done = plugin_run(tmp_path, env={"QUANTPIPE_PROGRESS_S": "1"})
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-4000:]
    assert "work-0 job " in text and ": RUNNING for " in text and " of 8" in text, text[-4000:]


def test_a_job_out_of_memory_is_retried_with_twice_the_memory(cluster, tmp_path):
    # held past two polls of the local Slurm's memory poller (every 10 s: local_slurm.sh)
    eat = "python3 -c 'import time; block = bytearray(600 * 2**20); time.sleep(25)'"
    one_rule(tmp_path, f"{eat}; hostname > {{output}}",
             "slurm_partition='cpu', mem_mb=lambda wildcards, attempt: 300 * 4**attempt // 4, "
             "runtime=5", retries=1)  # fmt: skip
    done = plugin_run(tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-4000:]
    first, second = sorted(accounted(tmp_path, 2), key=lambda row: int(row["JobID"]))
    assert first["State"] in ("FAILED", "OUT_OF_MEMORY") and second["State"] == "COMPLETED"
    assert f"job {first['JobID']} ran out of memory (mem_mb=300 given" in text, text[-4000:]
    assert "Trying to restart job" in text


def test_a_job_no_node_can_start_is_cancelled_after_node_wait_min(cluster, tmp_path):
    one_rule(tmp_path, "hostname > {output}",
             "slurm_partition='cpu', mem_mb=100, runtime=5, node_wait_min=0.25")  # fmt: skip
    node = node_of("cpu")
    try:
        set_node(node, "drain")
        done = plugin_run(tmp_path)
    finally:
        restore(node)
    text = done.stdout + done.stderr
    assert done.returncode != 0
    (job,) = [row["JobID"] for row in accounted(tmp_path, 1)]
    assert f"job {job} is pending" in text and f"scontrol update nodename={node}" in text
    assert f"cancelling job {job}" in text, text[-4000:]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_snakemake_cancels_every_job_of_the_run(cluster, tmp_path, how):
    """Ctrl-C (the terminal signals the whole process group) or SIGTERM to Snakemake: every job
    of the run is cancelled, none is submitted again. SIGTERM needs the quantpipe Snakefile's
    `onstart` (signals.cancel_jobs_on_sigterm), which this Snakefile has too."""
    one_rule(tmp_path, "sleep 300; hostname > {output}",
             "slurm_partition='cpu', mem_mb=100, runtime=10", jobs=5)  # fmt: skip
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        "from quantpipe.submit import cancel_jobs_on_sigterm\n\n"
        "onstart:\n    cancel_jobs_on_sigterm(workflow.executor_plugin.name == 'quantpipe')\n\n"
        + STACKS_ON_SIGUSR1
        + snakefile.read_text()
    )
    process = subprocess.Popen([*AS_FROM_A_TERMINAL, SNAKEMAKE, *PLUGIN], cwd=tmp_path,
                               env={**user_env(), "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    said = Output(process)
    try:
        wait_for(lambda: len(_queued(tmp_path)) == 5, 120, "5 jobs in squeue")
        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        output = stopped(process, said, 120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    wait_for(lambda: not _queued(tmp_path), 60, "the run's jobs to leave squeue")
    rows = accounted(tmp_path, 5)
    assert len(rows) == 5 and all(row["State"].startswith("CANCELLED") for row in rows), output


def test_a_job_requeued_after_its_node_went_down_is_waited_on_until_its_last_attempt(
    cluster, tmp_path
):
    """The node goes DOWN under a running job: Slurm requeues it (sacct's newest record says
    NODE_FAIL for a while); the run waits for the job's second attempt and succeeds, with one
    submission."""
    one_rule(tmp_path, "echo attempt; sleep 20; hostname > {output}",
             "slurm_partition='cpu', mem_mb=100, runtime=5")  # fmt: skip
    process = subprocess.Popen([SNAKEMAKE, *PLUGIN], cwd=tmp_path, env=user_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    said = Output(process)
    with cleaned_up(process, tmp_path):
        # the run has seen its first attempt running: only then is a restart news to it
        wait_for(lambda: " RUNNING on " in said.text(), 120, "the run to see its job running")
        node = node_of("cpu")
        try:
            set_node(node, "down")
        finally:
            restore(node)
        text = said.wait(timeout=600)
    assert process.returncode == 0, text[-4000:]
    assert "requeued by Slurm (restart 1" in text, text[-4000:]
    (row,) = accounted(tmp_path, 1)
    assert row["State"] == "COMPLETED"
