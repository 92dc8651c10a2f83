"""The submit layer on the real local Slurm: refusals, cancellation, failures, requeue + resume."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from quantpipe.models.build import load_trained
from quantpipe.submit import submit
from slurmtools import run, wait_sacct

pytestmark = pytest.mark.slurm
CPU = {"slurm_partition": "cpu", "cpus_per_task": 2, "mem_mb": 2000, "runtime": 10}
# 2,000 training images (`images`) and 1,000 validation images: a few seconds an epoch.
TRAIN = {
    "model": "resnet18_cifar", "width": 4, "num_classes": 10, "seed": 5, "val_size": 1000,
    "images": 2000, "batch_size": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "label_smoothing": 0.1, "device": "auto", "log_every": 5,
}  # fmt: skip


def submitter(tmp_path, stage, kwargs, resources, name, env=None) -> subprocess.Popen:
    """The submit layer in its own process, as a Snakemake job runs it (`env`: more of its
    environment)."""
    script = (
        "import sys\nfrom quantpipe.submit import submit\n"
        f"submit({stage!r}, {kwargs!r}, {resources!r}, {name!r}, {str(tmp_path / 'logs')!r})\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip


def job_id_of(name: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = run(["squeue", "-h", "-n", name, "-o", "%i"]).stdout.split()
        if ids:
            return ids[0]
        time.sleep(0.2)
    pytest.fail(f"no job named {name} appeared in squeue")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def long_training(tmp_path) -> dict:
    return {"data": str(pytest.cifar_dir), "model": str(tmp_path / "run" / "model.pt"),
            "metrics": str(tmp_path / "run" / "metrics.json"),
            "config": {**TRAIN, "epochs": 50}}  # fmt: skip


@pytest.fixture(autouse=True)
def _data(cifar_dir, cluster):
    pytest.cifar_dir = cifar_dir


@pytest.mark.parametrize(
    "resources,reason",
    [({"slurm_partition": "nosuch"}, "invalid partition"),
     ({"slurm_partition": "gpu", "gpus": 64}, "not available")],
    ids=["unknown-partition", "too-many-gpus"],
)  # fmt: skip
def test_an_impossible_request_fails_at_once(tmp_path, capsys, resources, reason):
    """Refused at submission, never waited on: no job of its name reached Slurm, and the
    submitter said nothing of a job (no id, no state); no clock, as the machine is shared."""
    name = f"qp-impossible-{tmp_path.name}"
    with pytest.raises(SystemExit) as failure:
        submit("report", {}, resources, name, str(tmp_path))
    assert failure.value.code == 1
    said = capsys.readouterr().out
    assert "refused the job" in said and reason in said.lower() and "profiles/slurm" in said
    assert "submitted job" not in said and "PENDING" not in said, said
    accounted = run(["sacct", "-n", "-X", "--name", name, "-S", "now-1hours", "-o", "JobID"])
    assert not accounted.stdout.strip(), accounted.stdout


def test_a_cancelled_job_is_reported_failed(tmp_path):
    name = "qp-test-scancel"
    process = submitter(tmp_path, "train", long_training(tmp_path), CPU, name)
    job = job_id_of(name)
    wait_for(
        lambda: "RUNNING" in run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout, 60, "RUNNING"
    )
    run(["scancel", job])
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert f"train: job {job} failed (state CANCELLED" in output
    assert f"job {job} was cancelled (`scancel` or an administrator): rerun Snakemake" in output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_submitter_cancels_its_job(tmp_path, signum):
    name = f"qp-test-stop-{signum}"
    process = submitter(tmp_path, "train", long_training(tmp_path), CPU, name)
    job = job_id_of(name)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"cancelling job {job}" in output
    assert wait_sacct(job)["State"].startswith("CANCELLED")


def restarts(job: str) -> int:
    found = re.search(r"Restarts=(\d+)", run(["scontrol", "show", "job", job, "-o"]).stdout)
    return int(found[1]) if found else 0


def seconds_run(job: str) -> int:
    """Seconds the job has run so far (scontrol's RunTime is [D-]HH:MM:SS)."""
    shown = run(["scontrol", "show", "job", job, "-o"]).stdout
    days, hours, minutes, seconds = re.search(
        r"RunTime=(?:(\d+)-)?(\d+):(\d+):(\d+)", shown
    ).groups()
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)


def test_a_training_job_at_its_time_limit_resumes_and_matches_an_uninterrupted_run(
    tmp_path, request
):
    """A real time limit: once the first epoch's checkpoint exists, the job's limit is moved to
    40 to 90 s from now, so Slurm sends submitit's warning (USR2, signal_delay_s = 60 s before
    the end) at its next time-limit check, at most 30 s later; submitit checkpoints and requeues
    the job, which resumes and ends with the weights of a run that was never stopped.

    On one CPU: an epoch takes about 1.4 s on one thread on an idle machine, so 45 epochs
    outlast the warning even there (on two threads this small network trains up to twice as fast
    for about the same CPU, and could end before its warning on a quiet machine)."""
    # The warning comes at most ~40 s after the first checkpoint: about epoch 30 on an idle
    # machine (epoch 15, 20 s after it, in one run beside another test).
    config = {**TRAIN, "epochs": 45}
    one_cpu = {**CPU, "cpus_per_task": 1}
    name = "qp-test-time-limit"
    files = {"data": str(pytest.cifar_dir), "model": str(tmp_path / "slurm" / "model.pt"),
             "metrics": str(tmp_path / "slurm" / "metrics.json"), "config": config}  # fmt: skip
    process = submitter(tmp_path, "train", files, one_cpu, name, {"QUANTPIPE_PROGRESS_S": "2"})
    job = job_id_of(name)
    # The same training, uninterrupted, with the job's thread count: beside the job, as this
    # process would otherwise only wait on it.
    straight = {**files, "model": str(tmp_path / "straight" / "model.pt"),
                "metrics": str(tmp_path / "straight" / "metrics.json")}  # fmt: skip
    twin = subprocess.Popen(
        [sys.executable, "-c", "from quantpipe.stages.train import run\n"
         f"run({straight['data']!r}, {straight['model']!r}, {straight['metrics']!r}, {config!r})"],
        stdout=(tmp_path / "straight.log").open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "SLURM_CPUS_PER_TASK": str(one_cpu["cpus_per_task"])},
    )  # fmt: skip
    request.addfinalizer(twin.kill)  # a failed test leaves no training behind
    checkpoint = tmp_path / "slurm" / "checkpoints" / "last.pt"
    wait_for(checkpoint.exists, 300, "the first epoch checkpoint")
    # Limits are whole minutes. A limit already passed would end the job (TIMEOUT) with no
    # warning (on a loaded machine the first epoch can take over a minute). slurmctld checks
    # limits every 30 s and warns once the end is within signal_delay_s + 30 s: 40 to 90 s left
    # gets the warning at the next check, 10 s or more before the end.
    elapsed = seconds_run(job)
    limit = math.ceil((elapsed + 40) / 60)
    time.sleep(max(0, limit * 60 - elapsed - 90))
    assert run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limit}"]).returncode == 0
    wait_for(lambda: restarts(job) >= 1, 240, "submitit's requeue at the time limit")
    # The next attempt gets the profile's limit back and runs to the end.
    run(["scontrol", "update", f"JobId={job}", f"TimeLimit={one_cpu['runtime']}"])
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    # While it waited, the submitter showed the job's state and its latest training line.
    assert re.search(rf"{name} job {job}: RUNNING for \S+: .*train: epoch \d+/45 step", output)
    # submitit's own account, in the job's output: the warning caught, the job requeued.
    said = "".join(path.read_text() for path in (tmp_path / "logs").glob(f"{job}_*log.*"))
    assert "Caught signal SIGUSR2" in said and f"Requeued job {job}" in said, said[-3000:]
    record = torch.load(tmp_path / "slurm" / "model.pt", weights_only=True)["record"]
    assert record["resumed_from_epoch"] >= 1, "the requeued job should resume, not start over"
    assert record["provenance"]["slurm_job_id"] == job
    assert twin.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    resumed, _ = load_trained(files["model"])
    uninterrupted, _ = load_trained(straight["model"])
    for (key, a), (_, b) in zip(
        resumed.state_dict().items(), uninterrupted.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key


def test_a_job_sees_the_other_jobs_on_its_node(tmp_path):
    """What a benchmark row records (quantpipe.submit.neighbours), from a real job on the node:
    squeue's running jobs there, its own left out."""
    neighbour = run(["sbatch", "--parsable", "-p", "cpu", "-c", "1", "--mem", "100", "-J",
                     "qp-test-neighbour", "-o", "/dev/null", "--wrap", "sleep 120"])  # fmt: skip
    assert neighbour.returncode == 0, neighbour.stderr
    neighbour_id = neighbour.stdout.strip().split(";")[0]
    try:
        wait_for(
            lambda: "RUNNING" in run(["squeue", "-h", "-j", neighbour_id, "-o", "%T"]).stdout,
            60,
            "the neighbour to run",
        )
        probe = (
            "import json; from quantpipe.submit.neighbours import on_this_node; "
            "print(json.dumps(on_this_node()))"
        )
        out = tmp_path / "probe.out"
        done = run(["sbatch", "--wait", "-p", "cpu", "-c", "1", "--mem", "500", "-o", str(out),
                    "--wrap", f"{sys.executable} -c '{probe}'"], timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr + out.read_text()
        seen = json.loads(out.read_text().strip().splitlines()[-1])
        assert seen == {"jobs": [neighbour_id], "reason": ""}
    finally:
        run(["scancel", neighbour_id])
