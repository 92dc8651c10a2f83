"""`snakemake --profile slurm`, exactly as the README gives it, on the real local Slurm: the CIFAR
DAG, two node classes, the EM DAG, and stopping a run."""

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml
from conftest import REPO
from slurmtools import (
    AS_FROM_A_TERMINAL,
    STACKS_ON_SIGUSR1,
    Output,
    accounted,
    run,
    stopped,
    wait_sacct,
)
from test_slurm_submit import wait_for
from workflowtools import (
    SNAKEMAKE,
    copy_repository,
    node_class_profile,
    processes_under,
    snakemake,
    tiny_config,
    user_env,
)

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The README's command, in a copy of the repository, for a user whose own profile named
    `slurm` is a broken link (a deleted checkout's): the copy's ./slurm must be the one used. The
    profile selects the executor plugin quantpipe."""
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    copy_repository(workdir)
    config = tiny_config(workdir)
    config["benchmark"]["gpu"] = True  # GPU jobs on the gpu partition, with a GPU each
    # One INT8 method: where a job runs does not depend on the method (the local DAG tests run
    # every method), and each more is two more Slurm jobs here and one per node class below.
    config["methods"] = ["pt2e"]
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    config_home = tmp_path_factory.mktemp("config_home")
    (config_home / "snakemake").mkdir()
    (config_home / "snakemake" / "slurm").symlink_to(config_home / "deleted-checkout")
    env = {**user_env(), "XDG_CONFIG_HOME": str(config_home)}
    done = subprocess.run([SNAKEMAKE, "--profile", "slurm"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return workdir


def test_every_stage_ran_as_a_slurm_job_where_asked(slurm_run):
    workdir = slurm_run
    # train, quantize (pt2e), benchmark x5 (fp32-cpu, fp32/bf16/fp16-gpu, INT8 pt2e)
    jobs = pd.DataFrame(accounted(workdir, 9)).set_index("JobName")
    assert (jobs["State"] == "COMPLETED").all(), jobs
    stages = jobs.index.str.split("-").str[0]
    assert sorted(stages) == sorted(["train", "quantize", *["benchmark"] * 5,
                                     "report", "summary"])  # fmt: skip
    on_gpu = jobs.index.str.startswith("train-") | jobs.index.str.endswith("-gpu")
    assert on_gpu.sum() == 4 and (jobs.loc[on_gpu, "Partition"] == "gpu").all()
    assert jobs.loc[on_gpu, "AllocTRES"].str.contains("gres/gpu=1").all()
    assert (jobs.loc[~on_gpu, "Partition"] == "cpu").all()
    # CPU benchmarks have the node to themselves (exclusive: every CPU of it, and Slurm gives
    # an exclusive job the node's GPUs too); the other CPU jobs get no GPU.
    exclusive = ~on_gpu & jobs.index.str.startswith("benchmark-")
    node_cpus = subprocess.run(["sinfo", "-h", "-p", "cpu", "-o", "%c"], capture_output=True,
                               text=True, check=True).stdout.split()[0]  # fmt: skip
    assert exclusive.sum() == 2
    assert jobs.loc[exclusive, "AllocTRES"].str.contains(f"cpu={node_cpus},").all()
    assert not jobs.loc[~on_gpu & ~exclusive, "AllocTRES"].str.contains("gres/gpu").any()
    report = pd.read_csv(workdir / "results" / "report.csv")
    assert set(report["slurm_job_id"].astype(str)) <= set(jobs["JobID"])
    gpu_rows = report[report["variant"].str.endswith("-gpu")]
    assert len(gpu_rows) == 6
    assert gpu_rows["reason"].str.contains("CUDA cannot use the allocated GPU").all()


def test_only_stale_stages_rerun_on_slurm(slurm_run):
    workdir = slurm_run
    done = snakemake(workdir, profile="profiles/slurm")
    assert "Nothing to be done" in done.stdout + done.stderr


def test_a_second_node_class_runs_only_its_benchmarks_where_the_profile_sends_it(slurm_run):
    """After the run of class `any` (partition cpu), a second class, named for a CPU feature the
    local node advertises, mapped to partition gpu with that feature as constraint: only its CPU
    benchmarks run (and the report and summary), where the profile said (sacct); report.csv's
    rows carry each class, and summary.md tells what INT8 buys on each."""
    workdir = slurm_run
    earlier = set(pd.DataFrame(accounted(workdir, 9))["JobID"])
    features = run(["sinfo", "-h", "-p", "cpu", "-o", "%f"]).stdout.split()[0]
    if features == "(null)":
        pytest.skip("the local Slurm's node advertises no CPU feature (local_slurm.sh: restart)")
    feature = features.split(",")[0]
    node_class_profile(workdir, {"any": ("cpu", ""), feature: ("gpu", feature)})
    snakemake(workdir, "--config", f"node_classes=[any,{feature}]", profile="profiles/slurm")
    # fp32-cpu and pt2e on the new class, then report and summary
    jobs = pd.DataFrame(accounted(workdir, len(earlier) + 4))
    jobs = jobs[~jobs["JobID"].isin(earlier)].set_index("JobName")
    assert (jobs["State"] == "COMPLETED").all(), jobs
    benchmarks = jobs[jobs.index.str.startswith("benchmark-")]
    assert len(benchmarks) == 2 and benchmarks.index.str.startswith(f"benchmark-{feature}-").all()
    assert (benchmarks["Partition"] == "gpu").all() and (benchmarks["Constraints"] == feature).all()
    report = pd.read_csv(workdir / "results" / "report.csv")
    cpu = report[report["device"] == "cpu"]
    expected = {"any": "cpu", feature: "gpu"}
    assert sorted(cpu["node_class"]) == sorted(["any"] * 3 + [feature] * 3)  # 2 FP32, 1 INT8
    for node_class, rows in cpu.groupby("node_class"):
        assert set(rows["slurm_partition"]) == {expected[node_class]}, rows
        assert (rows["baseline_node_class"] == node_class).all()
        assert rows["ran_on"].str.startswith("Slurm node ").all()
    assert (report.loc[report["device"] == "cuda", "node_class"] == "gpu").all()
    markdown = (workdir / "results" / "summary.md").read_text()
    section = markdown.split("## What INT8 buys per node class", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    classes = [line.split(" | ")[0].removeprefix("| ") for line in lines]
    assert sorted(classes) == sorted(["any", feature]), section
    assert all("Slurm node" in line for line in lines), section


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_snakemake_cancels_its_slurm_jobs_and_submits_none_again(cluster, tmp_path, how):
    copy_repository(tmp_path)
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(STACKS_ON_SIGUSR1 + snakefile.read_text())
    config = tiny_config(tmp_path)
    config["train"]["epochs"] = 50  # long enough to be running when we stop
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # the claim holds for the profile as shipped, which retries a failed rule once
    profile = yaml.safe_load((tmp_path / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["retries"] == 1
    command = [*AS_FROM_A_TERMINAL, SNAKEMAKE, "--profile", "profiles/slurm"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**user_env(), "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    said = Output(process)
    try:
        job = wait_for_training_job(tmp_path)
        if how == "ctrl-c":  # the terminal signals the whole foreground process group
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        output = stopped(process, said, 120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    deadline = time.monotonic() + 30
    while run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued after stop:\n{output[-3000:]}"
        time.sleep(0.5)
    assert wait_sacct(job)["State"].startswith("CANCELLED")
    # Nothing of the run is left that could submit, and it submitted no second training job
    # (squeue -t all lists every job of the last MinJobAge=600 s, ended ones too).
    wait_for(lambda: not processes_under(tmp_path), 60, "the stopped run's processes to end")
    assert training_jobs(tmp_path) == [job], output[-3000:]


def training_jobs(workdir) -> list[str]:
    """Ids of the training jobs submitted from `workdir`, ended ones included."""
    found = []
    for line in run(["squeue", "-h", "-t", "all", "-o", "%i|%j|%Z"]).stdout.splitlines():
        job, name, where = line.split("|")
        if name.startswith("train-") and where == str(workdir):
            found.append(job)
    return found


def wait_for_training_job(workdir) -> str:
    """The id of the training job this run submitted (its working directory is `workdir`)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if jobs := training_jobs(workdir):
            return jobs[0]
        time.sleep(0.5)
    pytest.fail("the training job never appeared in squeue")


def test_the_em_segment_stage_runs_as_a_slurm_job_array(cluster, tmp_path, isbi_dir):
    """The EM task's training, quantization and segmentation on Slurm (tests/configs/tiny_em.yaml
    with one INT8 method), submitted and followed by the executor plugin with no process waiting
    on them: the segment stage is one job array per variant, every task COMPLETED, each writing
    its blocks into the variant's one output, installed with its record of the 3 tasks and nothing
    staged left beside it. Its benchmarks, report and summary are Slurm jobs like the CIFAR DAG's
    above, and tests/test_em_workflow.py runs them locally."""
    copy_repository(tmp_path)
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny_em.yaml").read_text())
    config["methods"] = ["pt2e"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    segments = [f"results/segment/unet3d_aniso-w4-s0/{variant}/metrics.json"
                for variant in ("fp32-cpu", "int8-cpu-pt2e-histogram-c8")]  # fmt: skip
    snakemake(tmp_path, *segments, profile="profiles/slurm")
    # train, quantize, segment x2 arrays of 3 tasks (em.array_tasks)
    jobs = pd.DataFrame(accounted(tmp_path, 8))
    assert (jobs["State"] == "COMPLETED").all(), jobs
    stages = jobs["JobName"].str.split("-").str[0]
    assert sorted(stages) == sorted(["train", "quantize", *["segment"] * 6])
    arrays = jobs.loc[stages == "segment", "JobID"].str.split("_")
    assert sorted(arrays.str[1]) == ["0", "0", "1", "1", "2", "2"] and arrays.str[0].nunique() == 2
    on_gpu = jobs["JobName"].str.startswith("train-")
    assert (jobs.loc[on_gpu, "Partition"] == "gpu").all()
    assert (jobs.loc[~on_gpu, "Partition"] == "cpu").all()
    for path in segments:
        record = json.loads((tmp_path / path).read_text())
        assert record["voxels"] == 30 * 512 * 512
        assert [task["array_task"].split("_")[1] for task in record["tasks"]] == ["0", "1", "2"]
        assert set(task["array_task"] for task in record["tasks"]) <= set(jobs["JobID"])
        output = (tmp_path / path).parent
        assert (output / "membrane.zarr").is_dir()
        assert not list(output.glob(".membrane.zarr.*.tmp"))
