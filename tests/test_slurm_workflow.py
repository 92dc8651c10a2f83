"""`snakemake --profile slurm`, exactly as the README gives it, on the real local Slurm."""

import datetime
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml
from slurmtools import run, wait_sacct
from workflowtools import SNAKEMAKE, copy_repository, snakemake, tiny_config, user_env

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


def accounted_jobs(since: str, tag: str) -> pd.DataFrame:
    fields = ["JobID", "JobName", "Partition", "State", "AllocTRES"]
    # Partition fills in a few seconds after a fast job ends: wait for it.
    for _ in range(50):
        out = run(["sacct", "-X", "-P", "-n", "-S", since, "-o", ",".join(fields)]).stdout
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
        jobs = pd.DataFrame(rows, columns=fields)
        jobs = jobs[jobs["JobName"].str.contains(tag) | jobs["JobName"].isin(["report", "summary"])]
        if (jobs["Partition"] != "").all():
            return jobs
        time.sleep(0.2)
    return jobs


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    copy_repository(workdir)
    tiny_config(workdir)
    since = (datetime.datetime.now() - datetime.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")
    done = subprocess.run([SNAKEMAKE, "--profile", "slurm"], cwd=workdir, env=user_env(),
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return workdir, since


def test_every_stage_ran_as_a_slurm_job_where_asked(slurm_run):
    workdir, since = slurm_run
    jobs = accounted_jobs(since, "resnet18_cifar-8-0").set_index("JobName")
    assert (jobs["State"] == "COMPLETED").all(), jobs
    stages = jobs.index.str.split("-").str[0]
    # Benchmarks: fp32-cpu, fp32-gpu, bf16-gpu, fp16-gpu and the two INT8 methods.
    assert sorted(stages) == sorted(["train", "quantize", "quantize", *["benchmark"] * 6,
                                     "report", "summary"])  # fmt: skip
    on_gpu = jobs.index.str.startswith("train-") | jobs.index.str.endswith("-gpu")
    assert (jobs.loc[on_gpu, "Partition"] == "gpu").all() and on_gpu.sum() == 4
    assert jobs.loc[on_gpu, "AllocTRES"].str.contains("gres/gpu=1").all()
    assert (jobs.loc[~on_gpu, "Partition"] == "cpu").all()
    assert not jobs.loc[~on_gpu, "AllocTRES"].str.contains("gres/gpu").any()
    report = pd.read_csv(workdir / "results" / "report.csv")
    assert set(report["slurm_job_id"].astype(str)) <= set(jobs["JobID"])
    gpu_rows = report[report["variant"].str.endswith("-gpu")]
    assert len(gpu_rows) == 6
    assert gpu_rows["reason"].str.contains("CUDA cannot use the allocated GPU").all()


def test_only_stale_stages_rerun_on_slurm(slurm_run):
    workdir, _ = slurm_run
    done = snakemake(workdir, profile="slurm")
    assert "Nothing to be done" in done.stdout + done.stderr


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_snakemake_cancels_its_slurm_jobs(cluster, tmp_path, how):
    copy_repository(tmp_path)
    config = tiny_config(tmp_path)
    config["train"]["epochs"] = 50  # long enough to be running when we stop
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([SNAKEMAKE, "--profile", "slurm"], cwd=tmp_path, env=user_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        job = wait_for_training_job(tmp_path)
        if how == "ctrl-c":  # the terminal signals the whole foreground process group
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    deadline = time.monotonic() + 30
    while run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued after stop:\n{output[-3000:]}"
        time.sleep(0.5)
    assert wait_sacct(job)["State"].startswith("CANCELLED")


def wait_for_training_job(workdir) -> str:
    """The id of the training job this run submitted (its working directory is `workdir`)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in run(["squeue", "-h", "-o", "%i|%j|%Z"]).stdout.splitlines():
            job, name, where = line.split("|")
            if name.startswith("train-") and where == str(workdir):
                return job
        time.sleep(0.5)
    pytest.fail("the training job never appeared in squeue")
