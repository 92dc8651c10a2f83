"""Faults on the local Slurm and bad input to the workflow: clear errors, nothing lost."""

import subprocess
import time

import pytest
import torch
import yaml
from conftest import REPO
from quantpipe.submit import submit
from slurmtools import Output, local_slurm, run, wait_sacct
from test_slurm_submit import CPU, TRAIN, job_id_of, submitter, wait_for
from workflowtools import (
    SNAKEMAKE,
    copy_repository,
    processes_under,
    snakemake,
    tiny_config,
    user_env,
)


@pytest.fixture(autouse=True)
def _data(cifar_dir):
    pytest.cifar_dir = cifar_dir


def training_files(tmp_path, epochs: int) -> dict:
    return {"data": str(pytest.cifar_dir), "model": str(tmp_path / "run" / "model.pt"),
            "metrics": str(tmp_path / "run" / "metrics.json"),
            "config": {**TRAIN, "epochs": epochs}}  # fmt: skip


@pytest.mark.slurm
def test_a_cancelled_training_keeps_its_checkpoint_and_a_rerun_resumes(cluster, tmp_path):
    files = training_files(tmp_path, epochs=3)
    process = submitter(tmp_path, "train", files, CPU, "qp-test-cancel-resume")
    job = job_id_of("qp-test-cancel-resume")
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    wait_for(checkpoint.exists, 300, "the first epoch checkpoint")
    run(["scancel", job])
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert f"job {job} was cancelled (`scancel` or an administrator): rerun Snakemake" in output
    assert checkpoint.exists() and not (tmp_path / "run" / "model.pt").exists()
    result = submit("train", files, CPU, "qp-test-rerun", str(tmp_path / "logs"))
    assert result["resumed_from_epoch"] >= 1


@pytest.mark.slurm
def test_accounting_down_neither_hangs_nor_fails(cluster, tmp_path):
    """slurmdbd stops under a running job; a second job, submitted during the outage, runs out of
    memory. Its submitter waits, with status checks that back off, until accounting is back, and
    then reports it with the reason; the first job finishes; sacct then knows both."""
    files = training_files(tmp_path / "a", epochs=1)
    process = submitter(tmp_path / "a", "train", files, CPU, "qp-test-dbd")
    job = job_id_of("qp-test-dbd")
    local_slurm("stop-dbd")
    try:
        small = {**CPU, "mem_mb": 300}
        oom = submitter(tmp_path / "b", "train", training_files(tmp_path / "b", 20), small,
                        "qp-test-dbd-oom")  # fmt: skip
        oom_job = job_id_of("qp-test-dbd-oom")
        said = Output(oom)
        # squeue has seen the job end; sacct cannot confirm it: the submitter backs off, twice
        wait_for(lambda: said.text().count("but accounting does not answer") >= 2, 300,
                 "the failed job's submitter to back off while accounting is down")  # fmt: skip
        assert oom.poll() is None, "the failed job was reported before accounting came back"
    finally:
        local_slurm("start-dbd")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert torch.load(files["model"], weights_only=True)["record"]["epochs_run_here"] == 1
    oom_output = said.wait(timeout=180)
    print(output, oom_output)
    assert oom.returncode == 1, oom_output
    assert "checking again in 2 s" in oom_output and "checking again in 4 s" in oom_output
    assert f"job {oom_job} ran out of memory (mem_mb=300 given" in oom_output
    assert wait_sacct(job)["State"] == "COMPLETED"
    assert wait_sacct(oom_job)["State"] in ("FAILED", "OUT_OF_MEMORY")


@pytest.mark.slurm
def test_a_job_over_its_memory_limit_fails_with_an_out_of_memory_message(cluster, tmp_path):
    files = training_files(tmp_path, epochs=20)  # killed long before it could finish
    process = submitter(tmp_path, "train", files, {**CPU, "mem_mb": 300}, "qp-test-oom")
    job = job_id_of("qp-test-oom")
    output, _ = process.communicate(timeout=120)
    print(output)
    assert process.returncode == 1, output
    assert f"job {job} ran out of memory (mem_mb=300 given, it used more than " in output
    assert "retried with more if `retries` allows; raise mem_mb in the profile" in output
    row = wait_sacct(job, need=("AllocTRES",))
    assert row["State"] in ("FAILED", "OUT_OF_MEMORY") and "mem=300M" in row["AllocTRES"]
    assert not (tmp_path / "run" / "model.pt").exists()


def test_the_slurm_profile_doubles_memory_on_a_retry():
    """Snakemake evaluates a resource string as a Python expression with `attempt` in scope (the
    workflow test below shows the retry getting what the expression says)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["retries"] >= 1
    rules = {"default": profile["default-resources"], **profile["set-resources"]}
    for rule, resources in rules.items():
        if "mem_mb" in resources:
            first, second = (eval(str(resources["mem_mb"]), {"attempt": a}) for a in (1, 2))
            assert second >= 2 * first, (rule, resources["mem_mb"])


@pytest.mark.slurm
@pytest.mark.workflow
def test_a_rule_that_ran_out_of_memory_is_retried_with_more(cluster, tmp_path):
    copy_repository(tmp_path)
    tiny_config(tmp_path)
    profile = yaml.safe_load((tmp_path / "profiles" / "slurm" / "config.yaml").read_text())
    # The shipped profile doubles mem_mb on the retry; here the first attempt gets too little
    # for certain and the second plenty, so the test does not hinge on training's peak memory.
    profile["set-resources"]["train"]["mem_mb"] = "300 if attempt == 1 else 4000"
    (tmp_path / "profiles" / "oom").mkdir()
    (tmp_path / "profiles" / "oom" / "config.yaml").write_text(yaml.safe_dump(profile))
    target = "results/train/resnet18_cifar-w4-s0/model.pt"
    done = snakemake(tmp_path, "--config", "widths=[4]", "val_size=45000", "--", target,
                     profile="profiles/oom")  # fmt: skip
    fields = ["JobID", "JobName", "State", "ReqMem", "WorkDir"]
    out = run(["sacct", "-X", "-P", "-n", "-S", "now-1hour", "-o", ",".join(fields)]).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    attempts = [
        r for r in rows if r["JobName"].startswith("train-") and r["WorkDir"] == str(tmp_path)
    ]
    assert [r["ReqMem"] for r in attempts] == ["300M", "4000M"]
    assert [wait_sacct(r["JobID"])["State"] for r in attempts] == ["FAILED", "COMPLETED"]
    # Snakemake shows the failed attempt's log (show-failed-logs) before it retries the rule
    first = attempts[0]["JobID"]
    assert f"job {first} ran out of memory (mem_mb=300 given" in done.stdout + done.stderr
    assert "Trying to restart job" in done.stdout + done.stderr
    submitit_log = tmp_path / "logs" / "train" / "submitit" / f"{first}_0_log.err"
    assert "exceeded memory limit" in submitit_log.read_text()
    assert torch.load(tmp_path / target, weights_only=True)["record"]["epochs_run_here"] == 1


def node_of(partition: str) -> str:
    return run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"]).stdout.split()[0]


def set_node(node: str, state: str) -> None:
    done = run(
        ["scontrol", "update", f"nodename={node}", f"state={state}", "reason=quantpipe test"]
    )
    assert done.returncode == 0, done.stderr


def restore(node: str) -> None:
    """Return the node to service, whatever a test did to it (DOWN nodes come back by themselves
    on the local Slurm, ReturnToService=2; a drained one needs state=resume)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"]).stdout.split()
        if state and state[0].rstrip("*~#") in ("idle", "mix", "alloc", "comp"):
            return
        run(["scontrol", "update", f"nodename={node}", "state=resume"])
        time.sleep(0.5)


@pytest.mark.slurm
def test_a_drained_node_finishes_its_job_and_a_job_waiting_on_it_is_reported(cluster, tmp_path):
    files = training_files(tmp_path / "a", epochs=3)  # still running when the node is drained
    running = submitter(tmp_path / "a", "train", files, CPU, "qp-test-drain-running")
    job = job_id_of("qp-test-drain-running")
    wait_for(lambda: run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING",
             120, "RUNNING")  # fmt: skip
    node = node_of("cpu")
    try:
        set_node(node, "drain")
        patient = {**CPU, "node_wait_min": 0.25}
        waiting = submitter(tmp_path / "b", "train", training_files(tmp_path / "b", 1), patient,
                            "qp-test-drain-waiting")  # fmt: skip
        waiting_job = job_id_of("qp-test-drain-waiting")
        said, _ = waiting.communicate(timeout=120)
    finally:
        restore(node)
    print(said)
    assert waiting.returncode == 1, said
    assert f"job {waiting_job} is pending" in said and "no node of partition cpu" in said
    assert f"{node} (dr" in said and "quantpipe test" in said
    assert f"scontrol update nodename={node} state=resume" in said
    assert f"cancelling job {waiting_job}" in said
    assert wait_sacct(waiting_job)["State"].startswith("CANCELLED")
    output, _ = running.communicate(timeout=300)
    assert running.returncode == 0, output
    record = torch.load(files["model"], weights_only=True)["record"]
    assert record["resumed_from_epoch"] == 0 and record["epochs_run_here"] == 3


@pytest.mark.slurm
def test_a_node_set_down_requeues_its_job_which_resumes(cluster, tmp_path):
    files = training_files(tmp_path, epochs=4)  # still running when the node goes down
    process = submitter(tmp_path, "train", files, CPU, "qp-test-down")
    job = job_id_of("qp-test-down")
    wait_for((tmp_path / "run" / "checkpoints" / "last.pt").exists, 300, "the first checkpoint")
    node = run(["squeue", "-h", "-j", job, "-o", "%N"]).stdout.strip()
    try:
        set_node(node, "down")
    finally:
        restore(node)
    output, _ = process.communicate(timeout=600)
    print(output)
    assert process.returncode == 0, output
    assert "requeued by Slurm (restart 1: a node failure" in output
    assert torch.load(files["model"], weights_only=True)["record"]["resumed_from_epoch"] >= 1


@pytest.mark.workflow
@pytest.mark.parametrize(
    "override,named",
    [("calibration_sizes=[0]", "0 is less than the minimum of 1"),
     ("methods=[int4]", "'int4' is not one of"),
     ("seeds=[]", "should be non-empty"),
     ("calibration_sizes=[40000] val_size=20000", "exceed the training split")],
)  # fmt: skip
def test_bad_config_is_refused_before_any_job(tmp_path, override, named):
    copy_repository(tmp_path)
    tiny_config(tmp_path)
    done = snakemake(tmp_path, "--config", *override.split(), check=False)
    assert done.returncode != 0
    assert named in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_a_second_snakemake_in_the_same_directory_is_refused(tmp_path):
    copy_repository(tmp_path)
    config = tiny_config(tmp_path)
    config["train"]["epochs"] = 50
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    command = [SNAKEMAKE, "--profile", "profiles/local"]
    first = subprocess.Popen(command, cwd=tmp_path, env=user_env(), **quiet)
    try:
        submitted = tmp_path / "logs" / "train" / "submitit"
        wait_for(lambda: any(submitted.glob("*_submitted.pkl")), 120, "the first run's training")
        second = snakemake(tmp_path, check=False)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
    finally:
        first.terminate()
        first.wait(timeout=120)
    # Stopping the first run stopped its training too: no process of this directory runs on.
    wait_for(lambda: not processes_under(tmp_path), 60, "the stopped run's processes to end")
